"""A ``ChatOpenAI`` call that nothing observes builds its ``ChatResult`` on the event
loop, and gives back (or raises) exactly what langchain-openai's own ``_agenerate`` does.

``models/_chat_result_in_loop.py`` mirrors the chat-completions branches of
``BaseChatOpenAI._agenerate`` without its hop to a worker thread. These tests run both
on the same replies of the independent stdlib server, with langchain-openai's real
clients (typed replies, ``.parse`` for a ``response_format``): results, headers and
errors must match, so a langchain-openai whose ``_agenerate`` changes fails here.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import openai
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.globals import set_llm_cache
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.outputs import ChatResult
from langchain_openai import ChatOpenAI
from langchain_openai.chat_models import base as openai_chat

from afnio_langchain.models import LangChainChatModelClient
from afnio_langchain.models._chat_result_in_loop import agenerate_in_loop, runs_base_agenerate

from ._stdlib_server import Reply, StdlibServer, two_plus_two
from .conftest import FAST, KEY, MODEL

MESSAGES = [SystemMessage("Answer briefly."), HumanMessage("What is 2 + 2?")]
SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


@pytest.fixture
def server():
    with StdlibServer(two_plus_two) as running:
        yield running


def _model(server: StdlibServer, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=server.base_url, api_key=KEY, model=MODEL, timeout=5, max_retries=0, **options
    )


def _comparable(result: ChatResult) -> dict[str, Any]:
    [generation] = result.generations
    info = dict(generation.generation_info or {})
    # The server's Date header changes from one second to the next.
    info["headers"] = {k: v for k, v in info.get("headers", {}).items() if k != "date"}
    message = generation.message
    return {
        "message": message.model_dump(),
        "info": info,
        "llm_output": result.llm_output,
    }


async def _both(model: ChatOpenAI, **params: Any) -> tuple[ChatResult, ChatResult]:
    stop = params.pop("stop", None)
    mirrored = await agenerate_in_loop(model, MESSAGES, stop, dict(params))
    own = await model._agenerate(MESSAGES, stop=stop, **params)
    return mirrored, own


@pytest.mark.parametrize(
    ("options", "params"),
    [
        ({}, {}),
        ({"include_response_headers": True}, {}),
        ({"include_response_headers": True}, {"response_format": SCHEMA_FORMAT}),
        ({}, {"response_format": {"type": "json_object"}, "stop": ["\n\n"]}),
    ],
    ids=["plain", "headers", "json-schema", "json-object-stop"],
)
def test_the_result_is_the_one_langchain_openai_builds(server, options, params):
    model = _model(server, **options)
    mirrored, own = asyncio.run(_both(model, **params))
    assert _comparable(mirrored) == _comparable(own)
    assert server.requests[0].body == server.requests[1].body
    text = mirrored.generations[0].message.content
    assert text == ('{"answer": "4"}' if params else "4")
    if options:
        assert mirrored.generations[0].generation_info["headers"]["x-request-id"] == "req-9"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "This model's maximum context length is 8192 tokens (context_length_exceeded)"),
        (400, "Invalid value for 'temperature'"),
        (401, "Incorrect API key provided"),
        (404, "The model does not exist"),
        (429, "Rate limit reached"),
        (500, "The server had an error"),
    ],
)
def test_errors_are_mapped_as_langchain_openai_maps_them(server, status, message):
    server.handler = lambda request: Reply(
        status=status, body={"error": {"message": message, "type": "x", "code": None}}
    )
    model = _model(server)

    async def both() -> list[Exception]:
        raised = []
        for call in (
            lambda: agenerate_in_loop(model, MESSAGES, None, {}),
            lambda: model._agenerate(MESSAGES),
        ):
            try:
                await call()
            except Exception as exc:
                raised.append(exc)
        return raised

    raised = [(type(e), str(e), type(e.__cause__)) for e in asyncio.run(both())]
    assert len(raised) == 2 and raised[0] == raised[1]
    assert raised[0][0].__module__.startswith("langchain_openai")


def test_an_unobserved_call_builds_its_result_on_the_loop_thread(server, monkeypatch):
    """The package's unobserved path builds no ``ChatResult`` for plain text until the
    completion's ``raw`` is read, then once, on the reading thread; ``agenerate_in_loop``
    (the path of any other conversation) builds it on the loop's thread; a call LangChain's run observes keeps
    langchain-openai's worker thread."""
    threads: list[int] = []
    original = ChatOpenAI._create_chat_result

    def recorded(self: Any, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ChatOpenAI, "_create_chat_result", recorded)
    set_llm_cache(None)
    client = LangChainChatModelClient(_model(server), retry=FAST)
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    loop_threads: list[int] = []

    async def call(**params: Any) -> Any:
        loop_threads.append(threading.get_ident())
        return await client.acomplete(messages, **params)

    plain = asyncio.run(call())
    assert plain.text == "4" and threads == []
    assert plain.raw.content == "4" and plain.raw is plain.raw
    assert threads == [threading.get_ident()]
    assert asyncio.run(call(config={"callbacks": [BaseCallbackHandler()]})).text == "4"
    assert threads[1] != loop_threads[1]

    async def in_loop() -> Any:  # a path that builds the result as the call returns
        loop_threads.append(threading.get_ident())
        model = await client._runner("forward")
        return await agenerate_in_loop(model, MESSAGES, None, {})

    asyncio.run(in_loop())
    assert threads[2] == loop_threads[2]


def test_the_responses_api_and_an_overriding_subclass_keep_their_own_agenerate(
    server, monkeypatch
):
    own_calls: list[str] = []
    original = openai_chat.BaseChatOpenAI._agenerate

    async def spied(self: Any, messages: Any, stop: Any = None, **kwargs: Any) -> Any:
        own_calls.append(type(self).__name__)
        return await original(self, messages, stop=stop, **kwargs)

    monkeypatch.setattr(openai_chat.BaseChatOpenAI, "_agenerate", spied)
    runs_base_agenerate.cache_clear()

    class Overriding(ChatOpenAI):
        async def _agenerate(self, *args: Any, **kwargs: Any) -> Any:
            own_calls.append("Overriding")
            return await super()._agenerate(*args, **kwargs)

    async def calls() -> None:
        plain = await agenerate_in_loop(_model(server), MESSAGES, None, {})
        assert plain.generations[0].message.content == "4" and own_calls == []
        overriding = Overriding(base_url=server.base_url, api_key=KEY, model=MODEL, timeout=5)
        await agenerate_in_loop(overriding, MESSAGES, None, {})
        assert own_calls == ["Overriding", "Overriding"]  # its override, then the base's
        server.handler = lambda request: (
            Reply(status=404, body={"error": {"message": "no such endpoint"}})
            if request.path.endswith("/responses")
            else two_plus_two(request)
        )
        responses = _model(server, use_responses_api=True)
        with pytest.raises(openai.NotFoundError):
            await agenerate_in_loop(responses, MESSAGES, None, {})
        assert own_calls[-1] == "ChatOpenAI"
        assert server.requests[-1].path.endswith("/responses")

    try:
        asyncio.run(calls())
    finally:
        runs_base_agenerate.cache_clear()
