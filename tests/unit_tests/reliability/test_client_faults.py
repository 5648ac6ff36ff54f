"""Every client path behaves the same under faults: the ``openai`` client and
``ChatOpenAI`` (and ``dspy.LM``) share one retry policy. Transient HTTP and body faults
are retried with clear errors, ``max_attempts`` counts requests, ``retry-after`` is
capped by ``max_wait``, one deadline covers a slow body, a malformed usage block never
discards a good reply, sync and async calls work from one running loop, and under 5%
faults nothing is lost."""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time

import pytest
from langchain_openai import ChatOpenAI

from afnio_langchain import ChatCompletionRunnable, Variable, track_usage
from afnio_langchain.autodiff import BackwardError, ChatCompletion
from afnio_langchain.models import RetryPolicy
from afnio_langchain.train import fit

from ._stdlib_server import Reply, StdlibServer, chat, completion, sse
from .conftest import CLIENTS, KEY, MODEL, make_client

GOOD = json.dumps(completion("The answer.")).encode()
BODY_FAULTS = {
    "HTML 200": Reply(body="<html><body>502 Bad Gateway</body></html>", content_type="text/html"),
    "200 without choices": Reply(body={"id": "x", "object": "chat.completion", "model": MODEL}),
    "invalid UTF-8": Reply(body=GOOD.replace(b"answer", b"ans\xffwer")),
    "20 MB garbage": Reply(body=b"\x00garbage\x1b[0m" * 1_400_000, content_type="text/plain"),
}
MESSAGES = [{"role": "system", "content": [Variable("Be brief.")]}, {"role": "user", "content": "hi"}]


def ask(model) -> str:
    return ChatCompletion.apply(model, MESSAGES).data


@pytest.mark.parametrize("fault", sorted(BODY_FAULTS))
def test_a_body_fault_is_retried(client, oracle, server, fault):
    oracle.queue("forward", BODY_FAULTS[fault])
    with track_usage() as usage:
        assert ask(client) == "The answer."
    assert server.count() == 2
    assert usage.total().retries == 1


@pytest.mark.parametrize("fault", sorted(BODY_FAULTS))
def test_a_persistent_body_fault_gives_a_clear_error(client, oracle, server, fault):
    oracle.queue("forward", *[BODY_FAULTS[fault]] * 5)
    with pytest.raises(Exception) as caught:
        ask(client)
    text = f"{type(caught.value).__name__}: {caught.value}"
    assert not isinstance(caught.value, (AttributeError, TypeError, UnicodeDecodeError))
    assert re.search(r"not JSON|without choices|not UTF-8", text), text
    assert MODEL in text  # says who answered
    assert len(text) < 2_000  # an excerpt, not 20 MB
    assert server.count() == 3


def test_a_backward_error_names_the_node_and_what_came_back(client, oracle, server):
    oracle.queue("backward", *[BODY_FAULTS["HTML 200"]] * 5)
    system = Variable("Be brief.", role="system prompt", requires_grad=True)
    messages = [{"role": "system", "content": [system]}, {"role": "user", "content": "hi"}]
    out = ChatCompletion.apply(client, messages, backward_model=client)
    with pytest.raises(BackwardError) as caught:
        out.backward("Too short.")
    assert "ChatCompletionBackward0" in str(caught.value)
    assert "502 Bad Gateway" in str(caught.value)


def storm(_request) -> Reply:
    return Reply(status=503, body={"error": {"message": "overloaded", "type": "server_error"}})


@pytest.mark.parametrize("kind", ["openai", "chatopenai"])
def test_max_attempts_counts_requests(kind):
    with StdlibServer(storm) as server:
        client = make_client(kind, server, retry=RetryPolicy(4, initial_wait=0.001, max_wait=0.01))
        with pytest.raises(Exception, match="503|overloaded"):
            ask(client)
        assert server.count() == 4


