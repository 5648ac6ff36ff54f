"""When a run may start, resume or overwrite: a checkpoint of an earlier run is never
overwritten without ``resume`` (``fit`` and the command line refuse before any model
call), and a run stopped by a budget goes on when resumed with a larger one, counting
what was already paid. Hermetic: ScriptedChatModel."""

from __future__ import annotations

import json
import re
import textwrap

import pytest

from afnio_langchain import ChatCompletionRunnable, Variable
from afnio_langchain.cli import main
from afnio_langchain.testing import ScriptedChatModel
from afnio_langchain.train import CheckpointError, Trainer, exact_match, load_checkpoint

TRAIN = [{"question": f"question {i}", "answer": f"answer {i}"} for i in range(1, 7)]
VAL = TRAIN[:4]


def versioned_forward(text: str) -> str:
    """Answers question i correctly when the system prompt is 'prompt vN' with i < 2N."""
    i = int(re.search(r"question (\d+)", text).group(1))
    match = re.search(r"prompt v(\d+)", text)
    return f"answer {i}" if match and i < int(match.group(1)) * 2 else "wrong"


def next_version(text: str) -> str:
    """The optimizer: 'prompt vN' -> 'prompt vN+1' (stateless, so runs are repeatable)."""
    version = int(re.search(r"prompt v(\d+)", text).group(1))
    return f"prompt v{version + 1}"


def plan(path, **options):
    """A run of 2 epochs of 3 steps (6 examples, minibatches of 2) on a fresh model."""
    model = ScriptedChatModel(forward=versioned_forward, feedback="Answer exactly.",
                              optimizer=next_version)
    system = Variable("prompt v0", role="system prompt", requires_grad=True)
    chain = ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{question}")])
    options = {"epochs": 2, "batch_size": 2, "seed": 3, "progress": False, **options}
    trainer = Trainer(chain, exact_match, optimizer_model=model, backward_model=model,
                      checkpoint_path=path, **options)
    return trainer, model, system


def strip(records):
    return [{k: v for k, v in r.items() if k != "params"} for r in records]


# ------------------------------------------------ an earlier run is never overwritten


def test_fit_refuses_a_finished_run_s_checkpoint_without_resume(tmp_path):
    path = tmp_path / "run" / "checkpoint.json"
    first, _, _ = plan(path)
    done = first.fit(TRAIN, VAL)
    saved = path.read_bytes()

    again, model, system = plan(path)
    with pytest.raises(CheckpointError) as info:
        again.fit(TRAIN, VAL)
    message = str(info.value)
    calls = done.usage.total().calls
    assert message.startswith(f"{path} already holds the checkpoint of a finished run (6 step(s) done, "
                              f"best validation score {done.best_val:.3f}, {calls} model call(s) paid)")
    assert "pass resume=True to continue it" in message
    assert "use another checkpoint_path, or delete the file, to start afresh" in message
    assert model.calls == [] and system.data == "prompt v0"
    assert path.read_bytes() == saved  # the earlier run's prompts and spend are kept


def test_fit_refuses_an_interrupted_run_s_checkpoint_without_resume(tmp_path):
    path = tmp_path / "checkpoint.json"
    seen = {"train": 0, "at": 3}  # the first item of step 2

    def interrupting(example, prediction):
        if prediction.grad_fn is not None:
            seen["train"] += 1
            if seen["train"] == seen["at"]:
                raise KeyboardInterrupt
        return exact_match(example, prediction)

    first, _, _ = plan(path)
    first.metric = interrupting
    with pytest.raises(KeyboardInterrupt):
        first.fit(TRAIN, VAL)
    saved = path.read_bytes()

    again, model, _ = plan(path)
    with pytest.raises(CheckpointError, match=r"of an interrupted run \(1 step\(s\) done, .*pass resume=True"):
        again.fit(TRAIN, VAL)
    assert model.calls == [] and path.read_bytes() == saved
    seen["at"] = 0
    resumed, _, _ = plan(path, resume=True)  # the way on that the message names
    resumed.metric = interrupting
    assert resumed.fit(TRAIN, VAL).state.steps_done == 6


def test_fit_refuses_to_overwrite_a_file_that_is_no_checkpoint(tmp_path):
    path = tmp_path / "notes.json"
    path.write_text('{"my": "notes"}')
    trainer, model, _ = plan(path)
    with pytest.raises(CheckpointError, match="not an afnio-langchain training checkpoint; a new run "
                                              "does not overwrite it: use another checkpoint_path"):
        trainer.fit(TRAIN, VAL)
    assert model.calls == [] and path.read_text() == '{"my": "notes"}'


