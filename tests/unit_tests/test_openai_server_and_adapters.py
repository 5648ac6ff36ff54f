"""The model adapters against a loopback OpenAI-compatible server, with the real clients.

``openai.OpenAI`` / ``openai.AsyncOpenAI`` and ``langchain_openai.ChatOpenAI`` talk HTTP
to :class:`afnio_langchain.testing._server.OpenAICompatServer`, which injects the failures
real providers produce. Hermetic: loopback only, no key, no network.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.tracers.context import collect_runs
from langchain_openai import ChatOpenAI

from afnio_langchain.models import (
    JsonSchema,
    LangChainChatModelClient,
    MalformedReplyError,
    OpenAIClient,
    RetryPolicy,
    StructuredOutputError,
    as_model_client,
    concurrency_limit,
    json_instruction,
    request_fields,
    track_usage,
)
from afnio_langchain.testing import (
    Fault,
    OpenAICompatServer,
    count_tokens,
    default_responder,
)

FAST_RETRY = RetryPolicy(max_attempts=4, initial_wait=0.01, max_wait=0.5)
HELLO = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "hello there"},
]
SCHEMA = JsonSchema(
    name="feedback",
    schema={
        "type": "object",
        "properties": {"feedback": {"type": "string"}},
        "required": ["feedback"],
        "additionalProperties": False,
    },
)


def openai_model(
    server: OpenAICompatServer, *, async_client: bool = True, **client_kwargs: Any
) -> OpenAIClient:
    """The package's adapter over a real openai client pointed at ``server``."""
    cls = openai.AsyncOpenAI if async_client else openai.OpenAI
    client = cls(base_url=server.base_url, api_key="test-key", **client_kwargs)
    model = as_model_client(client, model="fake-model")
    assert isinstance(model, OpenAIClient)
    model.retry = FAST_RETRY
    return model


def chat_openai_model(server: OpenAICompatServer):
    chat = ChatOpenAI(
        base_url=server.base_url, api_key="test-key", model="fake-model", max_retries=0
    )
    model = as_model_client(chat)
    model.retry = FAST_RETRY
    return model


def json_request(*keys: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You give feedback."},
        {"role": "user", "content": f"Review this answer.\n{json_instruction(list(keys))}"},
    ]


# -- forward calls and usage ----------------------------------------------------------------


@pytest.mark.parametrize("async_client", [True, False], ids=["AsyncOpenAI", "OpenAI"])
async def test_forward_returns_text_and_counts_usage_per_purpose(openai_server, async_client):
    model = openai_model(openai_server, async_client=async_client)
    with track_usage() as usage:
        forward = await model.acomplete(HELLO)
        backward = await model.acomplete(HELLO, purpose="backward")

    assert forward.text == backward.text == "echo: hello there"
    assert forward.model == "fake-model"
    prompt_tokens = count_tokens("You are terse.\nhello there")
    assert (forward.input_tokens, forward.output_tokens) == (prompt_tokens, 3)
    by_purpose = usage.by_purpose()
    for purpose in ("forward", "backward"):
        counts = by_purpose[purpose]
        assert (counts.calls, counts.retries, counts.failures) == (1, 0, 0)
        assert (counts.input_tokens, counts.output_tokens) == (prompt_tokens, 3)
    assert usage.by_model()["fake-model"].calls == 2
    body = openai_server.requests[0]
    assert body["model"] == "fake-model"
    assert body["messages"] == HELLO
    assert "response_format" not in body


@pytest.mark.parametrize("async_client", [True, False], ids=["AsyncOpenAI", "OpenAI"])
async def test_sync_complete_works_inside_a_running_event_loop(openai_server, async_client):
    model = openai_model(openai_server, async_client=async_client)
    assert (await model.acomplete(HELLO)).text == "echo: hello there"
    with track_usage() as usage:
        # Each sync call runs on its own loop in a worker thread; the client made for
        # this test's loop must not be reused there (httpx pools are per loop).
        first = model.complete(HELLO)
        second = model.complete(HELLO, purpose="judge")
    assert first.text == second.text == "echo: hello there"
    assert usage.by_purpose()["judge"].calls == 1
    assert usage.total().calls == 2
    assert (await model.acomplete(HELLO)).text == "echo: hello there"