def test_max_attempts_counts_requests_for_a_chat_model_passed_as_is():
    with StdlibServer(storm) as server:
        model = ChatOpenAI(base_url=server.base_url, api_key=KEY, model=MODEL, max_retries=5)
        chain = ChatCompletionRunnable(model=model, messages=[("user", "{q}")])
        with pytest.raises(Exception, match="503|overloaded"):
            chain.invoke({"q": "hi"})
        assert server.count() == RetryPolicy().max_attempts


def test_retry_after_is_capped_by_max_wait(client_kind, oracle, server):
    client = make_client(client_kind, server, retry=RetryPolicy(3, initial_wait=0.01, max_wait=0.5))
    oracle.queue("forward", Reply(status=429, headers={"retry-after": "6"}, body={"error": {}}))
    began = time.monotonic()
    assert ask(client) == "The answer."
    assert time.monotonic() - began < 3.0
    assert server.count() == 2


def test_one_deadline_covers_a_body_trickling_one_byte_at_a_time(client_kind, oracle, server):
    client = make_client(client_kind, server, timeout=0.4)
    body = json.dumps(completion("The answer.")).encode()
    trickle = Reply(pieces=[body[i : i + 1] for i in range(len(body))], delay=0.03)
    oracle.queue("forward", *[trickle] * 5)
    began = time.monotonic()
    with pytest.raises(Exception, match=r"(?i)timed? ?out|deadline"):
        ask(client)
    # three attempts of at most 0.4 s each (the client's timeout), not the ~7 s trickle
    assert time.monotonic() - began < 3.0


def test_a_deadline_expiry_is_retried_like_any_timeout(client_kind, oracle, server):
    client = make_client(client_kind, server, timeout=0.4)
    body = json.dumps(completion("Slow.")).encode()
    oracle.queue("forward", Reply(pieces=[body[i : i + 1] for i in range(len(body))], delay=0.03))
    assert ask(client) == "The answer."
    assert server.count() == 2


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": "many", "completion_tokens": None},
        {"prompt_tokens": -3, "completion_tokens": [1]},
        "twelve",
    ],
    ids=["strings and nulls", "negative and list", "not an object"],
)
def test_a_malformed_usage_block_never_discards_a_good_reply(client, oracle, server, usage):
    oracle.queue("forward", chat("The good reply.", usage=usage))
    with track_usage() as counted:
        assert ask(client) == "The good reply."
    assert server.count() == 1
    total = counted.total()
    assert (total.calls, total.input_tokens, total.output_tokens) == (1, 0, 0)


async def test_sync_then_async_on_one_chat_model_from_one_running_loop(server):
    """A notebook: the cells run inside one event loop; the first calls the sync API,
    the next awaits the async one, on the same ChatOpenAI."""
    model = ChatOpenAI(base_url=server.base_url, api_key=KEY, model=MODEL)
    chain = ChatCompletionRunnable(model=model, messages=[("system", "Be brief."), ("user", "{q}")])
    assert chain.invoke({"q": "first"}).data == "The answer."
    assert (await chain.ainvoke({"q": "second"})).data == "The answer."
    assert chain.invoke({"q": "third"}).data == "The answer."
    assert (await chain.ainvoke({"q": "fourth"})).data == "The answer."


# -- 5% faults: nothing lost -------------------------------------------------------------

FAULT_MIX = [
    Reply(status=503, body={"error": {"message": "overloaded"}}),
    Reply(status=429, headers={"retry-after": "0.01"}, body={"error": {"message": "slow down"}}),
    Reply(status=500, body={"error": {"message": "boom"}}),
    Reply(reset=True),
    BODY_FAULTS["HTML 200"],
    BODY_FAULTS["200 without choices"],
    BODY_FAULTS["invalid UTF-8"],
    Reply(body=b'{"id": "x", "choices": [{"message": {"content": "cut'),
]


