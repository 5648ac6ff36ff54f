"""Replies that arrived but are not what they look like: a blank gradient, a backward
whose structured replies never became usable (counted as a failure), a forward reply
that is not the model's answer (a content filter, a refusal, tool calls alone), a
streamed reply cut by ``max_tokens`` and a stream whose reply is an error event.
Through the ``openai`` client and ``ChatOpenAI`` (and a ``dspy.LM`` where it reads the
reply), against the stdlib server."""

from __future__ import annotations

import json

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from afnio_langchain import ChatCompletionRunnable, Variable, get_usage, track_usage
from afnio_langchain._aio import run_sync
from afnio_langchain.autodiff import BackwardError, ChatCompletion, cut_off_items, unfinished_items
from afnio_langchain.models import (
    MalformedReplyError,
    StructuredOutputError,
    as_model_client,
    request_fields,
)

from ._stdlib_server import Reply, Request, chat, completion, sse, tool_call
from .conftest import FAST, KEY, MODEL, make_client
from .test_structured_replies import forward_and_backward, reasked_once, structured_requests

BLANK = {"empty": "", "whitespace": " \n\t "}
OVERLOADED = {"message": "overloaded", "type": "server_error"}


def _system() -> Variable:
    return Variable("Answer briefly.", role="system prompt", requires_grad=True)


def _messages(system: Variable) -> list[dict]:
    return [{"role": "system", "content": [system]}, {"role": "user", "content": "{q}"}]


# -- 1. a blank gradient is not a gradient ------------------------------------------------


@pytest.mark.parametrize("blank", sorted(BLANK))
def test_a_blank_gradient_is_reasked(client, oracle, server, blank):
    reask = reasked_once(client, oracle, server, json.dumps({"var_1": BLANK[blank]}))
    assert "is empty" in reask.last_user  # says what was wrong, as for any unusable reply


def test_a_gradient_that_stays_blank_fails_the_backward_and_attaches_nothing(
    client, oracle, server
):
    oracle.queue("backward", *[json.dumps({"var_1": "   "})] * 10)
    system = _system()
    with track_usage() as usage, pytest.raises(BackwardError) as caught:
        forward_and_backward(client, system)
    assert "ChatCompletionBackward0" in str(caught.value) and "is empty" in str(caught.value)
    assert system.grad == []  # no empty gradient, nothing committed
    counts = usage.by_purpose()["backward"]
    assert (counts.calls, counts.failures) == (3, 1)


def test_a_blank_gradient_in_a_minibatch_fails_only_its_item_in_best_effort(
    client, oracle, server
):
    system = _system()
    out = ChatCompletion.apply(
        client, _messages(system), inputs={"q": ["2+2?", "3+3?"]}, backward_model=client
    )

    def blank_for_item_one(request: Request) -> Reply:
        var_1 = "" if "3+3?" in request.text else "Feedback var_1: be more specific."
        return chat(json.dumps({"var_1": var_1}))

    oracle.queue("backward", *[blank_for_item_one] * 10)
    report = out.backward("Too short.", best_effort=True)
    assert [(f.node, f.item) for f in report.failures] == [("ChatCompletionBackward0", 1)]
    assert [g.data for g in system.grad] == ["Feedback var_1: be more specific."]


# -- 2. a backward StructuredOutputError is a failure in usage --------------------------------


def test_a_backward_structured_output_error_counts_one_failure(client, oracle, server):
    oracle.queue("backward", *[json.dumps({"var_1": None})] * 10)
    before = get_usage().by_purpose().get("backward")
    failures_before = before.failures if before is not None else 0
    with track_usage() as usage, pytest.raises(BackwardError):
        forward_and_backward(client)
    counts = usage.by_purpose()["backward"]
    assert (counts.calls, counts.retries, counts.failures) == (3, 0, 1)
    assert get_usage().by_purpose()["backward"].failures == failures_before + 1
    assert usage.by_purpose()["forward"].failures == 0


def test_a_dspy_adapter_reply_that_holds_no_fields_counts_one_failure(server, oracle):
    dspy = pytest.importorskip("dspy")
    from afnio_langchain.dspy._protocol import AdapterProtocolClient

    lm = dspy.LM(f"openai/{MODEL}", api_base=server.base_url, api_key=KEY, cache=False)
    client = AdapterProtocolClient(lm)
    ask = [{"role": "user", "content": "How should the instructions change?"}]
    # DSPy's adapter asks in its own format, without a response_format: the oracle
    # takes such a request for a forward one.
    oracle.queue("forward", "No fields here.")  # not in DSPy's adapter format
    with track_usage() as usage, pytest.raises(StructuredOutputError):
        run_sync(lambda: request_fields(client, ask, {"var_1": "feedback"},
                                        purpose="backward", where="example"))
    counts = usage.by_purpose()["backward"]
    assert (counts.calls, counts.failures) == (1, 1)