def test_sync_complete_called_repeatedly_with_an_async_client(openai_server):
    """Every sync call gets a fresh event loop: the async client must survive that."""
    model = openai_model(openai_server, async_client=True)
    texts = [model.complete(HELLO).text for _ in range(3)]
    assert texts == ["echo: hello there"] * 3
    assert asyncio.run(model.acomplete(HELLO)).text == "echo: hello there"
    assert model.complete(HELLO).text == "echo: hello there"
    assert openai_server.request_count == 5


async def test_long_reply_is_returned_whole_and_counted(openai_server):
    model = openai_model(openai_server)
    openai_server.inject(Fault.long(size=100_000))
    with track_usage() as usage:
        completion = await model.acomplete(HELLO)
    assert len(completion.text) == 100_000
    assert usage.total().output_tokens == count_tokens(completion.text) > 10_000


async def test_empty_content_is_returned_as_empty_text_without_retry(openai_server):
    model = openai_model(openai_server)
    openai_server.inject(Fault.empty_content())
    assert (await model.acomplete(HELLO)).text == ""
    assert openai_server.request_count == 1


# -- retries ------------------------------------------------------------------------------


async def test_rate_limit_with_retry_after_waits_then_retries(openai_server):
    model = openai_model(openai_server)
    openai_server.inject(Fault.rate_limit(retry_after=0.3))
    start = time.monotonic()
    with track_usage() as usage:
        completion = await model.acomplete(HELLO)
    elapsed = time.monotonic() - start
    assert completion.text == "echo: hello there"
    assert elapsed >= 0.27  # the server's retry-after was honoured
    assert openai_server.request_count == 2
    counts = usage.total()
    assert (counts.calls, counts.retries, counts.failures) == (1, 1, 0)


async def test_rate_limit_with_retry_after_ms_is_honoured(openai_server):
    model = openai_model(openai_server)
    openai_server.inject(Fault.rate_limit(retry_after_ms=300))
    start = time.monotonic()
    assert (await model.acomplete(HELLO)).text == "echo: hello there"
    assert time.monotonic() - start >= 0.27


async def test_rate_limit_without_retry_after_is_retried(openai_server):
    model = openai_model(openai_server)
    openai_server.inject(429, times=2)
    with track_usage() as usage:
        assert (await model.acomplete(HELLO)).text == "echo: hello there"
    assert openai_server.request_count == 3
    assert usage.total().retries == 2


@pytest.mark.parametrize("status", [500, 502, 503])
@pytest.mark.parametrize("async_client", [True, False], ids=["AsyncOpenAI", "OpenAI"])
async def test_server_errors_are_retried_then_succeed(openai_server, status, async_client):
    model = openai_model(openai_server, async_client=async_client)
    openai_server.inject(Fault.http(status), times=2)
    with track_usage() as usage:
        assert (await model.acomplete(HELLO, purpose="optimizer")).text == "echo: hello there"
    assert openai_server.request_count == 3
    counts = usage.by_purpose()["optimizer"]
    assert (counts.calls, counts.retries, counts.failures) == (1, 2, 0)


async def test_bad_request_surfaces_at_once(openai_server):
    model = openai_model(openai_server)
    openai_server.inject(400)
    with track_usage() as usage:
        with pytest.raises(openai.BadRequestError) as info:
            await model.acomplete(HELLO)
    assert info.value.status_code == 400
    assert openai_server.request_count == 1
    counts = usage.total()
    assert (counts.calls, counts.retries, counts.failures) == (0, 0, 1)


async def test_persistent_server_error_surfaces_after_max_attempts(openai_server):
    model = openai_model(openai_server)
    openai_server.inject(500, times=10)
    with track_usage() as usage:
        with pytest.raises(openai.InternalServerError):
            await model.acomplete(HELLO)
    assert openai_server.request_count == FAST_RETRY.max_attempts
    counts = usage.total()
    assert (counts.calls, counts.retries, counts.failures) == (0, 3, 1)


@pytest.mark.parametrize("async_client", [True, False], ids=["AsyncOpenAI", "OpenAI"])
async def test_client_timeout_is_retried(openai_server, async_client):
    model = openai_model(openai_server, async_client=async_client, timeout=0.3)
    openai_server.inject(Fault.timeout(1.5))
    start = time.monotonic()
    with track_usage() as usage:
        assert (await model.acomplete(HELLO)).text == "echo: hello there"
    assert time.monotonic() - start < 1.4  # gave up on the slow answer instead of waiting
    assert openai_server.request_count == 2
    assert usage.total().retries == 1