@pytest.mark.parametrize("left", ["nothing", "lock file"])
def test_a_folder_left_before_the_first_checkpoint_starts_a_run(tmp_path, left):
    folder = tmp_path / "run"
    folder.mkdir()
    if left == "lock file":
        (folder / "checkpoint.json.lock").write_text("")
    trainer, _, _ = plan(folder / "checkpoint.json")
    assert trainer.fit(TRAIN, VAL).state.steps_done == 6


# ------------------------------------------------- a larger budget continues the run


@pytest.mark.parametrize(
    ("budget", "larger"),
    [({"max_calls": 20}, {"max_calls": 10_000}), ({"max_calls": 20}, {"max_calls": None}),
     ({"max_tokens": 700}, {"max_tokens": 100_000}),
     ({"max_cost": 0.0007, "prices": {"scripted": (1.0, 1.0)}},
      {"max_cost": 1.0, "prices": {"scripted": (1.0, 1.0)}})],
    ids=["max_calls", "no budget", "max_tokens", "max_cost"],
)
def test_a_budget_stopped_run_resumed_with_a_larger_budget_runs_its_remaining_steps(
    tmp_path, budget, larger
):
    reference, ref_model, ref_system = plan(tmp_path / "reference.json")
    expected = reference.fit(TRAIN, VAL)

    path = tmp_path / "run.json"
    stopped, first_model, _ = plan(path, **budget)
    cut = stopped.fit(TRAIN, VAL)
    option = next(iter(budget))
    assert cut.stopped.startswith("budget: ") and f"{option} " in cut.stopped
    assert 1 <= cut.state.steps_done < 3  # stopped inside the first epoch

    resumed, model, system = plan(path, resume=True, **larger)
    result = resumed.fit(TRAIN, VAL)
    assert result.stopped is None and result.state.stage == "finished"
    # The remaining steps ran, those of the stopped epoch included, as in one uninterrupted run.
    assert [s["step"] for s in result.history["steps"]] == [1, 2, 3, 4, 5, 6]
    assert strip(result.history["steps"]) == strip(expected.history["steps"])
    assert result.history["epochs"] == expected.history["epochs"]
    assert system.data == ref_system.data
    # No completed step was redone: the two sessions made the reference's optimizer calls.
    optimizer_calls = len(first_model.calls_of("optimizer")) + len(model.calls_of("optimizer"))
    assert optimizer_calls == len(ref_model.calls_of("optimizer"))
    # The budget counts every call paid, in both sessions.
    assert result.usage.total().calls == len(first_model.calls) + len(model.calls)
    assert result.state.sessions == 2


def test_a_budget_stop_keeps_the_run_s_place_and_says_how_to_go_on(tmp_path):
    path = tmp_path / "run.json"
    stopped, _, _ = plan(path, max_calls=20)
    cut = stopped.fit(TRAIN, VAL)
    assert re.fullmatch(
        r"budget: \d+ calls >= max_calls 20; the budget is spent with 4 step\(s\) left: "
        r"resume with a larger max_calls to run them",
        cut.stopped,
    )
    saved = load_checkpoint(path)
    assert saved.stage == "finished" and saved.steps_done == 2
    assert (saved.epoch, saved.batch) == (1, 2)  # the third step of epoch 1 is still to run
    assert saved.history["epochs"][-1]["epoch"] == 1 and saved.history["epochs"][-1]["steps"] == 2


@pytest.mark.parametrize("max_calls", [20, 12])
def test_a_budget_stopped_run_resumed_with_a_budget_already_spent_stops_at_once(tmp_path, max_calls):
    path = tmp_path / "run.json"
    stopped, _, _ = plan(path, max_calls=20)
    cut = stopped.fit(TRAIN, VAL)
    paid = cut.usage.total().calls
    left = 6 - cut.state.steps_done

    again, model, system = plan(path, resume=True, max_calls=max_calls)
    result = again.fit(TRAIN, VAL)
    assert model.calls == []  # nothing ran
    assert result.stopped == (
        f"budget: {paid} calls >= max_calls {max_calls}; the budget is spent with {left} step(s) "
        "left: resume with a larger max_calls to run them"
    )
    assert result.history == cut.history and system.data == cut.params[0].data
    assert result.usage.total().calls == paid


def test_a_budget_reached_on_the_last_step_stops_nothing(tmp_path):
    reference, _, _ = plan(tmp_path / "reference.json")
    expected = reference.fit(TRAIN, VAL)
    before_final = expected.usage.total().calls - len(TRAIN)  # the final scoring of the training set
    trainer, _, _ = plan(tmp_path / "run.json", max_calls=before_final)
    result = trainer.fit(TRAIN, VAL)
    assert result.stopped is None and result.state.steps_done == 6


# ------------------------------------------------------------------ the command line