@pytest.mark.parametrize(
    ("finish_reason", "said"),
    [("length", "cut off by the token limit"), ("content_filter", "content_filter")],
)
def test_a_dspy_adapter_reply_that_was_cut_is_never_a_gradient(server, oracle, finish_reason, said):
    dspy = pytest.importorskip("dspy")
    from afnio_langchain.dspy._protocol import AdapterProtocolClient

    lm = dspy.LM(f"openai/{MODEL}", api_base=server.base_url, api_key=KEY, cache=False)
    client = AdapterProtocolClient(lm)
    ask = [{"role": "user", "content": "How should the instructions change?"}]
    # DSPy's ChatAdapter can still read its fields from a reply the token limit or a
    # content filter ended: the reply's finish reason is what says it is not whole.
    cut = "[[ ## var_1 ## ]]\nName the capital\n\n[[ ## completed ## ]]"
    oracle.queue("forward", *[chat(cut, finish_reason=finish_reason)] * 3)  # (see above)
    with track_usage() as usage, pytest.raises(StructuredOutputError, match=said):
        run_sync(lambda: request_fields(client, ask, {"var_1": "feedback"},
                                        purpose="backward", where="example"))
    assert usage.by_purpose()["backward"].failures == 1


# -- 3. forward replies that are not the model's answer are kept and marked -------------------

NOT_ANSWERS = {
    "content_filter": (
        lambda: chat("I was saying that the", finish_reason="content_filter"),
        "I was saying that the",
    ),
    "refusal": (
        lambda: Reply(body=completion(None, refusal="I can't help with that.")),
        "",
    ),
    "tool_calls": (
        lambda: Reply(body=completion(None, finish_reason="tool_calls", tool_calls=[tool_call()])),
        "",
    ),
    "tool_calls, finish stop": (
        lambda: Reply(body=completion(None, tool_calls=[tool_call()])),
        "",
    ),
}


def _reason(case: str) -> str:
    return case.split(",")[0]


@pytest.mark.parametrize("case", sorted(NOT_ANSWERS))
def test_a_forward_reply_that_is_not_an_answer_is_kept_and_marked(client, oracle, server, case):
    reply, text = NOT_ANSWERS[case]
    oracle.queue("forward", reply())
    out = ChatCompletion.apply(client, _messages(_system()), inputs={"q": "2+2?"})
    assert out.data == text  # kept as it came
    assert unfinished_items(out) == {0: _reason(case)}
    assert cut_off_items(out) == []


@pytest.mark.parametrize("case", sorted(NOT_ANSWERS))
def test_an_observed_chatopenai_call_marks_it_too(oracle, server, case):
    """A model with a callback runs through LangChain's run (not the fast path): the
    reply message (``additional_kwargs["refusal"]``, ``tool_calls``) says it."""
    client = make_client("chatopenai", server, callbacks=[BaseCallbackHandler()])
    reply, text = NOT_ANSWERS[case]
    oracle.queue("forward", reply())
    out = ChatCompletion.apply(client, _messages(_system()), inputs={"q": "2+2?"})
    assert (out.data, unfinished_items(out)) == (text, {0: _reason(case)})


def test_only_the_items_that_are_not_answers_are_marked_in_a_minibatch(client, server):
    def by_question(request: Request) -> Reply:
        if "refuse" in request.last_user:
            return Reply(body=completion(None, refusal="No."))
        if "filter" in request.last_user:
            return chat("Par", finish_reason="content_filter")
        if "cut" in request.last_user:
            return chat("The answer is", finish_reason="length")
        return chat("Fine.")

    server.handler = by_question
    questions = ["ok", "refuse", "ok", "filter", "cut"]
    out = ChatCompletion.apply(client, _messages(_system()), inputs={"q": questions})
    assert out.data == ["Fine.", "", "Fine.", "Par", "The answer is"]
    assert unfinished_items(out) == {1: "refusal", 3: "content_filter"}
    assert cut_off_items(out) == [4]


def test_an_ordinary_reply_is_not_marked(client, oracle, server):
    out = ChatCompletion.apply(client, _messages(_system()), inputs={"q": ["2+2?", "3+3?"]})
    assert out.data == ["The answer.", "The answer."]
    assert unfinished_items(out) == {} and cut_off_items(out) == []


def test_a_dspy_forward_refusal_is_kept_and_marked(oracle, server):
    dspy = pytest.importorskip("dspy")
    oracle.queue("forward", Reply(body=completion(None, refusal="I can't help with that.")))
    lm = dspy.LM(f"openai/{MODEL}", api_base=server.base_url, api_key=KEY, cache=False)
    out = ChatCompletion.apply(as_model_client(lm), _messages(_system()), inputs={"q": "2+2?"})
    assert (out.data, unfinished_items(out)) == ("", {0: "refusal"})


def test_a_refusal_is_never_a_gradient(client, oracle, server):
    oracle.queue("backward", Reply(body=completion(None, refusal="I can't help with that.")))
    system = forward_and_backward(client)
    assert [g.data for g in system.grad] == ["Feedback var_1: be more specific."]
    assert len(structured_requests(server, "backward")) == 2


