"""The dspy.LM adapter, offline: DSPy's typed engine API with engines written here."""

from __future__ import annotations

import asyncio
import importlib
import sys
import warnings

import pytest

dspy = pytest.importorskip("dspy")

from dspy import lm15  # noqa: E402
from dspy.clients.cache import Cache  # noqa: E402
from dspy.lm15 import Message, Response, TextPart, Usage  # noqa: E402
from dspy.utils import exceptions as dspy_errors  # noqa: E402

from afnio_langchain.models import (  # noqa: E402
    JsonSchema,
    RetryPolicy,
    as_model_client,
    is_transient,
    track_usage,
)
from afnio_langchain.models._dspy_adapter import DSPyLMClient  # noqa: E402
from afnio_langchain.models._retry import retry_after_seconds  # noqa: E402

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hi."},
]


class RecordingEngine:
    """A DSPy engine (``complete(Request) -> Response``) that records every request.

    ``replies`` are used in turn (the last one repeats); an exception in it is raised.
    """

    def __init__(
        self, replies=("hi",), *, usage=(11, 4), schema_support=False, refuse_schema=False
    ):
        self.replies = list(replies)
        self.usage = usage
        self.requests: list[lm15.Request] = []
        self.supports_response_schema = schema_support
        self.refuse_schema = refuse_schema

    def complete(self, request: lm15.Request) -> Response:
        self.requests.append(request)
        if self.refuse_schema and request.config.response_format is not None:
            raise lm15.InvalidRequestError("response_format is not supported", status=400)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        return Response(
            id=None,
            model="recording",
            message=Message.assistant(TextPart(reply)),
            finish_reason="stop",
            usage=Usage(input_tokens=self.usage[0], output_tokens=self.usage[1]),
        )

    def close(self) -> None:
        pass


class AsyncRecordingEngine:
    """The async counterpart DSPy needs for ``lm.acall``."""

    def __init__(self, sync: RecordingEngine) -> None:
        self.sync = sync

    async def complete(self, request: lm15.Request) -> Response:
        return self.sync.complete(request)

    async def aclose(self) -> None:
        pass


def make_lm(engine: RecordingEngine, *, with_async: bool = True, **kwargs) -> dspy.LM:
    async_engine = AsyncRecordingEngine(engine) if with_async else None
    return dspy.LM("afnio-test/recording", engine=engine, async_engine=async_engine, **kwargs)


@pytest.fixture(autouse=True)
def memory_cache(monkeypatch):
    """A fresh in-memory DSPy cache per test: nothing is written under the home dir."""
    monkeypatch.setitem(vars(dspy), "cache", Cache(False, True, None))


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --- resolution and the basic call ----------------------------------------------------


async def test_as_model_client_wraps_dspy_lm_and_returns_text():
    engine = RecordingEngine(["hello there"])
    lm = make_lm(engine)
    client = as_model_client(lm)
    assert isinstance(client, DSPyLMClient)
    assert as_model_client(lm) is client
    assert client.model_name == "afnio-test/recording"

    result = await client.acomplete(CHAT)

    assert result.text == "hello there"
    assert result.model == "afnio-test/recording"
    assert isinstance(result.raw, Response)
    (request,) = engine.requests
    assert isinstance(request, lm15.Request)
    assert request.model == lm.model
    assert request.system == "You are terse."
    assert [(m.role, m.text) for m in request.messages] == [("user", "Say hi.")]


async def test_message_roles_follow_lm15_rules():
    engine = RecordingEngine()
    client = DSPyLMClient(make_lm(engine, cache=False))
    await client.acomplete(
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1"},
            {"role": "system", "content": "late instruction"},
            {"role": "user", "content": "u2"},
        ]
    )
    await client.acomplete([{"role": "system", "content": "only a system prompt"}])
    first, second = engine.requests
    assert first.system == "S"
    assert [(m.role, m.text) for m in first.messages] == [
        ("user", "u1"),
        ("assistant", "a1"),
        ("developer", "late instruction"),
        ("user", "u2"),
    ]
    assert second.system is None
    assert [(m.role, m.text) for m in second.messages] == [("user", "only a system prompt")]


def test_non_lm_dspy_object_is_refused():
    with pytest.raises(TypeError, match="dspy.LM"):
        as_model_client(dspy.Predict("question -> answer"))


async def test_dspy_dummy_lm_works_through_the_typed_path():
    from dspy.utils.dummies import DummyLM

    lm = DummyLM([{"answer": "blue"}])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = await as_model_client(lm).acomplete(user("What color is the sky?"))
    assert "blue" in result.text
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)]


