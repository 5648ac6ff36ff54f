"""``examples/quickstart.py`` runs offline and against an OpenAI-compatible endpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"
GRADIENT = "'The system instruction should enforce the use of capital letters only.'"


def run(*args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_quickstart_offline_prints_responses_and_gradients():
    assert run() == [
        "scalar response: 'Ciao'",
        f"gradient on the system instruction: {GRADIENT}",
        "batched response: ['Ciao', 'Hola']",
        f"gradient 1 on the system instruction: {GRADIENT}",
        f"gradient 2 on the system instruction: {GRADIENT}",
        "model calls: backward=3, forward=3",
    ]


def test_quickstart_against_an_endpoint(openai_server):
    lines = run("--base-url", openai_server.base_url, "--model", "fake-model")
    assert lines[0] == "scalar response: \"echo: Translate 'Hello' to Italian.\""
    assert lines[1] == "gradient on the system instruction: 'feedback for var_1'"
    assert lines[-1] == "model calls: backward=3, forward=3"
    assert {body["model"] for body in openai_server.requests} == {"fake-model"}


@pytest.mark.local_llm
def test_quickstart_against_the_packaged_local_model():
    from afnio_langchain.models import local_model_available

    if not local_model_available():
        pytest.skip("the local extra is not installed")
    lines = run("--local")
    assert lines[0].startswith("scalar response: ") and len(lines) == 6
    assert lines[-1] == "model calls: backward=3, forward=3"
