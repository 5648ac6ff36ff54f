"""The reverse bridge: DSPy programs running on LangChain chat models and model clients
through a DSPy engine (``complete(Request) -> Response``), offline."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Sequence
from typing import Any

import pytest

dspy = pytest.importorskip("dspy")

from _gauge import counted_sleep  # noqa: E402
from dspy import lm15  # noqa: E402
from dspy.utils import exceptions as dspy_errors  # noqa: E402
from langchain_core.language_models import FakeListChatModel  # noqa: E402

from afnio_langchain import track_usage  # noqa: E402
from afnio_langchain.dspy import AsyncModelClientEngine, ModelClientEngine, as_dspy_lm  # noqa: E402
from afnio_langchain.dspy._adapter_replies import chat_adapter_reply, requested_fields  # noqa: E402
from afnio_langchain.dspy._lm import request_params, request_to_messages, to_lm15_error  # noqa: E402
from afnio_langchain.models import BaseModelClient, Completion, JsonSchema, Message, RetryPolicy  # noqa: E402
from afnio_langchain.testing import ScriptedChatModel  # noqa: E402

ANSWER = "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"


def request(*messages: lm15.Message, system: str | None = None, **config: Any) -> lm15.Request:
    return lm15.Request(
        model="afnio/scripted", messages=messages, system=system, config=lm15.Config(**config)
    )


class HttpError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status


class RecordingClient(BaseModelClient):
    """A model client of the package's own protocol, recording what it receives."""

    model_name = "recording"

    def __init__(self, reply: str = ANSWER, error: Exception | None = None, latency: float = 0.0):
        super().__init__(retry=RetryPolicy(max_attempts=1))
        self.reply, self.error, self.latency = reply, error, latency
        self.received: list[tuple[list[Message], JsonSchema | None, dict]] = []
        self.in_flight = self.peak = self.total = 0

    async def _agenerate(self, messages: Sequence[Message], json_schema, params) -> Completion:
        self.received.append((list(messages), json_schema, dict(params)))
        if self.latency:
            await counted_sleep(self, self.latency)
        if self.error is not None:
            raise self.error
        return Completion(self.reply, self.model_name, input_tokens=7, output_tokens=3)


def test_a_dspy_program_runs_on_a_langchain_chat_model_without_deprecation_warnings():
    chat = ScriptedChatModel(forward=ANSWER)
    lm = as_dspy_lm(chat, temperature=0.3, max_tokens=50)
    assert lm.model == "afnio/scripted" and isinstance(lm, dspy.LM)
    with warnings.catch_warnings(record=True) as caught, track_usage() as usage:
        warnings.simplefilter("always")
        with dspy.context(lm=lm):
            prediction = dspy.Predict("question -> answer")(question="Capital of France?")
            async_prediction = asyncio.run(
                dspy.Predict("question -> answer").acall(question="Capital of France?")
            )
    assert prediction.answer == async_prediction.answer == "Paris"
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)]
    # generation settings reach the chat model; calls are counted as forward calls
    assert chat.calls[0].kwargs == {"temperature": 0.3, "max_tokens": 50}
    assert usage.by_purpose()["forward"].calls == 2
    assert "Capital of France?" in chat.calls[0].text
    assert len(lm.history) == 2  # DSPy keeps its history as for any LM


def test_chain_of_thought_and_a_plain_langchain_fake():
    lm = as_dspy_lm(
        FakeListChatModel(
            responses=[
                "[[ ## reasoning ## ]]\n2 and 2\n\n[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"
            ]
        )
    )
    with dspy.context(lm=lm):
        prediction = dspy.ChainOfThought("question -> answer")(question="2+2?")
    assert (prediction.reasoning, prediction.answer) == ("2 and 2", "4")


def test_a_model_client_of_the_package_protocol_and_the_purpose_of_calls():
    client = RecordingClient()
    lm = as_dspy_lm(client, purpose="optimizer")
    with track_usage() as usage, dspy.context(lm=lm):
        dspy.Predict("question -> answer")(question="q")
    assert usage.by_purpose()["optimizer"].calls == 1
    assert usage.by_purpose()["optimizer"].input_tokens == 7
    messages, schema, params = client.received[0]
    assert [m["role"] for m in messages] == ["system", "user"] and schema is None
    assert params["purpose"] == "optimizer"


