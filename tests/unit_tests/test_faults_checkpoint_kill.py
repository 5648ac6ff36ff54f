"""Checkpoints under abrupt death: a training run killed with SIGKILL at random moments
(seeded) and resumed each time loses no completed step, repeats none, and never leaves
an unreadable checkpoint; truncated, foreign and non-text files are refused with a
clear error."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from afnio_langchain import ChatCompletionRunnable, Variable
from afnio_langchain.testing import ScriptedChatModel
from afnio_langchain.train import (
    CheckpointError,
    Trainer,
    TrainingState,
    exact_match,
    load_checkpoint,
    save_checkpoint,
)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

EXAMPLES, EPOCHS = 6, 3
TOTAL_STEPS = EXAMPLES * EPOCHS
KILLS = 5
LATENCY = 0.04  # per model call: a step takes a few tenths of a second

CHILD = textwrap.dedent(
    f"""
    import json, re, sys
    from afnio_langchain import ChatCompletionRunnable, Variable
    from afnio_langchain.testing import ScriptedChatModel
    from afnio_langchain.train import Trainer, exact_match

    def propose(text):
        n = int(re.search(r"Revision (\\d+)\\.", text).group(1))
        return f"Answer the question. Revision {{n + 1}}."

    model = ScriptedChatModel(forward="wrong", feedback="Give the right answer.",
                              optimizer=propose, latency={LATENCY})
    system = Variable("Answer the question. Revision 0.", role="system prompt",
                      requires_grad=True)
    chain = ChatCompletionRunnable(model=model,
                                   messages=[("system", system), ("user", "{{question}}")])
    data = [{{"question": f"q{{i}}", "answer": "right"}} for i in range({EXAMPLES})]
    trainer = Trainer(chain, exact_match, optimizer_model=model, backward_model=model,
                      params=[system], batch_size=1, epochs={EPOCHS}, gate="off",
                      evaluate_train=False, checkpoint_path=sys.argv[1], resume=True,
                      progress=False)
    print("started", flush=True)
    result = trainer.fit(data)
    print(json.dumps({{"steps": result.state.steps_done, "value": system.data}}), flush=True)
    """
)


def revision(steps: int) -> str:
    return f"Answer the question. Revision {steps}."


def check_consistent(state: TrainingState) -> None:
    """A checkpoint records whole steps only: each completed step moved the prompt one
    revision on and left one history record, numbered in order."""
    assert state.values == [revision(state.steps_done)]
    assert [s["step"] for s in state.history["steps"]] == list(range(1, state.steps_done + 1))
    assert (state.epoch - 1) * EXAMPLES + state.batch == state.steps_done  # where to go on


def steps_in(path: Path) -> int:
    try:
        return load_checkpoint(path).steps_done
    except FileNotFoundError:
        return -1


def start(script: Path, checkpoint: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(script), str(checkpoint)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if line.strip() != "started":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"the training subprocess did not start: {line!r} {err[-2000:]}")
    return proc


def test_killed_training_resumes_without_losing_a_completed_step(tmp_path):
    script = tmp_path / "train_child.py"
    script.write_text(CHILD)
    checkpoint = tmp_path / "run" / "checkpoint.json"
    rng = random.Random(20240607)
    seen: list[int] = []
    for _ in range(KILLS):
        before = steps_in(checkpoint)
        proc = start(script, checkpoint)
        deadline = time.monotonic() + 30
        while steps_in(checkpoint) <= before and proc.poll() is None:  # progress first...
            assert time.monotonic() < deadline, "the training subprocess made no progress"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 4 * LATENCY))  # ...then a random moment of a step
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        state = load_checkpoint(checkpoint)  # atomic writes: always whole and valid
        check_consistent(state)
        assert state.steps_done >= before  # no completed step lost
        seen.append(state.steps_done)
    assert seen == sorted(seen) and 0 < seen[-1] < TOTAL_STEPS, seen

    final = subprocess.run(
        [sys.executable, str(script), str(checkpoint)], capture_output=True, text=True, timeout=60
    )
    assert final.returncode == 0, final.stderr[-2000:]
    summary = json.loads(final.stdout.splitlines()[-1])
    state = load_checkpoint(checkpoint)
    check_consistent(state)
    assert state.stage == "finished"
    assert state.steps_done == summary["steps"] == TOTAL_STEPS  # none lost, none repeated
    assert summary["value"] == revision(TOTAL_STEPS)
    assert state.sessions == KILLS + 1
    lock = checkpoint.with_name(checkpoint.name + ".lock")  # released by each killed run
    leftovers = [p for p in checkpoint.parent.iterdir() if p not in (checkpoint, lock)]
    assert all(p.name.endswith(".tmp") for p in leftovers)  # at most killed half-writes


# -- validation on load ------------------------------------------------------------------------


def trained_checkpoint(
    tmp_path: Path, **extra: object
) -> tuple[Path, Trainer, Variable, list[dict]]:
    model = ScriptedChatModel(forward="wrong", feedback="Be right.", optimizer="Say right.")
    system = Variable("Answer.", role="system prompt", requires_grad=True)
    chain = ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{q}")])
    data = [{"q": "a", "answer": "right"}, {"q": "b", "answer": "right"}]
    path = tmp_path / "checkpoint.json"
    options = dict(
        optimizer_model=model, backward_model=model, params=[system], batch_size=1,
        gate="off", evaluate_train=False, checkpoint_path=path, resume=True, progress=False,
        **extra,
    )
    Trainer(chain, exact_match, **options).fit(data)
    return path, Trainer(chain, exact_match, **options), system, data


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_truncated_checkpoint_is_refused_clearly_and_left_alone(tmp_path, keep):
    path, trainer, _, data = trained_checkpoint(tmp_path)
    text = path.read_text()
    path.write_text(text[: int(len(text) * keep)])
    with pytest.raises(CheckpointError, match=r"checkpoint\.json: not valid JSON"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        trainer.fit(data)  # resuming refuses it...
    assert path.read_text() == text[: int(len(text) * keep)]  # ...and does not overwrite it


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"format": "something.else", "version": 1}', "not an afnio-langchain training checkpoint"),
        ("[1, 2, 3]", "expected a JSON object"),
        ('"a string"', "expected a JSON object"),
        ("{}", "not an afnio-langchain training checkpoint"),
    ],
    ids=["other-format", "array", "string", "empty-object"],
)
def test_foreign_json_is_refused_clearly(tmp_path, content, message):
    path = tmp_path / "checkpoint.json"
    path.write_text(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_optimizer_state_dict_is_not_a_checkpoint(tmp_path):
    path, trainer, _, _ = trained_checkpoint(tmp_path)
    path.write_text(json.dumps(trainer.optimizer.state_dict()))
    with pytest.raises(CheckpointError, match="not an afnio-langchain training checkpoint"):
        load_checkpoint(path)


def test_other_version_and_bad_fields_are_named(tmp_path):
    path, _, _, _ = trained_checkpoint(tmp_path)
    good = json.loads(path.read_text())
    for change, message in (
        ({"version": 99}, "version 99 is not supported"),
        ({"steps_done": -1}, "field 'steps_done': Input should be greater than or equal to 0"),
        ({"values": ["a", "b"]}, "'values' must be a list of 1 parameter value"),
        ({"stage": "halfway"}, "field 'stage': Input should be 'baseline'"),
        ({"best_val": True}, "field 'best_val': Input should be a valid number"),
        ({"history": {"epochs": []}}, "field 'history.steps': Field required"),
    ):
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path)
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "history"}))
    with pytest.raises(CheckpointError, match="'history' is missing"):
        load_checkpoint(path)


def test_binary_file_is_refused_clearly(tmp_path):
    path = tmp_path / "checkpoint.json"
    path.write_bytes(b"\xff\xfe\x00\x01 not text")
    with pytest.raises(CheckpointError, match="not a JSON text file"):
        load_checkpoint(path)


def test_undecodable_text_in_values_round_trips(tmp_path):
    raw = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
    state = TrainingState(
        fingerprint={}, roles=["prompt"], initial_values=[raw], values=["caf\u00e9 \U0001f600"],
        best_values=[raw],
    )
    path = save_checkpoint(tmp_path / "checkpoint.json", state)
    path.read_text(encoding="utf-8")  # valid UTF-8 on disk
    loaded = load_checkpoint(path)
    assert loaded.initial_values == [raw] and loaded.values == ["caf\u00e9 \U0001f600"]


def test_checkpoint_holds_no_key(tmp_path, monkeypatch):
    key = "sk-checkpoint-" + "SECRET-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    path, _, _, _ = trained_checkpoint(tmp_path, info={"api_key": key, "note": f"ran with {key}"})
    text = path.read_text()
    assert key not in text
    assert "ran with [REDACTED]" in text
    assert not any(p.name.endswith(".tmp") for p in path.parent.iterdir())
