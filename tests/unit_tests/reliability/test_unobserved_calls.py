"""A ``ChatOpenAI`` call that nothing observes skips langchain-core's run, and gives back
what the run gives back; anything that would observe the run keeps it.

``models/_unobserved_call.py`` sends such a call to the model's own ``_agenerate``
(LangChain's callback managers, start/end events and cache checks cost as much CPU per
call as the request). These tests pin, against the independent stdlib server, that the
reply, usage, finish reason and metadata are those of the run, and that a callback in
the config or on the model, a run collector, an LLM cache, a rate limiter, streaming,
v1 output and a subclass that overrides the run each keep LangChain's run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.globals import set_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.rate_limiters import InMemoryRateLimiter
from langchain_core.tracers.context import collect_runs
from langchain_openai import ChatOpenAI

from afnio_langchain.models import JsonSchema, LangChainChatModelClient

from ._stdlib_server import Reply, StdlibServer, two_plus_two
from .conftest import FAST, KEY, MODEL

MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 2 + 2?"},
]


@pytest.fixture
def server():
    with StdlibServer(two_plus_two) as running:
        yield running


@pytest.fixture
def runs(monkeypatch) -> list[str]:
    """Model names of the calls that went through ``BaseChatModel.agenerate``."""
    seen: list[str] = []
    original = BaseChatModel.agenerate

    async def counted(self, *args: Any, **kwargs: Any) -> Any:
        seen.append(type(self).__name__)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(BaseChatModel, "agenerate", counted)
    return seen


@pytest.fixture
def no_global_cache():
    set_llm_cache(None)
    yield
    set_llm_cache(None)


def _model(server: StdlibServer, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=server.base_url, api_key=KEY, model=MODEL, timeout=5, **options)


def _call(model: BaseChatModel, **params: Any) -> Any:
    client = LangChainChatModelClient(model, retry=FAST, json_mode=params.pop("json_mode", False))
    return asyncio.run(client.acomplete(MESSAGES, **params))


class _Quiet(BaseCallbackHandler):
    """A handler that records nothing: its presence alone keeps LangChain's run."""


def _comparable(completion_: Any) -> dict[str, Any]:
    reply = completion_.raw
    metadata = dict(reply.response_metadata)
    # The server's Date header changes from one second to the next.
    metadata["headers"] = {k: v for k, v in metadata.get("headers", {}).items() if k != "date"}
    return {
        "text": completion_.text,
        "model": completion_.model,
        "tokens": (completion_.input_tokens, completion_.output_tokens),
        "cached": completion_.cached_input_tokens,
        "finish": completion_.finish_reason,
        "metadata": metadata,
        "usage": reply.usage_metadata,
        "type": type(reply).__name__,
    }


@pytest.mark.parametrize("json_mode", [False, True])
def test_an_unobserved_call_gives_back_what_the_run_gives(server, runs, no_global_cache, json_mode):
    options = {"include_response_headers": True}
    params: dict[str, Any] = {"json_mode": json_mode}
    if json_mode:
        params["json_schema"] = JsonSchema("answer", {"type": "object", "properties": {}})
    quiet = _call(_model(server, **options), **dict(params))
    assert runs == []
    observed = {"callbacks": [_Quiet()]}
    with_run = _call(_model(server, **options), config=observed, **dict(params))
    assert runs == ["ChatOpenAI"]
    assert _comparable(quiet) == _comparable(with_run)
    assert quiet.cached_input_tokens == 32 and quiet.finish_reason == "stop"
    assert quiet.raw.response_metadata["headers"]["x-request-id"] == "req-9"
    assert server.requests[0].body == server.requests[1].body
    assert quiet.raw.response_metadata["system_fingerprint"] == "fp-1"


def test_a_callback_in_the_config_sees_the_run(server, runs, no_global_cache):
    class Seen(BaseCallbackHandler):
        events: list[str] = []

        def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
            self.events.append(kwargs["metadata"]["afnio_purpose"])

    _call(_model(server), config={"callbacks": [Seen()]})
    assert runs == ["ChatOpenAI"] and Seen.events == ["forward"]


def test_a_callback_on_the_model_keeps_the_run(server, runs, no_global_cache):
    _call(_model(server, callbacks=[_Quiet()]))
    assert runs == ["ChatOpenAI"]


def test_a_run_collector_records_the_call(server, runs, no_global_cache):
    with collect_runs() as collector:
        _call(_model(server))
    assert runs == ["ChatOpenAI"]
    assert [run.run_type for run in collector.traced_runs] == ["llm"]


def test_an_llm_cache_keeps_the_run_and_answers_the_repeat(server, runs, no_global_cache):
    set_llm_cache(InMemoryCache())
    model = _model(server)
    first, second = _call(model), _call(model)
    assert len(server.requests) == 1 and second.from_cache and not first.from_cache
    assert runs == ["ChatOpenAI", "ChatOpenAI"]


def test_backward_calls_skip_the_run_even_with_a_cache_set(server, runs, no_global_cache):
    """Only forward calls are cached (``models/_cache.py``): the others ask for no cache,
    so nothing observes their run."""
    set_llm_cache(InMemoryCache())
    _call(_model(server), purpose="backward")
    assert runs == []


def test_a_rate_limiter_still_paces_the_call(server, runs, no_global_cache):
    limiter = InMemoryRateLimiter(requests_per_second=100, check_every_n_seconds=0.001)
    _call(_model(server, rate_limiter=limiter))
    assert runs == ["ChatOpenAI"]


