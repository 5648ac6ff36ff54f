"""JSON repair and field extraction, usage tracking scopes, and the retry policy."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afnio_langchain import get_usage, track_usage
from afnio_langchain.models import (
    BaseModelClient,
    Completion,
    JsonSchema,
    Message,
    RetryPolicy,
    StructuredOutputError,
    UsageTracker,
    is_transient,
    request_fields,
)
from afnio_langchain.models._structured import (
    extract_fields,
    json_instruction,
    parse_json_object,
    required_keys_in,
)

# --------------------------------------------------------------------------- parse_json_object


@pytest.mark.parametrize(
    "text",
    [
        '{"a": "1", "b": "2"}',
        '```json\n{"a": "1", "b": "2"}\n```',
        '```\n{"a": "1", "b": "2"}\n```',
        'Sure! Here is the object:\n{"a": "1", "b": "2"}\nHope that helps.',
        '{"a": "1", "b": "2",}',
        '```json\n{"a": "1", "b": "2",\n}\n```\nextra prose with a } brace',
        '{"a": "1",\n "b": "2"\n,}',
    ],
)
def test_parse_json_object_tolerates_common_wrapping(text):
    assert parse_json_object(text) == {"a": "1", "b": "2"}


def test_parse_json_object_keeps_nested_values_and_raw_newlines():
    assert parse_json_object('{"a": {"b": [1, 2,]},}') == {"a": {"b": [1, 2]}}
    assert parse_json_object('{"a": "line one\nline two"}') == {"a": "line one\nline two"}


@pytest.mark.parametrize("text", ["", "no json here", "[1, 2, 3]", "{not json}", "} {"])
def test_parse_json_object_raises_value_error_when_there_is_none(text):
    with pytest.raises(ValueError):
        parse_json_object(text)


def test_extract_fields():
    assert extract_fields('Here: ```json\n{"a": "x", "b": "y",}\n```', ["a", "b"]) == {
        "a": "x",
        "b": "y",
    }
    # exactly the asked keys, each a string: nothing else is read into a field
    with pytest.raises(ValueError, match="exactly the keys"):
        extract_fields('{"a": "x", "b": "y", "extra": "z"}', ["a", "b"])
    with pytest.raises(ValueError, match="must be a string, got a number"):
        extract_fields('{"a": 3, "b": "y"}', ["a", "b"])
    with pytest.raises(ValueError, match="got an array"):
        extract_fields('{"a": ["p"], "b": "y"}', ["a", "b"])
    with pytest.raises(ValueError, match="got null"):
        extract_fields('{"var_1": null}', ["var_1"])
    with pytest.raises(ValueError, match="U\\+FFFD"):
        extract_fields('{"var_1": "caf\ufffd"}', ["var_1"])
    # a JSON escape of half a surrogate pair decodes to no text (it cannot be sent on)
    with pytest.raises(ValueError, match="lone surrogate"):
        extract_fields('{"improved_value": "Answer \\ud800 with digits."}', ["improved_value"])
    assert extract_fields('{"v": "smile \\ud83d\\ude00"}', ["v"]) == {"v": "smile \U0001f600"}
    # a reply encoded twice would put JSON into the prompt
    twice = json.dumps({"improved_value": json.dumps({"improved_value": "Answer with digits."})})
    with pytest.raises(ValueError, match="the JSON reply again"):
        extract_fields(twice, ["improved_value"])
    assert extract_fields(json.dumps({"v": '{"name": "x"}'}), ["v"]) == {"v": '{"name": "x"}'}
    # no reply is read under a name it was not given, with or without a wrapper
    with pytest.raises(ValueError):
        extract_fields("  just the feedback  ", ["var_1"])
    with pytest.raises(ValueError, match="exactly the keys"):
        extract_fields('{"feedback": "fix it"}', ["var_1"])
    with pytest.raises(ValueError, match="missing"):
        extract_fields('{"a": "x"}', ["a", "b"])
    # judges' verdicts may score with a JSON number
    assert extract_fields('{"score": 7, "explanation": "ok"}', ["score", "explanation"],
                          numbers=True) == {"score": "7", "explanation": "ok"}
    with pytest.raises(ValueError):
        extract_fields("plain prose", ["a", "b"])
    with pytest.raises(ValueError):
        extract_fields("   ", ["a"])


def test_json_instruction_round_trip_simple():
    keys = ["var_1", "var_2", 'odd "quoted" key', "dots.in.key."]
    text = "Some request.\n\n" + json_instruction(keys)
    assert required_keys_in(text) == keys
    assert required_keys_in("no instruction here") is None
    # the last instruction wins (a retry appends a new one)
    assert required_keys_in(json_instruction(["a"]) + "\n" + json_instruction(["b", "c"])) == [
        "b",
        "c",
    ]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=5, unique=True))
def test_json_instruction_round_trip_property(keys):
    assert required_keys_in("Request text\n" + json_instruction(keys)) == keys


# --------------------------------------------------------------------------- request_fields


class ListClient:
    """A minimal ModelClient (protocol only, no base class) replying from a list."""

    model_name = "list-client"

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.requests: list[list[Message]] = []

    async def acomplete(self, messages, *, purpose="forward", json_schema=None, **params):
        self.requests.append(list(messages))
        self.schema = json_schema
        reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
        return Completion(text=reply, model=self.model_name)


def test_request_fields_retries_then_succeeds():
    client = ListClient(["nope", '{"a": "1"}', '{"a": "1", "b": "2"}'])
    messages = [{"role": "user", "content": "ask\n" + json_instruction(["a", "b"])}]
    fields = asyncio.run(
        request_fields(client, messages, {"a": "first", "b": "second"}, purpose="backward",
                       where="TestNode")
    )
    assert fields == {"a": "1", "b": "2"}
    assert len(client.requests) == 3
    assert isinstance(client.schema, JsonSchema)
    assert client.schema.schema["required"] == ["a", "b"]
    retry = client.requests[1]
    assert retry[:1] == messages  # the original request is kept
    assert retry[1] == {"role": "assistant", "content": "nope"}
    assert required_keys_in(retry[-1]["content"]) == ["a", "b"]


def test_request_fields_gives_up_with_where_and_replies():
    client = ListClient(["garbage one", "garbage two"])
    with pytest.raises(StructuredOutputError) as info:
        asyncio.run(
            request_fields(client, [{"role": "user", "content": "x"}], {"a": "", "b": ""},
                           purpose="backward", where="SomeNodeBackward0 (item 2)", attempts=2)
        )
    assert info.value.where == "SomeNodeBackward0 (item 2)"
    assert info.value.replies == ["garbage one", "garbage two"]
    assert "SomeNodeBackward0 (item 2)" in str(info.value)
    assert "garbage two" in str(info.value)
    assert len(client.requests) == 2


# --------------------------------------------------------------------------- usage


def test_usage_tracker_totals_and_groupings():
    tracker = UsageTracker()
    tracker.record("m1", "forward", input_tokens=10, output_tokens=2)
    tracker.record("m1", "forward", input_tokens=5, output_tokens=1)
    tracker.record("m1", "backward", input_tokens=100, output_tokens=20)
    tracker.record("m2", "optimizer", input_tokens=7, output_tokens=3)
    tracker.record("m2", "optimizer", calls=0, retries=2)
    tracker.record("m2", "judge", calls=0, failures=1)

    total = tracker.total()
    assert (total.calls, total.input_tokens, total.output_tokens) == (4, 122, 26)
    assert (total.retries, total.failures) == (2, 1)
    by_purpose = tracker.by_purpose()
    assert by_purpose["forward"].calls == 2
    assert by_purpose["forward"].input_tokens == 15
    assert by_purpose["optimizer"].retries == 2
    by_model = tracker.by_model()
    assert by_model["m1"].calls == 3 and by_model["m2"].calls == 1
    assert by_model["m1"].output_tokens == 23

    summary = tracker.as_dict()
    assert json.loads(json.dumps(summary)) == summary  # JSON-ready
    assert summary["total"]["calls"] == 4
    assert summary["by_purpose"]["backward"]["input_tokens"] == 100
    assert summary["by_model"]["m2"]["retries"] == 2
    assert {(p["model"], p["purpose"]) for p in summary["pairs"]} == {
        ("m1", "forward"), ("m1", "backward"), ("m2", "optimizer"), ("m2", "judge")
    }

    tracker.reset()
    assert tracker.total().calls == 0
    assert tracker.as_dict()["pairs"] == []


class CountingClient(BaseModelClient):
    """A BaseModelClient with scripted attempts: exceptions are raised, strings returned."""

    model_name = "counting"

    def __init__(self, attempts: list[Any] | None = None, latency: float = 0.0, **kw) -> None:
        super().__init__(**kw)
        self.attempts = list(attempts or [])
        self.latency = latency
        self.count = 0

    async def _agenerate(
        self, messages: Sequence[Message], json_schema: JsonSchema | None, params: dict[str, Any]
    ) -> Completion:
        self.count += 1
        await asyncio.sleep(self.latency)
        outcome = self.attempts.pop(0) if self.attempts else "ok"
        if isinstance(outcome, BaseException):
            raise outcome
        return Completion(text=outcome, model=self.model_name, input_tokens=3, output_tokens=1)


HELLO = [{"role": "user", "content": "hello"}]


def test_track_usage_scopes_nest():
    client = CountingClient()
    global_before = get_usage().by_model().get("counting")
    global_calls_before = global_before.calls if global_before else 0
    with track_usage() as outer:
        client.complete(HELLO)
        with track_usage() as inner:
            client.complete(HELLO, purpose="backward")
            client.complete(HELLO, purpose="backward")
        client.complete(HELLO, purpose="optimizer")
    assert inner.total().calls == 2
    assert inner.by_purpose()["backward"].input_tokens == 6
    assert outer.total().calls == 4
    assert outer.by_purpose()["forward"].calls == 1
    assert outer.by_purpose()["optimizer"].calls == 1
    assert get_usage().by_model()["counting"].calls - global_calls_before == 4
    client.complete(HELLO)  # outside every scope
    assert outer.total().calls == 4


async def test_track_usage_is_isolated_between_concurrent_tasks():
    client = CountingClient(latency=0.01)

    async def worker(n: int):
        with track_usage() as usage:
            for _ in range(n):
                await client.acomplete(HELLO)
                await asyncio.sleep(0)
        return usage.total().calls

    assert await asyncio.gather(worker(2), worker(5), worker(3)) == [2, 5, 3]


async def test_track_usage_follows_into_child_tasks():
    client = CountingClient()
    with track_usage() as usage:
        await asyncio.gather(*(asyncio.create_task(client.acomplete(HELLO)) for _ in range(4)))
    assert usage.total().calls == 4


def test_unknown_purpose_is_rejected():
    with pytest.raises(ValueError, match="purpose"):
        CountingClient().complete(HELLO, purpose="training")


# --------------------------------------------------------------------------- retry policy


class HTTPError(Exception):
    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.response = type("Response", (), {"headers": headers or {}, "status_code": status_code})()


FAST = RetryPolicy(max_attempts=4, initial_wait=0.001, max_wait=0.05)


def failing(errors: list[BaseException], result: str = "done"):
    calls = {"n": 0}

    async def func():
        calls["n"] += 1
        if errors:
            raise errors.pop(0)
        return result

    return func, calls


def test_transient_errors_are_retried():
    func, calls = failing([HTTPError(503), HTTPError(429), TimeoutError()])
    assert asyncio.run(FAST.call(func)) == "done"
    assert calls["n"] == 4


def test_bad_request_is_not_retried():
    func, calls = failing([HTTPError(400)])
    with pytest.raises(HTTPError, match="400"):
        asyncio.run(FAST.call(func))
    assert calls["n"] == 1


def test_retries_are_bounded_and_reraise_the_last_error():
    func, calls = failing([HTTPError(500) for _ in range(10)])
    retried: list[BaseException] = []
    with pytest.raises(HTTPError, match="500"):
        asyncio.run(RetryPolicy(max_attempts=3, initial_wait=0.001).call(func, retried.append))
    assert calls["n"] == 3
    assert len(retried) == 2


def test_retry_after_header_is_honoured():
    func, calls = failing([HTTPError(429, {"retry-after": "0.3"})])
    policy = RetryPolicy(max_attempts=3, initial_wait=0.001, max_wait=5.0)
    start = time.perf_counter()
    assert asyncio.run(policy.call(func)) == "done"
    assert time.perf_counter() - start >= 0.25
    assert calls["n"] == 2

    func, _ = failing([HTTPError(429, {"retry-after-ms": "200"})])
    start = time.perf_counter()
    asyncio.run(policy.call(func))
    assert time.perf_counter() - start >= 0.15


def test_retry_after_is_capped_by_max_wait():
    func, calls = failing([HTTPError(503, {"retry-after": "120"})])
    start = time.perf_counter()
    asyncio.run(RetryPolicy(max_attempts=2, initial_wait=0.001, max_wait=0.1).call(func))
    assert time.perf_counter() - start < 2.0
    assert calls["n"] == 2


@pytest.mark.parametrize(
    "exc, transient",
    [
        (HTTPError(408), True),
        (HTTPError(409), True),
        (HTTPError(429), True),
        (HTTPError(500), True),
        (HTTPError(503), True),
        (HTTPError(400), False),
        (HTTPError(401), False),
        (HTTPError(404), False),
        (TimeoutError(), True),
        (asyncio.TimeoutError(), True),
        (ConnectionResetError(), True),
        (ValueError("model said no"), False),
    ],
)
def test_is_transient(exc, transient):
    assert is_transient(exc) is transient


def test_retry_policy_validates():
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_client_retries_are_counted_in_usage():
    client = CountingClient([HTTPError(503), "recovered"], retry=FAST)
    with track_usage() as usage:
        assert client.complete(HELLO).text == "recovered"
    counts = usage.by_purpose()["forward"]
    assert (counts.calls, counts.retries, counts.failures) == (1, 1, 0)
    assert client.count == 2


def test_client_failures_are_counted_and_not_retried_when_permanent():
    client = CountingClient([HTTPError(400)], retry=FAST)
    with track_usage() as usage:
        with pytest.raises(HTTPError):
            client.complete(HELLO, purpose="backward")
    counts = usage.by_purpose()["backward"]
    assert (counts.calls, counts.retries, counts.failures) == (0, 0, 1)
    assert client.count == 1