CHAIN_MODULE = textwrap.dedent(
    '''
    from afnio_langchain import ChatCompletionRunnable, Variable

    def build(model):
        system = Variable("Answer the question.", role="system prompt", requires_grad=True)
        return ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{question}")])
    '''
)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A chain factory and some of the examples above, as files."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qa_chain.py").write_text(CHAIN_MODULE)
    for name, rows in (("train.jsonl", TRAIN[:4]), ("val.jsonl", VAL[:2])):
        (tmp_path / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return tmp_path


def optimize(project, *extra, out="run"):
    """``afnio-langchain optimize`` of 2 epochs of 2 steps with the scripted model."""
    return main([
        "optimize", "--chain", str(project / "qa_chain.py") + ":build",
        "--train", str(project / "train.jsonl"), "--val", str(project / "val.jsonl"),
        "--metric", "exact_match", "--model", "scripted", "--epochs", "2", "--batch-size", "2",
        "--out", str(project / out), "--no-progress", *extra,
    ])


def report_of(project, out="run"):
    return json.loads((project / out / "report.json").read_text())


def test_the_command_line_continues_a_budget_stopped_run_with_a_larger_budget(project, capsys):
    assert optimize(project, "--max-calls", "12") == 0
    cut = report_of(project)
    assert cut["stopped"].startswith("budget: ") and cut["step_counts"]["total"] == 1
    assert "the budget is spent with 3 step(s) left" in capsys.readouterr().out
    paid = cut["usage"]["total"]["calls"]

    # Without --resume the run is kept, and the message says how to go on.
    assert optimize(project, "--max-calls", "100") == 2
    err = capsys.readouterr().err
    assert "holds a run stopped by its budget (1 step(s) done" in err
    assert "pass --resume with a larger --max-calls, --max-tokens or --max-cost to continue it" in err
    assert report_of(project) == cut

    # The same budget, already spent: nothing runs, the report says so again.
    assert optimize(project, "--max-calls", "12", "--resume") == 0
    assert "the budget is spent with 3 step(s) left" in capsys.readouterr().out
    again = report_of(project)
    assert again["usage"]["total"]["calls"] == paid and again["step_counts"]["total"] == 1

    # A larger one runs the remaining steps, as an uninterrupted run would.
    assert optimize(project, "--max-calls", "1000", "--resume") == 0
    done = report_of(project)
    assert done["stopped"] is None and [s["step"] for s in done["steps"]] == [1, 2, 3, 4]
    assert optimize(project, out="reference") == 0
    reference = report_of(project, "reference")
    assert [s["decision"] for s in done["steps"]] == [s["decision"] for s in reference["steps"]]
    assert done["prompts"] == reference["prompts"]
    assert done["usage"]["total"]["calls"] > paid


def test_the_command_line_refuses_an_earlier_run_with_what_it_holds(project, capsys):
    assert optimize(project) == 0
    state = load_checkpoint(project / "run" / "checkpoint.json")
    capsys.readouterr()
    assert optimize(project) == 2
    err = capsys.readouterr().err
    assert f"already holds a finished run ({state.steps_done} step(s) done" in err
    assert "pass --restart to overwrite it" in err


# ------------------------------------------------ an edited prompt is never discarded


def test_resume_refuses_a_prompt_edited_since_the_checkpoint_s_run_began(tmp_path):
    path = tmp_path / "checkpoint.json"
    first, _, _ = plan(path, epochs=1)
    first.fit(TRAIN, VAL)
    saved = path.read_bytes()

    again, model, system = plan(path, epochs=2, resume=True)
    system.data = "prompt v0. Answer in one word."  # the seed edited in the chain
    with pytest.raises(CheckpointError) as info:
        again.fit(TRAIN, VAL)
    message = str(info.value)
    assert "parameter 0 ('system prompt') is now 'prompt v0. Answer in one word.'" in message
    assert "started from 'prompt v0'" in message and "To train the new text, start afresh" in message
    assert model.calls == [] and system.data == "prompt v0. Answer in one word."
    assert path.read_bytes() == saved


def test_resume_in_the_same_process_or_from_the_seed_goes_on(tmp_path):
    path = tmp_path / "checkpoint.json"
    model = ScriptedChatModel(forward=versioned_forward, feedback="Answer exactly.",
                              optimizer=next_version)
    system = Variable("prompt v0", role="system prompt", requires_grad=True)
    chain = ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{question}")])

    def trainer(epochs):
        return Trainer(chain, exact_match, optimizer_model=model, backward_model=model,
                       checkpoint_path=path, epochs=epochs, batch_size=2, seed=3,
                       progress=False, resume=True)

    trainer(1).fit(TRAIN, VAL)
    assert system.data != "prompt v0"  # what the run left in the prompt
    assert trainer(2).fit(TRAIN, VAL).state.steps_done == 6  # the same process goes on
    fresh, _, seed = plan(path, epochs=3, resume=True)  # a new session, from the seed
    assert seed.data == "prompt v0"
    assert fresh.fit(TRAIN, VAL).state.steps_done == 9