class FaultyEcho:
    """Echoes each request's question, failing about ``rate`` of requests with a seeded
    mix of transport and body faults."""

    def __init__(self, rate: float, seed: int = 0) -> None:
        self.rate = rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.faults = 0
        self.proposals = 0

    def __call__(self, request) -> Reply:
        with self.lock:
            fault = self.rng.choice(FAULT_MIX) if self.rng.random() < self.rate else None
            self.faults += fault is not None
            self.proposals += 1
        if fault is not None:
            return fault
        question = request.last_user
        keys = re.findall(r'"(var_\d+|improved_value)"', question.rsplit("\n", 1)[-1])
        if "improved_value" in keys:
            text = json.dumps({"improved_value": f"Answer with the number only ({self.proposals})."})
        elif keys:
            text = json.dumps({k: "Give the number only." for k in keys})
        else:
            text = f"echo: {question}"
        if request.streaming:
            return sse([text[i : i + 5] for i in range(0, len(text), 5)])
        return chat(text)


PATIENT = RetryPolicy(max_attempts=8, initial_wait=0.001, max_wait=0.01)


@pytest.mark.parametrize("kind", ["openai", "chatopenai", "chatopenai streaming"])
def test_batch_under_five_percent_faults_loses_no_item(kind):
    responder = FaultyEcho(0.05, seed=7)
    with StdlibServer(responder) as server:
        streaming = kind.endswith("streaming")
        base = kind.split()[0]
        model = make_client(base, server, retry=PATIENT, **({"streaming": True} if streaming else {}))
        chain = ChatCompletionRunnable(model=model, messages=[("user", "{q}")])
        questions = [f"question {i}" for i in range(300)]
        outputs = chain.batch([{"q": q} for q in questions], config={"max_concurrency": 16})
        assert [o.data for o in outputs] == [f"echo: {q}" for q in questions]
        assert responder.faults > 5


@pytest.mark.parametrize("kind", ["openai", "chatopenai"])
def test_fit_under_five_percent_faults_loses_no_item(kind, tmp_path):
    responder = FaultyEcho(0.05, seed=11)
    with StdlibServer(responder) as server:
        model = make_client(kind, server, retry=PATIENT)
        system = Variable("Answer.", role="system prompt", requires_grad=True)
        chain = ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{q}")])
        data = [{"q": f"{i}+{i}?", "answer": str(2 * i)} for i in range(40)]
        result = fit(
            chain, data[:32], data[32:], metric=lambda ex, pred: 0.0, optimizer_model=model,
            backward_model=model, batch_size=8, progress=False,
            checkpoint_path=tmp_path / "run.json",
        )
        steps = result.history["steps"]
        assert len(steps) == 4
        assert all(s["errors"] == 0 and s.get("backward_errors", 0) == 0 for s in steps), steps
        assert all(s["feedback_items"] == 8 for s in steps)
        assert all(p["status"] == "updated" for s in steps for p in s["params"]), steps
        assert responder.faults > 3


def test_dspy_lm_shares_the_retry_policy():
    dspy = pytest.importorskip("dspy")
    from afnio_langchain.models import as_model_client

    with StdlibServer(storm) as server:
        lm = dspy.LM(f"openai/{MODEL}", api_base=server.base_url, api_key=KEY, cache=False)
        client = as_model_client(lm)
        client.retry = RetryPolicy(3, initial_wait=0.001, max_wait=0.01)
        with pytest.raises(Exception, match="503|overloaded|ServiceUnavailable"):
            asyncio.run(client.acomplete([{"role": "user", "content": "hi"}]))
        assert server.count() == 3


def test_through_a_dspy_lm_the_body_faults_behave_as_dspy_itself_reads_them():
    """docs/reliability.md: DSPy's engine reads a dspy.LM's replies, so a non-JSON 200
    surfaces at once as its LMProviderError, as through a plain dspy.LM."""
    dspy = pytest.importorskip("dspy")
    from dspy.utils import exceptions as dspy_errors

    from afnio_langchain.models import as_model_client

    reply = Reply(body=b"<html>bad gateway</html>")
    with StdlibServer(lambda _request: reply) as server:
        lm = dspy.LM(f"openai/{MODEL}", api_base=server.base_url, api_key=KEY, cache=False)
        client = as_model_client(lm)
        client.retry = RetryPolicy(3, initial_wait=0.001, max_wait=0.01)
        with pytest.raises(dspy_errors.LMProviderError):
            asyncio.run(client.acomplete([{"role": "user", "content": "hi"}]))
        assert server.count() == 1


