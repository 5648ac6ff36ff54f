"""A ``ChatOpenAI`` call the package makes sends what the same call made directly by the
user's ``ChatOpenAI`` sends, and gives back what it gives back.

The package runs langchain-openai's plain requests over the openai client's raw request
API (``models/_lean_completions.py``: openai's typed transform and pydantic replies cost
half of ChatOpenAI's CPU per call). These tests pin that nothing a user relies on
changes: the JSON body, the headers, ``extra_body``/``extra_headers``/``extra_query``,
``include_response_headers``, usage, callbacks, and a pydantic ``response_format`` (which
still goes through openai's ``parse``), all seen from the independent stdlib server.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_openai import ChatOpenAI
from pydantic import BaseModel
from typing_extensions import TypedDict

from afnio_langchain.models import JsonSchema, LangChainChatModelClient
from afnio_langchain.models._lean_completions import LeanChatClient

from ._stdlib_server import Reply, Request, StdlibServer, chat, completion
from .conftest import FAST, KEY, MODEL

MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 2 + 2?"},
]
# Headers that differ by nature from one request to the next, and openai's markers of its
# with_raw_response wrapper and of its parse helper (ChatOpenAI's route for a
# response_format): bookkeeping of the SDK, which the raw request API has no use for.
VOLATILE_HEADERS = {
    "content-length",
    "x-stainless-retry-count",
    "x-stainless-read-timeout",
    "x-stainless-raw-response",
    "x-stainless-helper-method",
}


def _answer(request: Request) -> Reply:
    fmt = (request.body or {}).get("response_format") or {}
    if fmt:
        return chat(json.dumps({"answer": "4"}))
    return Reply(body=completion("4"), headers={"x-request-id": "req-123"})


@pytest.fixture
def server():
    with StdlibServer(_answer) as running:
        yield running


def _model(server: StdlibServer, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=server.base_url, api_key=KEY, model=MODEL, timeout=5, **options)


def _direct_and_through_package(
    server: StdlibServer, params: dict[str, Any], **options: Any
) -> tuple[Request, Request]:
    """The request the user's own ``ChatOpenAI`` sends, and the one the package sends
    once it reuses the request openai built for its first call."""
    model = _model(server, **options)
    lc_messages = [("system", MESSAGES[0]["content"]), ("human", MESSAGES[1]["content"])]
    asyncio.run(model.bind(**params).ainvoke(lc_messages))
    client = LangChainChatModelClient(model, retry=FAST, json_mode=False)

    async def twice() -> None:  # the second call reuses the first's request (_direct_post)
        for _ in range(2):
            await client.acomplete(MESSAGES, **params)

    asyncio.run(twice())
    assert len(server.requests) == 3
    first, reused = server.requests[1], server.requests[2]
    assert _headers(reused) == _headers(first) and reused.body == first.body
    return server.requests[0], reused


def _without_default_stream(body: dict[str, Any]) -> dict[str, Any]:
    """The body without ``"stream": false``, the API's default, which openai's ``parse``
    (ChatOpenAI's route for a ``response_format``) writes out and a plain request leaves
    out."""
    return {k: v for k, v in body.items() if not (k == "stream" and v is False)}


def _headers(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k not in VOLATILE_HEADERS}


class Person(TypedDict):
    name: str


def _structured_output_kwargs(method: str) -> dict[str, Any]:
    """What ``ChatOpenAI.with_structured_output(..., method=method)`` binds to the model
    (``make_trainable`` moves a binding's keywords into the completion arguments): among
    them ``ls_structured_output_format``, which LangChain's run keeps for its traces and
    never sends."""
    model = ChatOpenAI(model=MODEL, api_key=KEY)
    return dict(model.with_structured_output(Person, method=method).first.kwargs)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"temperature": 0.3, "max_tokens": 50, "stop": ["\n\n"], "seed": 7},
        {"extra_body": {"top_k": 5, "cache_prompt": True}},
        {"extra_headers": {"x-team": "search"}, "extra_query": {"api-version": "2024-10"}},
        _structured_output_kwargs("json_schema"),
        _structured_output_kwargs("json_mode"),
    ],
    ids=[
        "defaults",
        "sampling",
        "extra_body",
        "extra_headers_and_query",
        "with_structured_output_json_schema",
        "with_structured_output_json_mode",
    ],
)
def test_the_package_sends_what_chat_openai_sends(server, params):
    direct, ours = _direct_and_through_package(server, params)
    assert _without_default_stream(ours.body) == _without_default_stream(direct.body)
    assert ours.path == direct.path
    assert _headers(ours) == _headers(direct)
    assert ours.headers["authorization"] == f"Bearer {KEY}"


def test_default_headers_and_query_of_the_model_are_sent(server):
    direct, ours = _direct_and_through_package(
        server, {}, default_headers={"x-org": "acme"}, default_query={"tenant": "a"}
    )
    assert ours.headers["x-org"] == "acme" and "tenant=a" in ours.path
    assert _headers(ours) == _headers(direct) and ours.path == direct.path


def test_the_json_schema_reaches_the_server_as_chat_openai_sends_it(server):
    schema = JsonSchema("answer", {"type": "object", "properties": {"answer": {"type": "string"}}})
    client = LangChainChatModelClient(_model(server), retry=FAST)
    reply = asyncio.run(client.acomplete(MESSAGES, json_schema=schema))
    assert json.loads(reply.text) == {"answer": "4"}
    sent = server.requests[-1].body["response_format"]
    assert sent == {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema.schema}}


def test_usage_finish_reason_and_response_headers_come_back(server):
    model = _model(server, include_response_headers=True)
    client = LangChainChatModelClient(model, retry=FAST, json_mode=False)
    reply = asyncio.run(client.acomplete(MESSAGES))
    assert (reply.text, reply.input_tokens, reply.output_tokens) == ("4", 10, 5)
    assert reply.finish_reason == "stop"
    assert reply.raw.response_metadata["headers"]["x-request-id"] == "req-123"
    assert reply.raw.usage_metadata["total_tokens"] == 15


class _Seen(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.outputs: list[Any] = []

    async def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.events.append("start")

    async def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.events.append("end")
        self.outputs.append(response)


def test_callbacks_see_the_call_and_its_llm_output(server):
    seen = _Seen()
    client = LangChainChatModelClient(_model(server), retry=FAST, json_mode=False)
    asyncio.run(client.acomplete(MESSAGES, config={"callbacks": [seen]}))
    assert seen.events == ["start", "end"]
    output = seen.outputs[0].llm_output
    assert output["model_name"] == MODEL and output["token_usage"]["total_tokens"] == 15


class Answer(BaseModel):
    answer: str


def test_a_pydantic_response_format_still_goes_through_openai_parse(server):
    """``with_structured_output`` reads ``message.parsed``, which only openai's ``parse``
    fills: such a request keeps the typed path."""
    import openai

    lean = LeanChatClient(openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY), "m")

    async def call() -> Any:
        raw = await lean.chat.completions.with_raw_response.parse(
            model=MODEL, messages=MESSAGES, response_format=Answer
        )
        return raw.parse()

    parsed = asyncio.run(call())
    assert parsed.choices[0].message.parsed == Answer(answer="4")
    assert server.requests[-1].body["response_format"]["type"] == "json_schema"


def test_a_streamed_call_keeps_the_streaming_path(server):
    server.handler = lambda request: Reply(
        body=b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"test-model",'
        b'"choices":[{"index":0,"delta":{"content":"4"},"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n",
        content_type="text/event-stream",
    )
    client = LangChainChatModelClient(_model(server, streaming=True), retry=FAST, json_mode=False)
    reply = asyncio.run(client.acomplete(MESSAGES))
    assert reply.text == "4" and server.requests[-1].body["stream"] is True