@pytest.mark.parametrize("options", [{"streaming": True}, {"output_version": "v1"}])
def test_streaming_and_v1_output_keep_the_run(server, runs, no_global_cache, options):
    server.handler = lambda request: (
        Reply(
            body=b'data: {"id":"c","object":"chat.completion.chunk","created":1,'
            b'"model":"test-model","choices":[{"index":0,"delta":{"content":"4"},'
            b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
            content_type="text/event-stream",
        )
        if request.streaming
        else two_plus_two(request)
    )
    reply = _call(_model(server, **options))
    assert reply.text == "4" and runs == ["ChatOpenAI"]


def test_a_subclass_that_overrides_the_run_keeps_it(server, runs, no_global_cache):
    calls: list[str] = []

    class Audited(ChatOpenAI):
        async def ainvoke(self, *args: Any, **kwargs: Any) -> Any:
            calls.append("ainvoke")
            return await super().ainvoke(*args, **kwargs)

    reply = _call(Audited(base_url=server.base_url, api_key=KEY, model=MODEL, timeout=5))
    assert reply.text == "4" and calls == ["ainvoke"] and runs == ["Audited"]


def test_an_unobserved_call_keeps_the_model_s_own_errors_and_retries(server, runs, no_global_cache):
    replies = iter([Reply(status=500, body={"error": {"message": f"boom {KEY}"}})])
    server.handler = lambda request: next(replies, None) or two_plus_two(request)
    reply = _call(_model(server))
    assert reply.text == "4" and len(server.requests) == 2 and runs == []


def test_a_traced_chain_of_chat_openai_steps_records_each_model_run(server, runs, no_global_cache):
    """Tracing a composed chain (the user's callbacks reach the steps through LangChain's
    child config) keeps each model run, nested under its step; the same chain run
    without callbacks makes the same requests and records nothing."""
    from afnio_langchain import Variable
    from afnio_langchain.runnables import ChatCompletionRunnable

    model = _model(server)
    prompt = Variable("Answer briefly.", role="system prompt", requires_grad=True)
    steps = [
        ChatCompletionRunnable(model=model, messages=[("system", prompt), ("user", text)])
        for text in ("{question}", "Check: {draft}")
    ]
    chain = steps[0] | steps[1]
    plain = chain.invoke({"question": "What is 2 + 2?"})
    assert runs == [] and len(server.requests) == 2
    with collect_runs() as collector:
        traced = chain.invoke({"question": "What is 2 + 2?"})
    assert plain.data == traced.data == "4"
    assert runs == ["ChatOpenAI", "ChatOpenAI"]
    [root] = collector.traced_runs
    steps_runs = root.child_runs
    assert len(steps_runs) == 2
    assert [[c.run_type for c in step.child_runs] for step in steps_runs] == [["llm"], ["llm"]]
    assert [r.body for r in server.requests[:2]] == [r.body for r in server.requests[2:]]


@pytest.fixture
def handler_checks(monkeypatch) -> list[int]:
    """One entry per callback configuration LangChain's handler check makes."""
    from langchain_core.callbacks import AsyncCallbackManager

    made: list[int] = []
    original = AsyncCallbackManager.configure.__func__

    def counted(cls: Any, *args: Any, **kwargs: Any) -> Any:
        made.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AsyncCallbackManager, "configure", classmethod(counted))
    return made


def _minibatch(model: BaseChatModel, items: int, **options: Any) -> Any:
    from afnio_langchain import Variable
    from afnio_langchain.autodiff import ChatCompletion

    client = LangChainChatModelClient(model, retry=FAST, json_mode=False)
    system = Variable("Answer briefly.", role="system prompt", requires_grad=True)
    messages = [{"role": "system", "content": [system]}, {"role": "user", "content": ["{q}"]}]
    questions = [f"What is 2 + {i}?" for i in range(items)]
    return ChatCompletion.apply(client, messages, inputs={"q": questions}, **options)


def test_the_items_of_a_minibatch_share_one_handler_check(
    server, runs, no_global_cache, handler_checks
):
    """As LangChain's batch ``agenerate`` configures its callbacks once for all its
    prompts; separate calls each check."""
    reply = _minibatch(_model(server), 6)
    assert reply.data == ["4"] * 6 and len(server.requests) == 6
    assert handler_checks == [1] and runs == []
    for _ in range(3):
        _call(_model(server))
    assert handler_checks == [1] * 4 and runs == []


def test_a_minibatch_whose_calls_are_observed_keeps_every_item_s_run(
    server, runs, no_global_cache
):
    with collect_runs() as collector:
        reply = _minibatch(_model(server), 4)
    assert reply.data == ["4"] * 4 and runs == ["ChatOpenAI"] * 4
    assert [run.run_type for run in collector.traced_runs] == ["llm"] * 4
    _minibatch(_model(server, callbacks=[_Quiet()]), 3)
    assert runs == ["ChatOpenAI"] * 7


def test_tasks_started_together_share_one_dict_that_ends_with_them():
    from afnio_langchain._aio import start_each, started_together

    async def read() -> Any:
        return started_together()

    async def item() -> Any:
        inner = await start_each([read(), read()])
        return started_together(), list(await asyncio.gather(*inner))

    async def main() -> Any:
        outer = await start_each([item(), item()])
        await asyncio.gather(*outer)
        return started_together(), [t.result() for t in outer]

    after, results = asyncio.run(main())
    (first, first_inner), (second, second_inner) = results
    assert after is None and first is second and isinstance(first, dict)
    assert first_inner[0] is first_inner[1] and first_inner[0] is not first
    assert second_inner[0] is not first_inner[0]
