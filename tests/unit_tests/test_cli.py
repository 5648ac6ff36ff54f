"""The afnio-langchain command line: argument and setup errors (before anything is
written), the demo end to end (scripted model and loopback server), optimize with a
user chain, interruption and --resume, evaluate. Hermetic."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

from afnio_langchain.cli import main
from afnio_langchain.train import load_checkpoint

CHAIN_MODULE = textwrap.dedent(
    '''
    import os

    from afnio_langchain import ChatCompletionRunnable, Variable
    from afnio_langchain.train import exact_match

    def build(model):
        system = Variable("Answer the question.", role="system prompt", requires_grad=True)
        return ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{question}")])

    _seen = {"train_items": 0}

    def interrupting(example, prediction):
        """exact_match; raises KeyboardInterrupt at the training item AFNIO_TEST_INTERRUPT_AT."""
        at = int(os.environ.get("AFNIO_TEST_INTERRUPT_AT", "0"))
        if prediction.grad_fn is not None:
            _seen["train_items"] += 1
            if _seen["train_items"] == at:
                raise KeyboardInterrupt
        return exact_match(example, prediction)
    '''
)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder with a chain module, a JSONL training set and a CSV validation set."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qa_chain.py").write_text(CHAIN_MODULE)
    rows = [{"question": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(1, 5)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "val.csv").write_text("question,answer\nWhat is 5+5?,10\nWhat is 6+6?,12\n")
    return tmp_path


def optimize_args(project, *extra, model="scripted", out="run"):
    return [
        "optimize", "--chain", str(project / "qa_chain.py") + ":build",
        "--train", str(project / "train.jsonl"), "--val", str(project / "val.csv"),
        "--metric", "exact_match", "--model", model, "--epochs", "2", "--batch-size", "2",
        "--out", str(project / out), "--no-progress", *extra,
    ]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["optimize", "--train", "t.jsonl", "--metric", "exact_match"], "the following arguments are required: --chain"),
        (["demo", "--model", "gpt-4"], "unknown model 'gpt-4'"),
        (["demo", "--model", "openai-compatible:x"], "expected openai-compatible:NAME@URL"),
        (["demo", "--epochs", "0"], "expected a number >= 1"),
        (["demo", "--resume", "--restart"], "not allowed with argument"),
        (["optimize", "--chain", "m:c", "--train", "t", "--val", "v", "--val-fraction", "0.2",
          "--metric", "x"], "not allowed with argument"),
        (["train"], "invalid choice: 'train'"),
    ],
)
def test_argument_errors_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_openai_model_without_a_key_names_the_variable_and_writes_nothing(project, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(optimize_args(project, model="openai:gpt-4o-mini")) == 2
    err = capsys.readouterr().err
    assert "OPENAI_API_KEY" in err and "openai:gpt-4o-mini" in err
    assert not (project / "run").exists()


def test_an_unreachable_endpoint_is_reported_before_anything_runs(project, capsys):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    assert main(optimize_args(project, model=f"openai-compatible:m@{url}")) == 2
    err = capsys.readouterr().err
    assert "cannot reach the server" in err and url in err
    assert not (project / "run").exists()


def test_a_malformed_dataset_row_is_reported_with_its_line(project, capsys):
    (project / "train.jsonl").write_text('{"question": "a", "answer": "1"}\n\n{"question": "b"\n')
    assert main(optimize_args(project)) == 2
    err = capsys.readouterr().err
    assert "train.jsonl, line 3: not valid JSON" in err
    assert not (project / "run").exists()


def test_a_row_missing_the_target_is_reported_with_its_line(project, capsys):
    (project / "val.csv").write_text("question,answer\nWhat?,1\nWho?,\n")
    assert main(optimize_args(project)) == 2
    assert "val.csv, line 3: key 'answer' is empty" in capsys.readouterr().err


def test_a_chain_that_cannot_be_imported_is_a_clear_error(project, capsys):
    args = optimize_args(project)
    args[args.index("--chain") + 1] = "no_such_module:chain"
    assert main(args) == 2
    assert "cannot import module 'no_such_module'" in capsys.readouterr().err
    args[args.index("--chain") + 1] = "qa_chain:missing"
    assert main(args) == 2
    assert "has no attribute 'missing'" in capsys.readouterr().err


def test_optimize_needs_an_output_folder_and_models(project, capsys):
    args = optimize_args(project)
    del args[args.index("--out") : args.index("--out") + 2]
    assert main(args) == 2
    assert "optimize needs --out" in capsys.readouterr().err
    args = optimize_args(project)
    del args[args.index("--model") : args.index("--model") + 2]
    assert main(args) == 2
    assert "optimize needs --model" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the demo


def test_demo_runs_end_to_end_with_the_scripted_model(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--model", "scripted", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Validation score:" in printed and "Calls: " in printed and "Wall time:" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "finished" and report["step_counts"]["total"] == 4
    assert report["usage"]["by_purpose"]["forward"]["calls"] > 0
    assert (out / "summary.md").exists() and (out / "score_curve.png").read_bytes()[:4] == b"\x89PNG"
    # Running the demo again overwrites the finished run.
    assert main(["demo", "--model", "scripted", "--out", str(out), "--no-progress"]) == 0


def test_demo_against_an_openai_compatible_server(tmp_path, openai_server, capsys):
    out = tmp_path / "demo"
    model = f"openai-compatible:loopback@{openai_server.base_url}"
    assert main(["demo", "--model", model, "--out", str(out), "--no-progress", "--epochs", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    by_purpose = report["usage"]["by_purpose"]
    assert by_purpose["forward"]["calls"] >= 10 and by_purpose["backward"]["calls"] > 0
    assert by_purpose["optimizer"]["calls"] > 0
    assert openai_server.request_count == report["usage"]["total"]["calls"]
    assert "loopback" in report["cost"]["unpriced_models"]
    assert "no price for: loopback" in capsys.readouterr().out


# ---------------------------------------------------------------- optimize and resume


def test_optimize_with_a_chain_factory_writes_the_report_and_prompts(project, capsys):
    assert main(optimize_args(project)) == 0
    run = project / "run"
    report = json.loads((run / "report.json").read_text())
    assert report["config"]["chain"].endswith("qa_chain.py:build")
    assert report["config"]["models"] == {"backward": "scripted", "optimizer": "scripted",
                                          "judge": "scripted", "forward": "scripted"}
    assert len(report["epochs"]) == 3 and load_checkpoint(run / "checkpoint.json").stage == "finished"
    saved = json.loads((run / "prompts.json").read_text())
    assert saved["format"] == "afnio_langchain.prompts" and saved["version"] == 2
    assert saved["prompts"][0]["role"] == "system prompt"
    assert not (run / "chain.json").exists()  # one prompts file, not two formats
    # A finished run is not overwritten by accident.
    assert main(optimize_args(project)) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert main(optimize_args(project, "--restart")) == 0


def test_an_interrupted_optimize_resumes_from_its_checkpoint(project, monkeypatch, capsys):
    args = optimize_args(project, out="run")
    metric_at = args.index("--metric") + 1
    args[metric_at] = str(project / "qa_chain.py") + ":interrupting"
    monkeypatch.setenv("AFNIO_TEST_INTERRUPT_AT", "3")  # the first item of step 2
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "1 completed step(s) are saved" in err and "--resume" in err
    saved = load_checkpoint(project / "run" / "checkpoint.json")
    assert saved.steps_done == 1 and not (project / "run" / "report.json").exists()

    assert main(args) == 2  # neither --resume nor --restart
    assert "pass --resume to continue it" in capsys.readouterr().err

    monkeypatch.delenv("AFNIO_TEST_INTERRUPT_AT")
    assert main([*args, "--resume"]) == 0
    report = json.loads((project / "run" / "report.json").read_text())
    assert [s["step"] for s in report["steps"]] == [1, 2, 3, 4]
    assert report["steps"][0] == saved.history["steps"][0]

    assert main(optimize_args(project, out="reference")) == 0
    reference = json.loads((project / "reference" / "report.json").read_text())
    assert [s["decision"] for s in report["steps"]] == [s["decision"] for s in reference["steps"]]
    # Every paid call counts: step 2 is redone, so the forward calls its minibatch (2
    # items) made before the interrupt are counted twice, as they were paid twice.
    extra = report["usage"]["total"]["calls"] - reference["usage"]["total"]["calls"]
    assert 0 < extra <= 2
    assert report["prompts"] == reference["prompts"]


def test_evaluate_with_trained_prompts(project, capsys):
    assert main(optimize_args(project)) == 0
    capsys.readouterr()
    out = project / "eval.json"
    argv = ["evaluate", "--chain", "qa_chain:build", "--data", str(project / "val.csv"),
            "--metric", "exact_match", "--model", "scripted",
            "--prompts", str(project / "run" / "prompts.json"), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("score: 0.000 on 2 example(s)") and "line 2:" in printed
    result = json.loads(out.read_text())
    assert [item["line"] for item in result["items"]] == [2, 3]
    bad = {"format": "afnio_langchain.prompts", "version": 2, "prompts": []}
    (project / "bad.json").write_text(json.dumps(bad))
    argv[argv.index("--prompts") + 1] = str(project / "bad.json")
    assert main(argv) == 2
    assert "holds 0 value(s), the chain has 1 parameter(s)" in capsys.readouterr().err
    # A file of another kind is named as such, in one line.
    argv[argv.index("--prompts") + 1] = str(project / "run" / "report.json")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is a training report (report.json), not a prompts file" in err
    assert len(err.strip().splitlines()) == 1


def test_python_dash_m_runs_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "afnio_langchain", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "optimize" in done.stdout and "evaluate" in done.stdout and "demo" in done.stdout


@pytest.mark.local_llm
def test_demo_with_the_packaged_local_model(tmp_path, capsys):
    from afnio_langchain.models import local_model_available

    if not local_model_available():
        pytest.skip("the local extra is not installed")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress", "--epochs", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "finished" and report["usage"]["total"]["calls"] > 0


def test_resume_refuses_a_chain_whose_prompt_was_edited_since(project, monkeypatch, capsys):
    args = optimize_args(project, out="run")
    args[args.index("--metric") + 1] = str(project / "qa_chain.py") + ":interrupting"
    monkeypatch.setenv("AFNIO_TEST_INTERRUPT_AT", "3")
    assert main(args) == 130
    saved = (project / "run" / "checkpoint.json").read_bytes()
    monkeypatch.delenv("AFNIO_TEST_INTERRUPT_AT")
    chain = project / "qa_chain.py"
    chain.write_text(chain.read_text().replace('"Answer the question."', '"Answer with a number."'))
    capsys.readouterr()

    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "parameter 0 ('system prompt') is now 'Answer with a number.'" in err
    assert "started from 'Answer the question.'" in err
    assert (project / "run" / "checkpoint.json").read_bytes() == saved  # nothing lost
    assert main([*args, "--restart"]) == 0  # the edited prompt trains from scratch
    report = json.loads((project / "run" / "report.json").read_text())
    assert report["prompts"][0]["initial"] == "Answer with a number."