# --- usage ----------------------------------------------------------------------------


async def test_usage_counted_per_purpose_with_tokens():
    engine = RecordingEngine(usage=(11, 4))
    client = DSPyLMClient(make_lm(engine, cache=False))
    with track_usage() as usage:
        await client.acomplete(user("a"), purpose="forward")
        await client.acomplete(user("b"), purpose="backward")
        await client.acomplete(user("c"), purpose="backward")
        await client.acomplete(user("d"), purpose="optimizer")

    by_purpose = usage.by_purpose()
    assert by_purpose["forward"].calls == 1
    assert (by_purpose["forward"].input_tokens, by_purpose["forward"].output_tokens) == (11, 4)
    assert by_purpose["backward"].calls == 2
    assert (by_purpose["backward"].input_tokens, by_purpose["backward"].output_tokens) == (22, 8)
    assert by_purpose["optimizer"].calls == 1
    assert usage.by_model()["afnio-test/recording"].calls == 4


async def test_dspy_usage_tracking_still_sees_our_calls():
    engine = RecordingEngine(usage=(3, 2))
    client = DSPyLMClient(make_lm(engine, cache=False))
    with dspy.track_usage() as dspy_usage:
        await client.acomplete(user("a"))
    totals = dspy_usage.get_total_tokens()["afnio-test/recording"]
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (3, 2)


# --- DSPy's cache ---------------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["backward", "optimizer", "judge"])
async def test_non_forward_calls_bypass_dspy_cache(purpose):
    engine = RecordingEngine(["first critique", "second critique"])
    lm = make_lm(engine, cache=True)
    client = DSPyLMClient(lm)

    one = await client.acomplete(user("critique this"), purpose=purpose)
    two = await client.acomplete(user("critique this"), purpose=purpose)

    assert len(engine.requests) == 2
    assert (one.text, two.text) == ("first critique", "second critique")
    # Nothing was written either: a forward call with the same request is a miss.
    await client.acomplete(user("critique this"), purpose="forward")
    assert len(engine.requests) == 3


async def test_forward_calls_use_dspy_cache_when_enabled():
    engine = RecordingEngine(["answer", "other answer"], usage=(11, 4))
    client = DSPyLMClient(make_lm(engine, cache=True))
    with track_usage() as usage:
        one = await client.acomplete(user("same question"))
        two = await client.acomplete(user("same question"))

    assert len(engine.requests) == 1
    assert one.text == two.text == "answer"
    # A cache hit is no model call and spends no tokens; it is counted as a hit.
    forward = usage.by_purpose()["forward"]
    assert (forward.calls, forward.cache_hits) == (1, 1)
    assert (forward.input_tokens, forward.output_tokens) == (11, 4)
    assert two.input_tokens == two.output_tokens == 0 and two.from_cache


async def test_forward_calls_skip_cache_when_lm_cache_disabled():
    engine = RecordingEngine(["answer", "other answer"])
    client = DSPyLMClient(make_lm(engine, cache=False))
    one = await client.acomplete(user("same question"))
    two = await client.acomplete(user("same question"))
    assert len(engine.requests) == 2
    assert (one.text, two.text) == ("answer", "other answer")


async def test_cache_and_rollout_id_are_call_controls():
    engine = RecordingEngine(["a", "b", "c"])
    client = DSPyLMClient(make_lm(engine, cache=True))
    await client.acomplete(user("q"), rollout_id=1, temperature=0.7)
    await client.acomplete(user("q"), rollout_id=2, temperature=0.7)  # new cache entry
    await client.acomplete(user("q"), rollout_id=1, temperature=0.7)  # hit
    await client.acomplete(user("q"), cache=False, rollout_id=1, temperature=0.7)  # bypass
    assert len(engine.requests) == 3
    assert all(r.config.extensions is None for r in engine.requests)


# --- completion params ----------------------------------------------------------------


async def test_completion_params_reach_the_engine():
    engine = RecordingEngine()
    client = DSPyLMClient(make_lm(engine, cache=False))
    await client.acomplete(
        user("q"), temperature=0.2, max_tokens=64, stop=["END"], seed=7, top_p=0.9, config={}
    )
    config = engine.requests[0].config
    assert config.temperature == 0.2
    assert config.max_tokens == 64
    assert config.stop == ("END",)
    assert config.seed == 7
    assert config.top_p == 0.9


