"""Pytest fixtures for testing against a loopback OpenAI-compatible server.

Load them from a ``conftest.py``::

    pytest_plugins = ["afnio_langchain.testing.fixtures"]
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from afnio_langchain.testing._server import OpenAICompatServer

__all__ = ["openai_server"]


@pytest.fixture
def openai_server() -> Iterator[OpenAICompatServer]:
    """A running :class:`OpenAICompatServer` (default responder, no latency), stopped
    after the test. Point clients at ``openai_server.base_url``; tune it with its
    attributes (``responder``, ``latency``, ``refuse_json_schema``) and ``inject(...)``.
    """
    with OpenAICompatServer() as server:
        yield server