def test_dspy_sees_the_token_usage_of_the_reply():
    lm = as_dspy_lm(RecordingClient())
    with dspy.context(lm=lm, track_usage=True):
        prediction = dspy.Predict("question -> answer")(question="q")
    usage = prediction.get_lm_usage()["afnio/recording"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (7, 3)


def test_dspy_sees_the_prompt_tokens_the_provider_served_from_its_cache():
    class CachedPrefixClient(RecordingClient):
        async def _agenerate(self, messages, json_schema, params) -> Completion:
            return Completion(self.reply, self.model_name, input_tokens=7, output_tokens=3,
                              cached_input_tokens=5)

    lm = as_dspy_lm(CachedPrefixClient())
    with dspy.context(lm=lm, track_usage=True), track_usage() as ours:
        prediction = dspy.Predict("question -> answer")(question="q")
    usage = prediction.get_lm_usage()["afnio/recording"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 5}
    assert ours.by_purpose()["forward"].cached_input_tokens == 5


@pytest.mark.parametrize(
    ("reason", "seen"),
    [("length", "length"), ("content_filter", "content_filter"), ("stop", "stop")],
)
def test_dspy_sees_what_ended_the_reply(reason, seen, caplog):
    class EndingClient(RecordingClient):
        async def _agenerate(self, messages, json_schema, params) -> Completion:
            return Completion(self.reply, self.model_name, 7, 3, finish_reason=reason)

    lm = as_dspy_lm(EndingClient())
    with dspy.context(lm=lm), caplog.at_level("WARNING"):
        dspy.Predict("question -> answer")(question="q")
    assert lm.history[-1]["response"].finish_reason == seen
    # DSPy's own warning for a reply the token limit cut (dspy.clients.lm).
    assert ("truncated" in caplog.text) == (reason == "length")


def test_calls_are_not_served_from_dspys_cache_by_default():
    chat = ScriptedChatModel(forward=["one", "two"])
    lm = as_dspy_lm(chat)
    assert lm("same prompt") == ["one"] and lm("same prompt") == ["two"]
    assert len(chat.calls) == 2


def test_request_translation():
    messages = request_to_messages(
        request(
            lm15.Message.user("hi"),
            lm15.Message.assistant(lm15.TextPart("hello")),
            lm15.Message.developer("be brief"),
            lm15.Message.user([lm15.TextPart("a"), lm15.TextPart("b")]),
            system="You are terse.",
        )
    )
    assert messages == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
    ]
    params, schema = request_params(
        lm15.Config(max_tokens=10, temperature=0.5, stop=("END",), seed=3)
    )
    assert params == {"max_tokens": 10, "temperature": 0.5, "seed": 3, "stop": ["END"]}
    assert schema is None
    _, schema = request_params(
        lm15.Config(
            response_format={"type": "json_schema", "name": "out", "schema": {"type": "object"}}
        )
    )
    assert schema == JsonSchema("out", {"type": "object"})
    _, schema = request_params(lm15.Config(response_format={"type": "json_object"}))
    assert schema == JsonSchema("response", {"type": "object"})


def test_what_a_chat_client_cannot_carry_is_refused_not_dropped():
    engine = ModelClientEngine(RecordingClient())
    image = lm15.Message.user(
        [lm15.TextPart("look"), lm15.ImagePart(url="https://example.com/a.png")]
    )
    with pytest.raises(lm15.UnsupportedFeatureError, match="ImagePart"):
        engine.complete(request(image))
    with pytest.raises(lm15.UnsupportedFeatureError, match="Config.reasoning"):
        request_params(lm15.Config(reasoning=lm15.Reasoning(effort="high")))
    with pytest.raises(lm15.UnsupportedFeatureError, match="Config.extensions"):
        request_params(lm15.Config(extensions={"logit_bias": {}}))
    # through DSPy the refusal is its public error
    lm = as_dspy_lm(RecordingClient())
    with pytest.raises(dspy_errors.LMUnsupportedFeatureError):
        lm(lm15.Request(model=lm.model, messages=(image,)))


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, dspy_errors.LMAuthError),
        (429, dspy_errors.LMRateLimitError),
        (400, dspy_errors.LMInvalidRequestError),
        (503, dspy_errors.LMServerError),
    ],
)
def test_failures_reach_dspy_as_its_error_family(status, expected):
    lm = as_dspy_lm(RecordingClient(error=HttpError(status)))
    with pytest.raises(expected):
        lm("hi")


def test_error_mapping_keeps_unknown_errors_and_maps_timeouts():
    unknown = KeyError("x")
    assert to_lm15_error(unknown) is unknown
    assert isinstance(to_lm15_error(asyncio.TimeoutError()), lm15.TimeoutError)
    assert isinstance(to_lm15_error(ConnectionResetError()), lm15.TransportError)
    lm = as_dspy_lm(RecordingClient(error=KeyError("boom")))
    with pytest.raises(dspy_errors.LMUnexpectedError) as info:
        lm("hi")
    assert isinstance(info.value.__cause__, KeyError)


