"""An agent's model calls are counted as every other call is: the prompt tokens the
provider served from its prompt cache, and a reply LangChain's LLM cache answered as a
cache hit (no call, no tokens). Both agent faces (``AgentRunnable`` and a LangChain
``create_agent`` app tuned through ``TrainablePromptMiddleware``), through ``ChatOpenAI``
against the independent stdlib server, whose replies report
``prompt_tokens_details.cached_tokens``."""

from __future__ import annotations

import pytest
from langchain_openai import ChatOpenAI

from afnio_langchain import Variable, track_usage
from afnio_langchain.agents import AgentRunnable, TrainableAgent, TrainablePromptMiddleware

from ._stdlib_server import CACHED_USAGE, StdlibServer, two_plus_two
from .conftest import KEY, MODEL


def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


def _model(server: StdlibServer) -> ChatOpenAI:
    return ChatOpenAI(base_url=server.base_url, api_key=KEY, model=MODEL, timeout=5,
                      max_retries=0)


def _prompt() -> Variable:
    return Variable("Answer with the number only.", role="system prompt", requires_grad=True)


def _assert_one_cached_call(usage) -> None:
    counts = usage.by_purpose()["forward"]
    assert counts.calls == 1
    assert (counts.input_tokens, counts.output_tokens) == (
        CACHED_USAGE["prompt_tokens"], CACHED_USAGE["completion_tokens"])
    assert counts.cached_input_tokens == CACHED_USAGE["prompt_tokens_details"]["cached_tokens"]


def test_an_agent_runnable_counts_cached_prompt_tokens():
    with StdlibServer(two_plus_two) as server:
        agent = AgentRunnable(model=_model(server), tools=[add], system_prompt=_prompt())
        with track_usage() as usage:
            answer = agent.invoke("What is 2 + 2?")
    assert answer.data == "4"
    _assert_one_cached_call(usage)


def _tuned_app(server: StdlibServer) -> TrainableAgent:
    """A ``create_agent`` app as LangChain's docs write it, tuned by its middleware."""
    agents = pytest.importorskip("langchain.agents")
    middleware = TrainablePromptMiddleware(_prompt())
    app = agents.create_agent(_model(server), tools=[add], middleware=[middleware])
    return TrainableAgent(agent=app, prompt=middleware)


def test_a_tuned_create_agent_app_counts_cached_prompt_tokens():
    with StdlibServer(two_plus_two) as server:
        trainable = _tuned_app(server)
        with track_usage() as usage:
            answer = trainable.invoke("What is 2 + 2?")
    assert answer.data == "4"
    _assert_one_cached_call(usage)


@pytest.fixture
def llm_cache():
    from langchain_core.caches import InMemoryCache
    from langchain_core.globals import set_llm_cache

    set_llm_cache(InMemoryCache())
    yield
    set_llm_cache(None)


def test_an_agent_s_repeated_call_is_answered_by_the_llm_cache_and_counted_as_a_hit(llm_cache):
    with StdlibServer(two_plus_two) as server:
        agent = AgentRunnable(model=_model(server), tools=[add], system_prompt=_prompt())
        with track_usage() as usage:
            first, again = agent.invoke("What is 2 + 2?"), agent.invoke("What is 2 + 2?")
        sent = len(server.requests)
    assert first.data == again.data == "4"
    assert sent == 1  # the repeat never reached the server
    counts = usage.by_purpose()["forward"]
    assert (counts.calls, counts.cache_hits) == (1, 1)
    assert counts.input_tokens == CACHED_USAGE["prompt_tokens"]  # the hit costs no tokens


def test_a_tuned_create_agent_app_counts_llm_cache_hits(llm_cache):
    with StdlibServer(two_plus_two) as server:
        trainable = _tuned_app(server)
        with track_usage() as usage:
            trainable.invoke("What is 2 + 2?")
            trainable.invoke("What is 2 + 2?")
        sent = len(server.requests)
    assert sent == 1
    counts = usage.by_purpose()["forward"]
    assert (counts.calls, counts.cache_hits) == (1, 1)