# -- 4. a streamed reply keeps invoke's marks -------------------------------------------------


def _streamed_or_not(text: str, finish_reason: str):
    def reply(request: Request) -> Reply:
        if request.streaming:
            return sse([text[i : i + 4] for i in range(0, len(text), 4)], finish_reason=finish_reason)
        return chat(text, finish_reason=finish_reason)

    return reply


def _step(client) -> ChatCompletionRunnable:
    return ChatCompletionRunnable(model=client, messages=[("system", _system()), ("user", "{q}")])


@pytest.mark.parametrize("way", ["invoke", "stream", "astream"])
async def test_a_streamed_reply_cut_by_max_tokens_is_marked_as_invoke_marks_it(
    client, oracle, server, way
):
    cut = "The answer is four, because two"
    oracle.queue("forward", _streamed_or_not(cut, "length"))
    step = _step(client)
    with track_usage() as usage:
        if way == "invoke":
            out = await step.ainvoke({"q": "2+2?"})
        elif way == "stream":
            import asyncio

            out = (await asyncio.to_thread(lambda: list(step.stream({"q": "2+2?"}))))[-1]
        else:
            out = [chunk async for chunk in step.astream({"q": "2+2?"})][-1]
    assert isinstance(out, Variable) and out.data == cut
    assert cut_off_items(out) == [0]
    assert unfinished_items(out) == {}
    assert usage.by_purpose()["forward"].cut_off == 1


@pytest.mark.parametrize("way", ["invoke", "astream"])
async def test_a_streamed_content_filtered_reply_is_marked_as_invoke_marks_it(
    client, oracle, server, way
):
    oracle.queue("forward", _streamed_or_not("I was saying", "content_filter"))
    step = _step(client)
    if way == "invoke":
        out = await step.ainvoke({"q": "2+2?"})
    else:
        out = [chunk async for chunk in step.astream({"q": "2+2?"})][-1]
    assert (out.data, unfinished_items(out), cut_off_items(out)) == (
        "I was saying", {0: "content_filter"}, []
    )


# -- 5. an error event in a stream -------------------------------------------------------------


@pytest.mark.parametrize("event_line", [False, True], ids=["data error", "event: error"])
async def test_an_error_event_before_any_text_is_retried(oracle, server, event_line):
    client = make_client("chatopenai", server)
    oracle.queue("forward", sse([], error=OVERLOADED, error_event=event_line))
    with track_usage() as usage:
        chunks = [c async for c in client.astream([{"role": "user", "content": "2+2?"}])]
    assert "".join(chunks) == "The answer."
    assert server.count() == 2
    assert usage.by_purpose()["forward"].retries == 1


@pytest.mark.parametrize("event_line", [False, True], ids=["data error", "event: error"])
def test_an_error_event_in_a_streaming_models_reply_is_retried(oracle, server, event_line):
    """``ChatOpenAI(streaming=True)`` streams every call: the error event is read by
    ``invoke`` as well, and a structured reply is retried the same way."""
    client = make_client("chatopenai", server, streaming=True)
    oracle.queue("forward", sse(["The ans"], error=OVERLOADED, error_event=event_line))
    oracle.queue("backward", sse([], error=OVERLOADED, error_event=event_line))
    system = forward_and_backward(client)
    assert [g.data for g in system.grad] == ["Feedback var_1: be more specific."]
    assert server.count() == 4


@pytest.mark.parametrize("event_line", [False, True], ids=["data error", "event: error"])
async def test_an_error_event_after_text_surfaces_and_is_never_the_reply(
    oracle, server, event_line
):
    client = make_client("chatopenai", server)
    oracle.queue("forward", sse(["The ans"], error=OVERLOADED, error_event=event_line))
    step = _step(client)
    seen: list = []
    with track_usage() as usage, pytest.raises(MalformedReplyError, match="error event"):
        async for chunk in step.astream({"q": "2+2?"}):
            seen.append(chunk)
    assert "".join(seen) == "The ans"  # shown as it came; no output Variable follows
    assert not any(isinstance(chunk, Variable) for chunk in seen)
    assert server.count() == 1  # text was shown: not retried
    assert usage.by_purpose()["forward"].failures == 1


def test_an_error_event_that_persists_surfaces_masked_after_the_retries(oracle, server):
    client = make_client("chatopenai", server, retry=FAST, streaming=True)
    leaked = {"message": f"upstream rejected key {KEY}", "type": "server_error"}
    oracle.queue("forward", *[sse([], error=leaked)] * 5)
    with pytest.raises(MalformedReplyError) as caught:
        ChatCompletion.apply(client, _messages(_system()), inputs={"q": "2+2?"})
    assert "error event" in str(caught.value) and "upstream rejected key" in str(caught.value)
    assert KEY not in str(caught.value) and KEY[:12] not in str(caught.value)
    assert server.count() == FAST.max_attempts