async def test_lm_defaults_apply_and_call_params_override_them():
    engine = RecordingEngine()
    client = DSPyLMClient(make_lm(engine, cache=False, temperature=0.0, max_tokens=100))
    await client.acomplete(user("q"))
    await client.acomplete(user("q"), temperature=1.0)
    first, second = (r.config for r in engine.requests)
    assert (first.temperature, first.max_tokens) == (0.0, 100)
    assert (second.temperature, second.max_tokens) == (1.0, 100)


async def test_unknown_param_is_refused_not_dropped_or_retried():
    engine = RecordingEngine()
    client = DSPyLMClient(make_lm(engine, cache=False), retry=RetryPolicy(initial_wait=0))
    with pytest.raises(Exception, match="no_such_knob"):
        await client.acomplete(user("q"), no_such_knob=1)
    assert engine.requests == []


# --- JSON -----------------------------------------------------------------------------

SCHEMA = JsonSchema("feedback", {"type": "object", "properties": {"f": {"type": "string"}}})


async def test_json_schema_sent_as_response_format_when_supported():
    engine = RecordingEngine(['{"f": "x"}'], schema_support=True)
    client = DSPyLMClient(make_lm(engine, cache=False))
    result = await client.acomplete(user("q"), purpose="backward", json_schema=SCHEMA)
    assert result.text == '{"f": "x"}'
    assert engine.requests[0].config.response_format == {
        "type": "json_schema",
        "name": "feedback",
        "schema": SCHEMA.schema,
    }


async def test_json_schema_left_to_the_prompt_when_unsupported():
    engine = RecordingEngine(['{"f": "x"}'], schema_support=False)
    client = DSPyLMClient(make_lm(engine, cache=False))
    await client.acomplete(user("q"), json_schema=SCHEMA)
    assert engine.requests[0].config.response_format is None


async def test_refused_response_format_falls_back_to_prompt_and_is_remembered():
    engine = RecordingEngine(['{"f": "x"}'], schema_support=True, refuse_schema=True)
    client = DSPyLMClient(make_lm(engine, cache=False))
    result = await client.acomplete(user("q"), json_schema=SCHEMA)
    assert result.text == '{"f": "x"}'
    await client.acomplete(user("q"), json_schema=SCHEMA)
    formats = [r.config.response_format is not None for r in engine.requests]
    assert formats == [True, False, False]


# --- retries and errors ---------------------------------------------------------------


async def test_our_retry_policy_retries_and_dspy_does_not():
    engine = RecordingEngine([lm15.RateLimitError("slow down", status=429), "ok"])
    lm = make_lm(engine, cache=False)  # num_retries=3: DSPy would retry by itself
    client = DSPyLMClient(lm, retry=RetryPolicy(max_attempts=3, initial_wait=0))
    with track_usage() as usage:
        result = await client.acomplete(user("q"))
    assert result.text == "ok"
    assert len(engine.requests) == 2
    assert usage.total().retries == 1
    assert lm.num_retries == 3  # the user's LM is untouched
    assert len(lm.history) == 1  # the successful call is in the user's LM history


async def test_persistent_transient_error_is_attempted_max_attempts_times():
    engine = RecordingEngine([lm15.ServerError("down", status=503)])
    retry = RetryPolicy(max_attempts=2, initial_wait=0)
    client = DSPyLMClient(make_lm(engine, cache=False), retry=retry)
    with track_usage() as usage, pytest.raises(dspy_errors.LMServerError):
        await client.acomplete(user("q"))
    assert len(engine.requests) == 2  # DSPy alone would have made 4, with 1+2+4 s sleeps
    assert (usage.total().retries, usage.total().failures) == (1, 1)


async def test_permanent_error_is_not_retried():
    engine = RecordingEngine([lm15.AuthError("bad key", status=401)])
    client = DSPyLMClient(make_lm(engine, cache=False), retry=RetryPolicy(initial_wait=0))
    with pytest.raises(dspy_errors.LMAuthError):
        await client.acomplete(user("q"))
    assert len(engine.requests) == 1


