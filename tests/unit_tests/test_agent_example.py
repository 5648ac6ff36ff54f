"""``examples/support_agent.py`` tunes its agent's prompt offline and runs against an
OpenAI-compatible endpoint through ``ChatOpenAI``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support_agent.py"


def run(env: dict[str, str] | None = None) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_support_agent_example_improves_its_prompt_offline_and_says_how():
    lines = run({"AFNIO_OPENAI_BASE_URL": ""})
    assert lines[0].startswith("OFFLINE: scripted fake models.")
    assert "written by hand in FAKE_PROMPTS" in lines[0]
    assert lines[1] == (
        "prompt before: You are a friendly customer-support assistant for an online shop."
    )
    assert lines[2:5] == [
        "score before (scripted models): 0.333",
        "score after step 1 (scripted models): 0.667",
        "score after step 2 (scripted models): 1.000",
    ]
    assert lines[5].startswith(
        "prompt after (hand-written in FAKE_PROMPTS, not learned): You are a friendly"
    )
    for tool_name in ("lookup_order", "track_parcel", "open_refund"):
        assert tool_name in lines[5]
    assert lines[6].startswith("model calls: backward=")


def test_support_agent_example_against_an_endpoint(openai_server):
    pytest.importorskip("langchain_openai")
    lines = run(
        {
            "AFNIO_OPENAI_BASE_URL": openai_server.base_url,
            "AFNIO_MODEL": "fake-model",
            "OPENAI_API_KEY": "sk-test-not-a-key",
        }
    )
    assert lines[0] == f"Endpoint run: fake-model at {openai_server.base_url}"
    assert lines[1].startswith("prompt before:") and lines[-1].startswith("model calls:")
    assert lines[2].startswith("score before (model fake-model): ")
    assert lines[-2].startswith("prompt after (written by TGD with fake-model):")
    agent_requests = [body for body in openai_server.requests if body.get("tools")]
    assert agent_requests, "the agent's model calls carry the tool schemas"
    names = {t["function"]["name"] for t in agent_requests[0]["tools"]}
    assert names == {"lookup_order", "track_parcel", "open_refund"}
    assert {body["model"] for body in openai_server.requests} == {"fake-model"}