NO_CHOICES = Reply(body={"id": "x", "object": "chat.completion", "model": MODEL, "choices": []})


def test_through_a_dspy_lm_a_reply_without_choices_is_retried_not_read_as_empty():
    """DSPy reads ``"choices": []`` as an empty answer with finish reason ``stop``; the
    other paths retry it as malformed, and so must a dspy.LM (an empty forward answer
    would flow on into the graph as if the model had said nothing)."""
    dspy = pytest.importorskip("dspy")
    from afnio_langchain.models import MalformedReplyError, as_model_client

    with StdlibServer(lambda _request: NO_CHOICES) as server:
        lm = dspy.LM(f"openai/{MODEL}", api_base=server.base_url, api_key=KEY, cache=False)
        client = as_model_client(lm)
        client.retry = RetryPolicy(3, initial_wait=0.001, max_wait=0.01)
        with track_usage() as usage, pytest.raises(MalformedReplyError, match="without choices"):
            asyncio.run(client.acomplete([{"role": "user", "content": "hi"}]))
        assert server.count() == 3
        assert usage.total().retries == 2

    replies = iter([NO_CHOICES])
    with StdlibServer(lambda _request: next(replies, Reply(body=completion("Paris.")))) as server:
        lm = dspy.LM(f"openai/{MODEL}", api_base=server.base_url, api_key=KEY, cache=False)
        client = as_model_client(lm)
        client.retry = RetryPolicy(3, initial_wait=0.001, max_wait=0.01)
        assert asyncio.run(client.acomplete([{"role": "user", "content": "hi"}])).text == "Paris."
        assert server.count() == 2


def test_a_reply_without_choices_in_dspys_cache_is_not_replayed(tmp_path, monkeypatch):
    """With DSPy's response cache on, the first reply without choices is stored; each
    retry and each later identical call must reach the server instead of replaying it."""
    dspy = pytest.importorskip("dspy")
    from afnio_langchain.models import as_model_client

    monkeypatch.setattr(dspy, "cache", dspy.clients.Cache(
        enable_disk_cache=False, enable_memory_cache=True,
        disk_cache_dir=str(tmp_path), memory_max_entries=100,
    ))
    replies = iter([NO_CHOICES])
    with StdlibServer(lambda _request: next(replies, Reply(body=completion("Paris.")))) as server:
        lm = dspy.LM(f"openai/{MODEL}", api_base=server.base_url, api_key=KEY, cache=True)
        client = as_model_client(lm)
        client.retry = RetryPolicy(3, initial_wait=0.001, max_wait=0.01)
        messages = [{"role": "user", "content": "hi"}]
        assert asyncio.run(client.acomplete(messages)).text == "Paris."
        assert asyncio.run(client.acomplete(messages)).text == "Paris."
        assert server.count() == 3


def _memory_cache(monkeypatch, tmp_path, dspy):
    monkeypatch.setattr(dspy, "cache", dspy.clients.Cache(
        enable_disk_cache=False, enable_memory_cache=True,
        disk_cache_dir=str(tmp_path), memory_max_entries=100,
    ))


def test_through_a_dspy_lm_a_reply_without_usage_is_a_call_not_a_cache_hit(tmp_path, monkeypatch):
    """A provider that sends no ``usage`` block still served the call: it counts
    towards ``max_calls`` budgets. Only DSPy's cache answering is a cache hit."""
    dspy = pytest.importorskip("dspy")
    from afnio_langchain.models import as_model_client

    _memory_cache(monkeypatch, tmp_path, dspy)
    body = completion("Paris.")
    del body["usage"]
    with StdlibServer(lambda _request: Reply(body=body)) as server:
        for cache in (False, True):
            lm = dspy.LM(f"openai/{MODEL}", api_base=server.base_url, api_key=KEY, cache=cache)
            client = as_model_client(lm)
            with track_usage() as usage:
                for _ in range(2):
                    assert asyncio.run(client.acomplete([{"role": "user", "content": "hi"}])).text == "Paris."
            total = usage.total()
            assert (total.calls, total.cache_hits) == ((2, 0) if not cache else (1, 1)), cache
        assert server.count() == 3