@pytest.mark.parametrize(
    "fault",
    [
        Fault.reset(),
        Fault.truncated(),
        Fault.malformed(),  # a 200 labelled application/json whose body is not JSON
        Fault.malformed(content_type="text/plain"),
        Fault.empty_choices(),
    ],
    ids=["reset", "truncated", "malformed-json", "malformed-text", "empty-choices"],
)
async def test_broken_replies_are_retried(openai_server, fault):
    model = openai_model(openai_server)
    openai_server.inject(fault)
    with track_usage() as usage:
        assert (await model.acomplete(HELLO)).text == "echo: hello there"
    assert openai_server.request_count == 2
    assert usage.total().retries == 1


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault.malformed(body="<html>oops</html>"), "<html>oops</html>"),
        (Fault.empty_choices(), "without choices"),
    ],
    ids=["malformed", "empty-choices"],
)
async def test_persistently_broken_replies_raise_a_clear_error(openai_server, fault, expected):
    model = openai_model(openai_server)
    openai_server.inject(fault, times=10)
    with pytest.raises(MalformedReplyError, match="without choices|not JSON") as info:
        await model.acomplete(HELLO)
    assert expected in str(info.value)
    assert openai_server.request_count == FAST_RETRY.max_attempts


# -- JSON mode ----------------------------------------------------------------------------


async def test_refused_json_schema_falls_back_to_json_object_and_remembers(openai_server):
    openai_server.refuse_json_schema = True
    model = openai_model(openai_server)
    messages = json_request("feedback")

    first = await model.acomplete(messages, purpose="backward", json_schema=SCHEMA)
    assert json.loads(first.text) == {"feedback": "feedback for feedback"}
    refused, accepted = openai_server.requests
    assert refused["response_format"]["type"] == "json_schema"
    assert refused["response_format"]["json_schema"]["schema"] == SCHEMA.schema
    assert accepted["response_format"] == {"type": "json_object", "schema": SCHEMA.schema}

    openai_server.reset()
    await model.acomplete(messages, purpose="backward", json_schema=SCHEMA)
    (only,) = openai_server.requests
    assert only["response_format"]["type"] == "json_object"
    assert model.json_mode == "json_object"


async def test_injected_json_schema_refusal_only_hits_json_schema_requests(openai_server):
    model = openai_model(openai_server)
    openai_server.inject(Fault.refuse_json_schema(), times=2)
    assert (await model.acomplete(HELLO)).text == "echo: hello there"  # plain: unaffected
    await model.acomplete(json_request("feedback"), json_schema=SCHEMA)
    kinds = [body.get("response_format", {}).get("type") for body in openai_server.requests]
    assert kinds == [None, "json_schema", "json_object"]


async def test_a_bad_request_in_every_json_mode_does_not_downgrade_the_endpoint(openai_server):
    model = openai_model(openai_server)
    openai_server.inject(400, times=3)
    with pytest.raises(openai.BadRequestError):
        await model.acomplete(json_request("feedback"), json_schema=SCHEMA)
    assert openai_server.request_count == 3  # json_schema, json_object, prompt
    assert model.json_mode == "json_schema"
    await model.acomplete(json_request("feedback"), json_schema=SCHEMA)
    assert openai_server.requests[-1]["response_format"]["type"] == "json_schema"


async def test_request_fields_end_to_end(openai_server):
    model = openai_model(openai_server)
    fields = {"feedback": "what to change", "evidence": "why"}
    with track_usage() as usage:
        result = await request_fields(
            model, json_request(*fields), fields, purpose="backward", where="Node0"
        )
    assert result == {"feedback": "feedback for feedback", "evidence": "feedback for evidence"}
    assert openai_server.request_count == 1
    assert usage.by_purpose()["backward"].calls == 1


async def test_request_fields_reasks_after_an_unusable_reply(openai_server):
    replies = iter(["I think it is fine, no JSON here."])

    def responder(body: dict[str, Any]) -> str:
        return next(replies, None) or default_responder(body)

    openai_server.responder = responder
    model = openai_model(openai_server)
    fields = {"feedback": "what to change", "evidence": "why"}
    result = await request_fields(
        model, json_request(*fields), fields, purpose="backward", where="Node0"
    )
    assert result["feedback"] == "feedback for feedback"
    assert openai_server.request_count == 2
    retry_messages = openai_server.requests[1]["messages"]
    assert retry_messages[-2] == {
        "role": "assistant",
        "content": "I think it is fine, no JSON here.",
    }
    assert "could not be used" in retry_messages[-1]["content"]


