"""Bad input to the command line is one line on stderr, exit status 2, and nothing is
started: no model call reaches the server, no folder is written. Also: a failing metric
is named as the metric, per-example errors are listed, the summary's counts and times
agree, and ``fit(target_key=...)`` reaches the built-in metric. Hermetic."""

from __future__ import annotations

import json
import re
import textwrap

import pytest

from afnio_langchain.cli import main

CHAIN = textwrap.dedent(
    '''
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    def build(model):
        prompt = ChatPromptTemplate.from_messages([("system", "Answer."), ("human", "{question}")])
        return prompt | model | StrOutputParser()

    def raising_factory(model):
        raise RuntimeError("no prompt file here")

    def own_model():
        from afnio_langchain.testing import ScriptedChatModel

        prompt = ChatPromptTemplate.from_messages([("system", "Answer."), ("human", "{question}")])
        return prompt | ScriptedChatModel(forward="1") | StrOutputParser()

    def broken_metric(example, prediction):
        return {"score": example["no such key"]}
    '''
)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chain_mod.py").write_text(CHAIN)
    rows = [{"question": f"q{i}", "answer": str(i)} for i in range(4)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def optimize(project, model, *extra):
    return [
        "optimize", "--chain", "chain_mod.py:build", "--train", str(project / "train.jsonl"),
        "--val-fraction", "0.25", "--metric", "exact_match", "--model", model,
        "--epochs", "1", "--batch-size", "2", "--out", str(project / "run"), "--no-progress", *extra,
    ]


def one_line_exit_2(argv, capsys, server=None):
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("afnio-langchain: error: ")
    assert "Traceback" not in captured.err + captured.out
    if server is not None:
        assert server.request_count == 0
    return err


@pytest.fixture
def loopback(openai_server):
    return f"openai-compatible:m@{openai_server.base_url}"


def test_an_unknown_metric_is_one_line_before_anything_runs(project, capsys, openai_server, loopback):
    args = optimize(project, loopback)
    args[args.index("--metric") + 1] = "accuracy"
    err = one_line_exit_2(args, capsys, openai_server)
    assert "unknown metric 'accuracy'" in err and "exact_match" in err
    assert not (project / "run").exists()
    args[args.index("--metric") + 1] = "chain_mod:nothing_here"
    assert "has no attribute 'nothing_here'" in one_line_exit_2(args, capsys, openai_server)


@pytest.mark.parametrize("make_folder", [False, True])
def test_resume_without_a_run_to_resume_is_refused(project, capsys, openai_server, loopback, make_folder):
    if make_folder:
        (project / "run").mkdir()
    err = one_line_exit_2(optimize(project, loopback, "--resume"), capsys, openai_server)
    assert "there is no run to resume" in err and "drop --resume" in err
    assert (project / "run").exists() is make_folder


def test_a_row_that_misses_a_template_field_is_named_before_any_model_call(project, capsys, openai_server, loopback):
    rows = [{"question": "q0", "answer": "0"}, {"questoin": "q1", "answer": "1"}, {"question": "q2", "answer": "2"}]
    (project / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    err = one_line_exit_2(optimize(project, loopback), capsys, openai_server)
    assert "train.jsonl, line 2: the chain's input needs 'question'" in err
    assert "did you mean 'question' for 'questoin'?" in err
    assert not (project / "run").exists()
    evaluate = ["evaluate", "--chain", "chain_mod.py:build", "--data", str(project / "train.jsonl"),
                "--metric", "exact_match", "--model", loopback]
    assert "line 2: the chain's input needs 'question'" in one_line_exit_2(evaluate, capsys, openai_server)


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(project, capsys, monkeypatch, loopback):
    import afnio_langchain.cli._setup as setup

    def interrupted(spec):
        raise KeyboardInterrupt

    monkeypatch.setattr(setup, "import_object", interrupted)
    assert main(optimize(project, loopback)) == 130
    captured = capsys.readouterr()
    assert captured.err.strip() == "afnio-langchain: interrupted before training started; nothing was written"
    assert not (project / "run").exists()


def test_ctrl_c_before_the_first_checkpoint_leaves_no_folder(project, capsys, loopback):
    """Interrupted during the first evaluation: the run had taken its folder's lock, and
    "nothing was written" must hold for the lock file too."""
    (project / "stopper.py").write_text(
        "def metric(example, prediction):\n    raise KeyboardInterrupt\n"
    )
    args = optimize(project, loopback)
    args[args.index("--metric") + 1] = "stopper:metric"
    assert main(args) == 130
    assert "Interrupted before the first checkpoint; nothing was written." in capsys.readouterr().err
    assert not (project / "run").exists()


def test_ctrl_c_while_the_report_is_written_says_the_run_is_saved(project, capsys, monkeypatch, loopback):
    import afnio_langchain.cli._setup as setup

    def interrupted(result, out):
        raise KeyboardInterrupt

    write_report = setup.write_report
    monkeypatch.setattr(setup, "write_report", interrupted)
    assert main(optimize(project, loopback)) == 130
    err = capsys.readouterr().err
    assert "Interrupted while writing the report. The finished run is saved in" in err
    assert "--resume" in err and "nothing was written" not in err
    monkeypatch.setattr(setup, "write_report", write_report)
    assert main([*optimize(project, loopback), "--resume"]) == 0  # writes the report only
    assert (project / "run" / "report.json").exists()


def test_a_chain_module_that_fails_to_import_is_one_line(project, capsys, loopback):
    (project / "chain_mod.py").write_text("import os\nvalue = undefined_name\n")
    err = one_line_exit_2(optimize(project, loopback), capsys)
    assert "NameError" in err and "undefined_name" in err and "chain_mod.py" in err


def test_a_chain_factory_that_raises_is_one_line(project, capsys, openai_server, loopback):
    args = optimize(project, loopback)
    args[args.index("--chain") + 1] = "chain_mod.py:raising_factory"
    err = one_line_exit_2(args, capsys, openai_server)
    assert "the chain factory raising_factory raised RuntimeError: no prompt file here at " in err


def test_a_factory_without_a_model_parameter_keeps_its_own_model(project, capsys, openai_server, loopback):
    args = optimize(project, loopback)
    args[args.index("--chain") + 1] = "chain_mod.py:own_model"
    assert main(args) == 0
    forward = [b for b in openai_server.requests if "Answer." in str(b["messages"][0])]
    assert not forward  # the chain's own (scripted) model answered; the server wrote feedback


def test_argument_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["optimize", "--train", "t.jsonl"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "afnio-langchain optimize: error: the following arguments are required: --chain, "
        "--metric (see afnio-langchain optimize --help)"
    )


def test_a_failing_metric_is_named_as_the_metric(project, capsys, loopback):
    args = optimize(project, loopback)
    args[args.index("--metric") + 1] = "chain_mod:broken_metric"
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "the metric broken_metric failed on every validation example: KeyError" in err
    assert "the chain failed" not in err


def test_summary_counts_add_up_and_errors_are_listed(project, capsys, openai_server, loopback):
    from afnio_langchain.testing import Fault

    # The first call (a validation example, before training) fails for good.
    openai_server.inject(Fault.http(400))
    args = optimize(project, loopback, "--epochs", "2")
    args[args.index("--val-fraction") + 1] = "0.5"
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((project / "run" / "report.json").read_text())
    counts = report["step_counts"]
    assert counts["total"] == counts["accepted"] + counts["rolled_back"] + counts["no_update"] + counts["failed"]
    line = next(x for x in printed.splitlines() if x.startswith("Steps: "))
    numbers = [int(n) for n in re.findall(r"\d+", line)]
    assert numbers[0] == sum(numbers[1:5]) == counts["total"]
    assert f"{counts['no_update']} without an update" in line
    assert report["errors"]["total"] >= 1
    first = report["errors"]["shown"][0]
    assert set(first) == {"where", "index", "error"} and "400" in first["error"]
    assert "Errors: " in printed and "## Errors" in (project / "run" / "summary.md").read_text()
    calls = int(re.search(r"total (\d+);", printed).group(1))
    assert calls == report["usage"]["total"]["calls"]


def test_wall_time_after_a_resume_is_not_below_the_training_time(project, capsys, monkeypatch, loopback):
    from afnio_langchain.train import load_checkpoint, save_checkpoint

    assert main(optimize(project, loopback)) == 0
    checkpoint = project / "run" / "checkpoint.json"
    state = load_checkpoint(checkpoint)
    # As if an earlier, interrupted session had trained for 100 s and stopped after step 1.
    state.stage, state.epoch, state.batch, state.steps_done = "training", 1, 1, 1
    state.history["steps"] = state.history["steps"][:1]
    state.history["epochs"] = state.history["epochs"][:1]
    state.elapsed_s = 100.0
    save_checkpoint(checkpoint, state)
    capsys.readouterr()
    assert main(optimize(project, loopback, "--resume")) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("Wall time:"))
    wall, this_session, training = (float(x) for x in re.findall(r"(\d+\.\d) s\b", line))
    assert "over 2 sessions" in line and wall >= training >= 100.0 and this_session < wall


def test_fit_target_key_reaches_the_built_in_metric():
    from afnio_langchain import ChatCompletionRunnable, Variable
    from afnio_langchain.testing import ScriptedChatModel
    from afnio_langchain.train import contains, exact_match, fit

    model = ScriptedChatModel(forward="4", feedback="ok", optimizer="Answer.")
    system = Variable("Answer.", role="system prompt", requires_grad=True)
    chain = ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{q}")])
    data = [{"q": "2+2?", "gold": "4"}]
    for metric in (exact_match, contains):
        result = fit(chain, data, val=data, metric=metric, target_key="gold", optimizer_model=model,
                     backward_model=model, progress=False)
        assert result.baseline["val"] == 1.0
    assert exact_match.target_key is None  # the shared built-in is not changed