@pytest.mark.parametrize(
    "error",
    [
        dspy_errors.LMRateLimitError("r"),
        dspy_errors.LMServerError("s", status=503),
        dspy_errors.LMTimeoutError("t"),
        dspy_errors.LMTransportError("reset"),
        dspy_errors.LMLockTimeoutError("lock"),
        dspy_errors.LMAuthError("a", status=401),
        dspy_errors.LMBillingError("quota", status=429),
        dspy_errors.LMInvalidRequestError("bad", status=400),
        dspy_errors.ContextWindowExceededError(model="m"),
        dspy_errors.LMUnexpectedError("bug"),
        dspy_errors.LMUnsupportedFeatureError("nope"),
        lm15.RateLimitError("r", status=429),
        lm15.ServerError("s", status=500),
        lm15.TimeoutError("t"),
    ],
    ids=lambda e: type(e).__module__.split(".")[-1] + "." + type(e).__name__,
)
def test_is_transient_agrees_with_dspy_classification(error):
    from dspy.clients.errors import wrap_error

    public = wrap_error(error, model="m") if isinstance(error, lm15.LM15Error) else error
    assert is_transient(error) == dspy_errors.is_retryable_lm_error(public)


@pytest.mark.parametrize(("num_retries", "failures", "requests", "ok"),
                         [(0, 1, 1, False), (1, 1, 2, True), (5, 5, 6, True), (5, 6, 6, False)])
async def test_the_lms_num_retries_is_how_often_a_call_is_retried(num_retries, failures, requests, ok):
    # dspy.LM's docs: num_retries is "the number of times to retry a request if it fails
    # transiently"; the package retries in its place, as many times.
    busy = [dspy_errors.LMRateLimitError("slow down", retry_after=0.001)] * failures
    engine = RecordingEngine([*busy, "hi"])
    client = as_model_client(make_lm(engine, cache=False, num_retries=num_retries))
    if ok:
        assert (await client.acomplete(CHAT)).text == "hi"
    else:
        with pytest.raises(dspy_errors.LMRateLimitError):
            await client.acomplete(CHAT)
    assert len(engine.requests) == requests


def test_a_retry_policy_given_to_the_client_wins_over_num_retries():
    lm = make_lm(RecordingEngine(), cache=False, num_retries=0)
    assert DSPyLMClient(lm, retry=RetryPolicy(max_attempts=3)).retry.max_attempts == 3
    client = DSPyLMClient(lm)
    assert client.retry.max_attempts == 1
    lm.num_retries = 2  # read at each call, as DSPy reads it
    assert client.retry.max_attempts == 3


def test_retry_after_hint_of_dspy_errors_is_honoured():
    assert retry_after_seconds(dspy_errors.LMRateLimitError("r", retry_after=2.5)) == 2.5
    assert retry_after_seconds(dspy_errors.LMRateLimitError("r")) is None


# --- warnings, sync and thread paths --------------------------------------------------


async def test_no_deprecation_warning_is_emitted():
    engine = RecordingEngine(['{"f": "x"}'], schema_support=True)
    lm = make_lm(engine, cache=True, temperature=0.1)
    client = DSPyLMClient(lm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await client.acomplete(CHAT)
        await client.acomplete(CHAT)  # a cache hit
        await client.acomplete(CHAT, purpose="backward", json_schema=SCHEMA, max_tokens=10)
        await asyncio.to_thread(client.complete, CHAT, purpose="judge")
    deprecations = [
        w for w in caught if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))
    ]
    assert deprecations == [], [str(w.message) for w in deprecations]


async def test_sync_complete_works_inside_a_running_event_loop():
    asyncio.get_running_loop()  # this test runs inside one
    engine = RecordingEngine(["sync reply"])
    client = DSPyLMClient(make_lm(engine, cache=False))
    with track_usage() as usage:
        result = client.complete(user("q"), purpose="backward")
    assert result.text == "sync reply"
    assert usage.by_purpose()["backward"].calls == 1


async def test_lm_without_async_engine_runs_in_a_thread():
    engine = RecordingEngine(["from a thread"])
    lm = make_lm(engine, with_async=False, cache=False)
    result = await DSPyLMClient(lm).acomplete(user("q"), temperature=0.3)
    assert result.text == "from a thread"
    assert engine.requests[0].config.temperature == 0.3


# --- without DSPy ---------------------------------------------------------------------


def test_missing_dspy_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "dspy", None)  # "import dspy" now fails
    monkeypatch.delitem(sys.modules, "afnio_langchain.models._dspy_adapter")
    with pytest.raises(ImportError, match=r"pip install 'afnio-langchain\[dspy\]'"):
        importlib.import_module("afnio_langchain.models._dspy_adapter")

    DSPyLooking = type("LM", (), {"__module__": "dspy.clients.lm"})
    with pytest.raises(ImportError, match=r"pip install 'afnio-langchain\[dspy\]'"):
        as_model_client(DSPyLooking())