def test_explicit_requests_and_streaming_events():
    chat = ScriptedChatModel(forward="streamed reply")
    engine = ModelClientEngine(chat)
    events = list(engine.stream(request(lm15.Message.user("hi"))))
    assert events[0].type == "start" and events[-1].type == "end"
    assert "".join(e.delta.text for e in events if e.type == "delta") == "streamed reply"

    async def collect():
        return [
            e async for e in AsyncModelClientEngine(engine).stream(request(lm15.Message.user("hi")))
        ]

    assert [e.type for e in asyncio.run(collect())] == [e.type for e in events]
    lm = as_dspy_lm(chat)
    response = lm(lm15.Request(model=lm.model, messages=(lm15.Message.user("hi"),)))
    assert isinstance(response, lm15.Response) and response.text == "streamed reply"


def test_copies_share_the_engine():
    lm = as_dspy_lm(ScriptedChatModel(forward="x"))
    copy = lm.copy(temperature=0.9)
    assert copy.engine is lm.engine and copy.kwargs["temperature"] == 0.9
    assert copy("hi") == ["x"]


def test_async_calls_run_concurrently():
    client = RecordingClient(reply="ok", latency=0.3)
    lm = as_dspy_lm(client)

    async def many():
        return await asyncio.gather(*(lm.acall(f"prompt {i}") for i in range(4)))

    results = asyncio.run(many())
    assert results == [["ok"]] * 4
    assert client.peak == 4, "DSPy's acall did not overlap the calls"


def test_argument_checks():
    with pytest.raises(ValueError, match="purpose must be one of"):
        ModelClientEngine(RecordingClient(), purpose="training")
    with pytest.raises(TypeError, match="expected a LangChain chat model"):
        as_dspy_lm("gpt-4o")
    with pytest.raises(TypeError, match="expected a ModelClientEngine"):
        AsyncModelClientEngine(object())
    with pytest.raises(ValueError, match="connection DSPy owns"):
        as_dspy_lm(RecordingClient(), api_key="secret")


def test_scripted_replies_for_chat_and_json_adapters():
    script = chat_adapter_reply({"answer": "4", "why": lambda text: f"{len(text) > 0}"})
    with dspy.context(lm=as_dspy_lm(ScriptedChatModel(forward=script))):
        assert dspy.Predict("q -> answer, why")(q="2+2").why == "True"
    with dspy.context(lm=as_dspy_lm(ScriptedChatModel(forward=script)), adapter=dspy.JSONAdapter()):
        assert dspy.Predict("q -> answer")(q="2+2").answer == "4"
    assert requested_fields("no request here") == ("", [])
    with pytest.raises(ValueError, match="asks for no output fields"):
        script("plain text")
    with pytest.raises(
        ValueError, match=r"no scripted value for the output field\(s\) \['other'\]"
    ):
        script(
            "Respond with the corresponding output fields, starting with the field `[[ ## other ## ]]`."
        )
    with pytest.raises(TypeError, match="must be a str or a callable"):
        chat_adapter_reply({"answer": 4})


@pytest.mark.parametrize("async_streaming", [True, False], ids=["async", "sync"])
def test_dspy_streamify_with_a_stream_listener_streams_the_field(async_streaming):
    """Written from DSPy's streaming tutorial (dspy.streamify + StreamListener): the
    replayed reply reaches the listener word by word, as a native dspy.LM's stream does.
    Sent as one text delta, the listener got nothing."""
    script = chat_adapter_reply({"answer": "Rome is the capital of Italy"})
    lm = as_dspy_lm(ScriptedChatModel(forward=script))
    listener = dspy.streaming.StreamListener(signature_field_name="answer")
    program = dspy.streamify(dspy.Predict("question -> answer"), stream_listeners=[listener],
                             async_streaming=async_streaming)
    chunks, finals = [], []

    def take(item):
        if isinstance(item, dspy.streaming.StreamResponse):
            chunks.append(item.chunk)
        elif isinstance(item, dspy.Prediction):
            finals.append(item.answer)

    async def run():
        async for item in program(question="Capital of Italy?"):
            take(item)

    with dspy.context(lm=lm):
        if async_streaming:
            asyncio.run(run())
        else:
            for item in program(question="Capital of Italy?"):
                take(item)
    assert finals == ["Rome is the capital of Italy"]
    assert len(chunks) > 2 and "".join(chunks).strip() == finals[0]