async def test_request_fields_persistent_garbage_names_where_and_last_reply(openai_server):
    counter = iter(range(100))
    openai_server.responder = lambda body: f"garbage reply #{next(counter)}"
    model = openai_model(openai_server)
    fields = {"feedback": "what to change", "evidence": "why"}
    with pytest.raises(StructuredOutputError) as info:
        await request_fields(
            model,
            json_request(*fields),
            fields,
            purpose="backward",
            where="ChatCompletionBackward0, item 3",
            attempts=3,
        )
    message = str(info.value)
    assert "ChatCompletionBackward0, item 3" in message
    assert "garbage reply #2" in message
    assert info.value.replies == [f"garbage reply #{i}" for i in range(3)]
    assert openai_server.request_count == 3


# -- LangChain's ChatOpenAI through the adapter ------------------------------------------------


class MetadataRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.metadata: list[dict[str, Any]] = []

    def on_chat_model_start(self, serialized, messages, *, metadata=None, **kwargs):
        self.metadata.append(dict(metadata or {}))


async def test_chat_openai_forward_text_and_usage_counted_once(openai_server):
    model = chat_openai_model(openai_server)
    with track_usage() as usage:
        completion = await model.acomplete(HELLO)
    assert completion.text == "echo: hello there"
    assert openai_server.request_count == 1
    assert openai_server.requests[0]["messages"] == HELLO
    counts = usage.total()
    prompt_tokens = count_tokens("You are terse.\nhello there")
    assert (counts.calls, counts.input_tokens, counts.output_tokens) == (1, prompt_tokens, 3)


async def test_chat_openai_json_request_sends_the_schema_in_its_response_format(openai_server):
    model = chat_openai_model(openai_server)
    completion = await model.acomplete(json_request("feedback"), json_schema=SCHEMA)
    assert json.loads(completion.text) == {"feedback": "feedback for feedback"}
    assert openai_server.requests[-1]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": SCHEMA.name, "schema": SCHEMA.schema},
    }
    await model.acomplete(HELLO)
    assert "response_format" not in openai_server.requests[-1]


async def test_chat_openai_on_llama_cpp_sends_the_schema_with_json_object(openai_server):
    # llama.cpp's server refuses json_schema (HTTP 500) but honours json_object + schema,
    # which is what makes even a 135M model emit the requested keys.
    chat = ChatOpenAI(base_url=openai_server.base_url, api_key="sk-test", model="fake-model")
    model = LangChainChatModelClient(chat, retry=RetryPolicy(max_attempts=1))
    openai_server.inject(Fault.refuse_json_schema(), times=10)
    completion = await model.acomplete(json_request("feedback"), json_schema=SCHEMA)
    assert json.loads(completion.text) == {"feedback": "feedback for feedback"}
    formats = [r.get("response_format") for r in openai_server.requests]
    assert formats == [
        {"type": "json_schema", "json_schema": {"name": SCHEMA.name, "schema": SCHEMA.schema}},
        {"type": "json_object", "schema": SCHEMA.schema},
    ]
    # remembered for the model: the next structured call goes straight to json_object
    again = LangChainChatModelClient(chat, retry=RetryPolicy(max_attempts=1))
    await again.acomplete(json_request("feedback"), json_schema=SCHEMA)
    assert openai_server.requests[-1]["response_format"] == {
        "type": "json_object",
        "schema": SCHEMA.schema,
    }


async def test_chat_openai_purpose_reaches_callbacks_and_tracing(openai_server):
    model = chat_openai_model(openai_server)
    recorder = MetadataRecorder()
    with collect_runs() as collector:
        await model.acomplete(HELLO, purpose="judge", config={"callbacks": [recorder]})
    assert recorder.metadata and recorder.metadata[-1]["afnio_purpose"] == "judge"
    (run,) = collector.traced_runs
    assert run.run_type == "llm"
    assert run.extra["metadata"]["afnio_purpose"] == "judge"


async def test_chat_openai_transient_errors_are_retried_by_the_package(openai_server):
    model = chat_openai_model(openai_server)
    openai_server.inject(Fault.http(503))
    openai_server.inject(Fault.rate_limit(retry_after=0.05))
    with track_usage() as usage:
        assert (await model.acomplete(HELLO)).text == "echo: hello there"
    assert openai_server.request_count == 3
    assert usage.total().retries == 2


