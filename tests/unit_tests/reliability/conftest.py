"""Fixtures: the independent stdlib server, a cooperative model behind it, and the two
client paths every reliability test runs through (the ``openai`` client and LangChain's
``ChatOpenAI``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from langchain_openai import ChatOpenAI

from afnio_langchain.models import LangChainChatModelClient, OpenAIClient, RetryPolicy

from ._stdlib_server import Reply, Request, StdlibServer, asked_keys, chat, sse

KEY = "sk-proj-RELIABILITY-7c1d9e2f4a6b8c0d2e4f"
MODEL = "test-model"
FAST = RetryPolicy(max_attempts=3, initial_wait=0.001, max_wait=0.01)
PROPOSAL = "Answer in one short sentence."
CLIENTS = ("openai", "chatopenai")


def kind_of(request: Request) -> str:
    keys = asked_keys(request)
    if keys == ["improved_value"]:
        return "optimizer"
    if keys and all(k.startswith("var_") for k in keys):
        return "backward"
    return "structured" if keys else "forward"


class Oracle:
    """A cooperative model: answers every request well, except that replies queued for
    a kind of request (``forward``, ``backward``, ``optimizer``) are sent first, in order.
    A queued ``str`` is the reply's text; a queued :class:`Reply` is sent as it is; a
    queued callable is called with the request and its :class:`Reply` sent."""

    def __init__(self) -> None:
        self.queued: dict[str, list[Any]] = {"forward": [], "backward": [], "optimizer": []}
        self.forward_text = "The answer."
        self.proposal = PROPOSAL

    def queue(self, kind: str, *replies: Any) -> None:
        self.queued[kind].extend(replies)

    def good(self, request: Request, kind: str) -> str:
        if kind == "forward":
            return self.forward_text
        if kind == "optimizer":
            return json.dumps({"improved_value": self.proposal})
        return json.dumps({k: f"Feedback {k}: be more specific." for k in asked_keys(request)})

    def __call__(self, request: Request) -> Reply:
        kind = kind_of(request)
        queued = self.queued.get(kind)
        item = queued.pop(0) if queued else self.good(request, kind)
        if callable(item):
            item = item(request)
        if isinstance(item, Reply):
            return item
        if request.streaming:
            return sse([item[i : i + 4] for i in range(0, len(item), 4)])
        return chat(item)


@pytest.fixture
def oracle() -> Oracle:
    return Oracle()


@pytest.fixture
def server(oracle: Oracle) -> Iterator[StdlibServer]:
    with StdlibServer(oracle) as running:
        yield running


def make_client(kind: str, server: StdlibServer, retry: RetryPolicy = FAST, **options: Any) -> Any:
    """The package's client for ``kind``, pointed at ``server``."""
    timeout = options.pop("timeout", 5.0)
    if kind == "openai":
        raw = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, timeout=timeout)
        return OpenAIClient(raw, model=MODEL, retry=retry, **options)
    chat_model = ChatOpenAI(
        base_url=server.base_url, api_key=KEY, model=MODEL, timeout=timeout, **options
    )
    return LangChainChatModelClient(chat_model, retry=retry)


@pytest.fixture(params=CLIENTS)
def client_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def client(client_kind: str, server: StdlibServer) -> Any:
    return make_client(client_kind, server)
