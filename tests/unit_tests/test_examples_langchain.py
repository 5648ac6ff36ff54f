"""The LangChain-face examples run offline (scripted model) and against an
OpenAI-compatible endpoint (the loopback server, through ``ChatOpenAI``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(name: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AFNIO_")}
    environment.update(env or {})
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_lcel_pipeline_offline_reaches_all_three_prompts_and_steps_them():
    lines = run("lcel_pipeline.py")
    assert lines.pop(0).startswith("OFFLINE: a scripted fake model.")
    assert lines[0] == "answer: 'Paris.'"
    assert lines[1] == "gradients reached 3 of 3 system prompts: drafter, critic, finalizer"
    for name in ("drafter", "critic", "finalizer"):
        assert f"  {name}: The {name} should make sure the answer names the country as well." in lines
        (new,) = [line for line in lines if line.startswith(f"new {name} prompt:")]
        assert new.endswith("Always name both the city and the country.")
    assert lines[-1] == "model calls: backward=3, forward=3, optimizer=3"


def test_make_trainable_example_offline_trains_saves_and_exports(tmp_path):
    out = tmp_path / "prompts.json"
    lines = run("make_trainable_chain.py", "--out", str(out))
    assert lines[0].startswith("OFFLINE: a scripted fake model.")
    assert "accuracy before (scripted model): 0%" in lines
    assert "epoch 2: 0 of 2 answers need feedback" in lines
    assert "reloaded prompt matches: True" in lines
    assert f"saved the prompts to {out}" in lines
    assert "accuracy after (scripted model): 100%" in lines
    assert any(line.startswith("new prompt (hand-written in LEARNED_RULE, not learned):") for line in lines)
    assert any(line.startswith("served chain returns a str (True)") for line in lines)
    served = next(line for line in lines if line.startswith("served system prompt:"))
    assert '{{"answer": "..."}}' in served and "{product}" in served
    state = json.loads(out.read_text())
    assert state["format"] == "afnio_langchain.prompts" and state["version"] == 2
    assert '{"answer": "..."}' in state["prompts"][0]["value"]


@pytest.mark.parametrize("name", ["lcel_pipeline.py", "make_trainable_chain.py"])
def test_examples_against_an_openai_compatible_endpoint(name, openai_server, tmp_path):
    pytest.importorskip("langchain_openai")
    env = {"AFNIO_OPENAI_BASE_URL": openai_server.base_url, "AFNIO_MODEL": "fake-model"}
    args = ("--out", str(tmp_path / "p.json")) if name == "make_trainable_chain.py" else ()
    lines = run(name, *args, env=env)
    assert lines[-1].startswith("model calls:")
    assert {body["model"] for body in openai_server.requests} == {"fake-model"}
    if name == "lcel_pipeline.py":
        assert lines[1].startswith("gradients reached 3 of 3 system prompts")


def test_minibatch_pipeline_example_streams_and_trains_all_three_prompts():
    lines = run("minibatch_pipeline.py")
    assert lines[0] == "ChatPipeline of 3 steps, 12 questions"
    assert [line.split(":")[0] for line in lines[1:3]] == ["ChatPipeline", "RunnableSequence"]
    assert lines[3] == "same outputs: True"
    assert lines[4] == "gradients on 3 of 3 system prompts"
    assert lines[5] == "new solver prompt: Solve the question and give the sum as a number."
