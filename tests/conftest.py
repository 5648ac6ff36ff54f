"""Shared test set-up: hermetic by default, like langchain-openai's unit tests.

- Provider API keys are removed from the environment for every test (a test that
  needs one sets it itself), so nothing can reach a real provider by accident.
- Sockets may connect to loopback only (pytest-socket, configured in pyproject.toml):
  tests use HTTP servers on 127.0.0.1, never the network.
- The process default backward model is unset around every test.
"""

import os

import pytest

from afnio_langchain import set_backward_model

# Tests run offline: litellm (under dspy) must use its bundled price list, not fetch one.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

pytest_plugins = ["afnio_langchain.testing.fixtures"]

PROVIDER_ENV = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "OPENAI_COMPATIBLE_API_KEY",
    "ANTHROPIC_API_KEY",
    "AZURE_OPENAI_API_KEY",
    "LANGSMITH_API_KEY",
    "LANGCHAIN_API_KEY",
    "LANGSMITH_TRACING",
    "LANGCHAIN_TRACING_V2",
)


@pytest.fixture(autouse=True)
def _hermetic_environment(request, monkeypatch):
    if request.node.get_closest_marker("live") is None:
        for name in PROVIDER_ENV:
            monkeypatch.delenv(name, raising=False)
    set_backward_model(None)
    yield
    set_backward_model(None)