def test_chat_openai_sync_complete_called_repeatedly(openai_server):
    model = chat_openai_model(openai_server)
    assert [model.complete(HELLO).text for _ in range(3)] == ["echo: hello there"] * 3


# -- concurrency --------------------------------------------------------------------------


async def test_concurrent_calls_overlap_and_respect_the_concurrency_limit(openai_server):
    # 1 s: on a loaded CI runner, opening 8 fresh connections took longer than 0.3 s
    # (a fresh-clone run saw a peak of 6), so a shorter reply no longer overlapped them all.
    openai_server.latency = 1.0
    model = openai_model(openai_server)

    async def peak_of_a_batch() -> int:
        openai_server.reset()
        replies = await asyncio.gather(
            *(model.acomplete([{"role": "user", "content": f"item {i}"}]) for i in range(8))
        )
        assert [r.text for r in replies] == [f"echo: item {i}" for i in range(8)]
        assert openai_server.request_count == 8
        return openai_server.max_concurrent_requests

    assert await peak_of_a_batch() == 8
    with concurrency_limit(2):
        assert await peak_of_a_batch() == 2


async def test_server_serves_64_slow_requests_at_once(openai_server):
    openai_server.latency = 1.0
    model = openai_model(openai_server)
    with concurrency_limit(64):
        replies = await asyncio.gather(
            *(model.acomplete([{"role": "user", "content": f"n{i}"}]) for i in range(64))
        )
    assert openai_server.max_concurrent_requests == 64
    assert sorted(r.text for r in replies) == sorted(f"echo: n{i}" for i in range(64))
    assert openai_server.request_count == 64


def _slow_responder(seconds: float):
    def respond(body: dict) -> str:
        time.sleep(seconds)  # the server's own work on a request (parsing, a model)
        return "slow reply"

    return respond


@pytest.mark.parametrize("stream", [False, True])
def test_latency_counts_from_arrival_and_includes_the_servers_own_work(openai_server, stream):
    # A provider's latency is from request to answer: the work done on the request is
    # part of it, not added after it (else a busy test server answers late).
    client = openai.OpenAI(base_url=openai_server.base_url, api_key="test-key", max_retries=0)
    openai_server.latency = 0.8
    openai_server.responder = _slow_responder(0.6)
    start = time.monotonic()
    if stream:
        chunks = client.chat.completions.create(model="fake-model", messages=HELLO, stream=True)
        next(iter(chunks))  # the first chunk comes after the latency
        elapsed = time.monotonic() - start
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "slow reply"
        )
    else:
        reply = client.chat.completions.create(model="fake-model", messages=HELLO)
        elapsed = time.monotonic() - start
        assert reply.choices[0].message.content == "slow reply"
    assert 0.8 <= elapsed < 1.3  # not 0.6 + 0.8


def test_latency_is_still_waited_for_when_the_server_has_nothing_to_do(openai_server):
    client = openai.OpenAI(base_url=openai_server.base_url, api_key="test-key", max_retries=0)
    openai_server.latency = 0.3
    start = time.monotonic()
    client.chat.completions.create(model="fake-model", messages=HELLO)
    assert time.monotonic() - start >= 0.3


def test_work_longer_than_the_latency_is_answered_when_done(openai_server):
    client = openai.OpenAI(base_url=openai_server.base_url, api_key="test-key", max_retries=0)
    openai_server.latency = 0.1
    openai_server.responder = _slow_responder(0.3)
    start = time.monotonic()
    reply = client.chat.completions.create(model="fake-model", messages=HELLO)
    assert time.monotonic() - start >= 0.3
    assert reply.choices[0].message.content == "slow reply"


# -- streaming ------------------------------------------------------------------------------