def test_through_a_dspy_lm_the_providers_finish_reason_is_kept(tmp_path):
    """DSPy maps a finish reason it does not know (a gateway's ``"error"``) to
    ``"stop"``; the package reads the provider's, so a gradient or proposal that ended
    that way is re-asked as on the other paths instead of being taken as complete."""
    dspy = pytest.importorskip("dspy")
    from afnio_langchain.models import as_model_client

    reply = Reply(body=completion('{"var_1": "Be brief."}', finish_reason="error"))
    with StdlibServer(lambda _request: reply) as server:
        lm = dspy.LM(f"openai/{MODEL}", api_base=server.base_url, api_key=KEY, cache=False)
        client = as_model_client(lm)
        completion_ = asyncio.run(client.acomplete([{"role": "user", "content": "hi"}]))
        assert completion_.finish_reason == "error"
        question = Variable("2+2?", requires_grad=True)
        answer = ChatCompletion.apply(client, [{"role": "user", "content": [question]}],
                                      backward_model=client)
        with pytest.raises(BackwardError, match="finish reason 'error'"):
            answer.backward("Wrong.")
        assert not question.grad


def test_through_a_dspy_lm_its_timeout_bounds_a_trickling_reply():
    dspy = pytest.importorskip("dspy")
    from afnio_langchain.models import as_model_client

    body = json.dumps(completion("The answer.")).encode()
    trickle = Reply(pieces=[body[i : i + 1] for i in range(len(body))], delay=0.03)
    with StdlibServer(lambda _request: trickle) as server:
        lm = dspy.LM(f"openai/{MODEL}", api_base=server.base_url, api_key=KEY, cache=False,
                     timeout=0.4)
        client = as_model_client(lm)
        client.retry = RetryPolicy(3, initial_wait=0.001, max_wait=0.01)
        assert client.attempt_timeout() == pytest.approx(0.4 * 1.1 + 0.05)
        began = time.monotonic()
        with pytest.raises(Exception, match=r"(?i)timed? ?out|deadline"):
            asyncio.run(client.acomplete([{"role": "user", "content": "hi"}]))
        assert time.monotonic() - began < 4.0  # three attempts, not the ~7 s trickle


@pytest.mark.parametrize("client_kind", CLIENTS)
def test_a_bad_request_for_another_reason_keeps_json_mode_and_fails_at_once(client_kind):
    """A 400 that says the request is too long is no refusal of JSON mode: without
    JSON mode it would fail the same way. It surfaces after one request, and later
    structured requests still carry the JSON schema."""
    from afnio_langchain.models import JsonSchema

    too_long = Reply(status=400, body={"error": {
        "message": "This model's maximum context length is 8192 tokens.",
        "type": "invalid_request_error", "code": "context_length_exceeded"}})
    replies = iter([too_long])
    schema = JsonSchema("feedback", {"type": "object", "properties": {"var_1": {"type": "string"}},
                                     "required": ["var_1"], "additionalProperties": False})
    with StdlibServer(lambda _request: next(replies, Reply(body=completion('{"var_1": "ok"}')))) as server:
        client = make_client(client_kind, server)
        messages = [{"role": "user", "content": "Give feedback."}]
        with track_usage() as usage, pytest.raises(Exception, match="maximum context length"):
            asyncio.run(client.acomplete(messages, purpose="backward", json_schema=schema))
        assert server.count() == 1
        assert usage.total().failures == 1
        asyncio.run(client.acomplete(messages, purpose="backward", json_schema=schema))
        assert server.requests[-1].body["response_format"]["type"] == "json_schema"