def test_streaming_with_the_sync_openai_client(openai_server):
    client = openai.OpenAI(base_url=openai_server.base_url, api_key="test-key", max_retries=0)
    openai_server.per_token_latency = 0.01
    plain = client.chat.completions.create(model="fake-model", messages=HELLO)
    chunks = list(
        client.chat.completions.create(
            model="fake-model",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content == "echo: hello there"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert all(c.model == "fake-model" for c in chunks)
    assert openai_server.requests[-1]["stream"] is True


async def test_streaming_with_the_async_openai_client(openai_server):
    openai_server.responder = lambda body: "one two  three\nfour"
    client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="test-key")
    stream = await client.chat.completions.create(model="m", messages=HELLO, stream=True)
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == "one two  three\nfour"
    assert len([p for p in pieces if p]) == 4
    await client.close()


# -- the server itself ------------------------------------------------------------------------


def _post(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_fault_rate_is_reproducible_with_a_seed():
    def statuses(seed: int) -> list[int]:
        with OpenAICompatServer() as server:
            server.fault_rate(0.5, [429, Fault.http(503)], seed=seed)
            url = f"{server.base_url}/chat/completions"
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            return [_post(url, body) for _ in range(30)]

    first, again = statuses(7), statuses(7)
    assert first == again
    assert {200, 429, 503} == set(first)


def test_models_endpoint_and_reset(openai_server):
    client = openai.OpenAI(base_url=openai_server.base_url, api_key="test-key")
    assert [m.id for m in client.models.list()] == ["fake-model"]
    client.chat.completions.create(model="fake-model", messages=HELLO)
    openai_server.inject(500, times=3)
    assert (openai_server.request_count, openai_server.pending_faults) == (1, 3)
    openai_server.reset()
    assert (openai_server.requests, openai_server.pending_faults) == ([], 0)


def test_fault_validation():
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("bogus")
    with pytest.raises(ValueError, match="HTTP status"):
        Fault("status")
    server = OpenAICompatServer()
    with pytest.raises(TypeError):
        server.inject(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        server.fault_rate(1.5)


def test_stop_wakes_sleeping_handlers_and_leaves_no_threads():
    server = OpenAICompatServer(latency=30.0).start()
    url = f"{server.base_url}/chat/completions"
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    outcomes: list[object] = []

    def call() -> None:
        try:
            outcomes.append(_post(url, body))
        except OSError as exc:  # the server drops the connection on stop
            outcomes.append(exc)

    callers = [threading.Thread(target=call, daemon=True) for _ in range(4)]
    for caller in callers:
        caller.start()
    deadline = time.monotonic() + 5
    while server.request_count < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 2.0
    assert not server.running
    assert not [t for t in threading.enumerate() if t.name.startswith("openai-compat-server")]
    for caller in callers:
        caller.join(5)
        assert not caller.is_alive()
    assert len(outcomes) == 4 and 200 not in outcomes  # none was answered


def test_an_unnamed_openai_client_error_gives_routes_that_work_where_it_was_raised(openai_server):
    """The hint once said model='...' everywhere, which set_backward_model refuses as a
    second value for its first argument. Each route it names now works where it is named
    (found by an app written from the openai client's documentation)."""
    from afnio_langchain import Variable, set_backward_model
    from afnio_langchain.autodiff import ChatCompletion
    from afnio_langchain.models import OpenAIClient
    from afnio_langchain.optim import TGD

    client = openai.OpenAI(base_url=openai_server.base_url, api_key="sk-test")
    with pytest.raises(TypeError, match=r"OpenAIClient\(client, model=.*model_name=") as info:
        set_backward_model(client)
    assert "set_backward_model and TGD" in str(info.value)
    wrapped = OpenAIClient(client, model="fake-model")
    set_backward_model(wrapped)
    set_backward_model(client, model_name="fake-model")
    TGD([Variable("x", requires_grad=True)], model=wrapped)
    TGD([Variable("x", requires_grad=True)], model=client, model_name="fake-model")
    messages = [{"role": "user", "content": [Variable("hi")]}]
    assert ChatCompletion.apply(client, messages, model="fake-model").data == "echo: hi"
    set_backward_model(None)


def test_a_pydantic_class_as_response_format_says_what_to_pass_before_any_request(openai_server):
    """openai's own create() refuses a class (it belongs to parse()); through this client
    it once failed deep in JSON encoding (found by an app from openai's structured
    output guide). The schema form the message gives works."""
    import pydantic

    from afnio_langchain import Variable
    from afnio_langchain.autodiff import ChatCompletion

    class City(pydantic.BaseModel):
        name: str

    client = openai.OpenAI(base_url=openai_server.base_url, api_key="sk-test")
    messages = [{"role": "user", "content": [Variable("Capital of France?")]}]
    with pytest.raises(TypeError, match=r"response_format=City is a class.*model_json_schema\(\)"):
        ChatCompletion.apply(client, messages, model="fake-model", response_format=City)
    assert openai_server.request_count == 0
    schema = {"type": "json_schema", "json_schema": {"name": "City", "schema": City.model_json_schema()}}
    ChatCompletion.apply(client, messages, model="fake-model", response_format=schema)
    assert openai_server.requests[-1]["response_format"] == schema
