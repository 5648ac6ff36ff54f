"""No paid call repeated: forward calls answered from LangChain's LLM cache
(``set_llm_cache``) on every path, cache hits and provider-cached prompt tokens
counted in usage, the report and the cost; backward and optimizer calls never cached."""

from __future__ import annotations

import json

import httpx2
import openai
import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.globals import set_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from afnio_langchain import ChatCompletionRunnable, Variable
from afnio_langchain.models import OpenAIClient, UsageTracker, as_model_client, track_usage
from afnio_langchain.testing import OpenAICompatServer, ScriptedChatModel
from afnio_langchain.train import Trainer, estimate_cost, exact_match


@pytest.fixture
def llm_cache():
    cache = InMemoryCache()
    set_llm_cache(cache)
    try:
        yield cache
    finally:
        set_llm_cache(None)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- the openai path: the package's own cache layer on LangChain's cache store ------------


async def test_openai_forward_calls_are_answered_from_the_llm_cache(llm_cache):
    with OpenAICompatServer() as server:
        client = OpenAIClient(openai.AsyncOpenAI(base_url=server.base_url, api_key="k"), "m")
        with track_usage() as usage:
            first = await client.acomplete(user("What is 2 + 2?"), temperature=0)
            second = await client.acomplete(user("What is 2 + 2?"), temperature=0)
            other = await client.acomplete(user("What is 2 + 2?"), temperature=1)
        assert server.request_count == 2  # the repeated call never reached the server
    assert second.text == first.text and second.from_cache and not first.from_cache
    assert not other.from_cache  # other completion arguments: another cache entry
    forward = usage.by_purpose()["forward"]
    assert (forward.calls, forward.cache_hits) == (2, 1)
    assert second.input_tokens == second.output_tokens == 0


async def test_backward_and_optimizer_calls_are_never_cached(llm_cache):
    with OpenAICompatServer() as server:
        client = OpenAIClient(openai.AsyncOpenAI(base_url=server.base_url, api_key="k"), "m")
        for purpose in ("backward", "optimizer", "judge"):
            await client.acomplete(user("critique this"), purpose=purpose)
            await client.acomplete(user("critique this"), purpose=purpose)
        assert server.request_count == 6


async def test_cache_false_on_the_client_opts_out(llm_cache):
    with OpenAICompatServer() as server:
        client = OpenAIClient(openai.AsyncOpenAI(base_url=server.base_url, api_key="k"), "m")
        client.cache = False
        await client.acomplete(user("hi"))
        await client.acomplete(user("hi"))
        assert server.request_count == 2


async def test_a_sqlite_cache_outlives_the_client(tmp_path):
    SQLiteCache = pytest.importorskip("langchain_community.cache").SQLiteCache  # noqa: N806
    path = str(tmp_path / "llm-cache.sqlite")
    with OpenAICompatServer() as server:
        for _ in range(2):  # two "runs": a fresh cache object and client each time
            set_llm_cache(SQLiteCache(database_path=path))
            try:
                client = OpenAIClient(openai.AsyncOpenAI(base_url=server.base_url, api_key="k"), "m")
                reply = await client.acomplete(user("Name a colour."))
            finally:
                set_llm_cache(None)
        assert server.request_count == 1
    assert reply.from_cache


async def test_provider_cached_prompt_tokens_are_read_from_openai_usage():
    def handler(request: httpx2.Request) -> httpx2.Response:
        body = {
            "id": "x",
            "object": "chat.completion",
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1200, "completion_tokens": 3, "total_tokens": 1203,
                      "prompt_tokens_details": {"cached_tokens": 1024}},
        }
        return httpx2.Response(200, content=json.dumps(body).encode(),
                               headers={"content-type": "application/json"})

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    client = OpenAIClient(
        openai.AsyncOpenAI(base_url="http://provider.test/v1", api_key="k", http_client=http), "m"
    )
    with track_usage() as usage:
        reply = await client.acomplete(user("long prompt"))
    assert reply.cached_input_tokens == 1024
    counts = usage.by_purpose()["forward"]
    assert (counts.input_tokens, counts.cached_input_tokens) == (1200, 1024)


# -- the LangChain path: LangChain's own cache, hits reported ------------------------------


class CachingUsageModel(BaseChatModel):
    """A plain chat model reporting provider-cached prompt tokens, counting its calls."""

    _log: list = PrivateAttr(default_factory=list)

    @property
    def calls(self) -> int:
        return len(self._log)

    @property
    def _llm_type(self) -> str:
        return "caching-usage"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self._log.append(messages)
        message = AIMessage(
            content=f"reply {self.calls}",
            usage_metadata={
                "input_tokens": 100, "output_tokens": 2, "total_tokens": 102,
                "input_token_details": {"cache_read": 64},
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


async def test_langchain_models_use_their_llm_cache_and_hits_are_counted(llm_cache):
    model = CachingUsageModel()
    client = as_model_client(model)
    with track_usage() as usage:
        first = await client.acomplete(user("hello"))
        second = await client.acomplete(user("hello"))
        await client.acomplete(user("hello"), purpose="backward")
        await client.acomplete(user("hello"), purpose="backward")
    assert model.calls == 3  # one forward call, two backward calls: backward is never cached
    assert second.text == first.text == "reply 1" and second.from_cache
    forward, backward = usage.by_purpose()["forward"], usage.by_purpose()["backward"]
    assert (forward.calls, forward.cache_hits, forward.cached_input_tokens) == (1, 1, 64)
    assert (backward.calls, backward.cache_hits) == (2, 0)


# -- a whole fit run: a rolled-back step's re-validation costs no model call ----------------


def _fit_with_a_repeated_bad_proposal() -> tuple[ScriptedChatModel, UsageTracker]:
    def forward(text: str) -> str:
        return "answer" if "GOOD" in text else "wrong"

    model = ScriptedChatModel(
        forward=forward, feedback="Be exact.", optimizer=["BAD prompt", "BAD prompt", "GOOD"]
    )
    system = Variable("prompt v1", role="system prompt", requires_grad=True)
    chain = ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{question}")])
    data = [{"question": f"question {i}", "answer": "answer"} for i in range(4)]
    trainer = Trainer(
        chain, exact_match, optimizer_model=model, backward_model=model, batch_size=2,
        epochs=2, shuffle=False, evaluate_train=False, progress=False, gate="improve",
    )
    with track_usage() as usage:
        result = trainer.fit(data[:2], data[2:])
    decisions = [s["decision"] for s in result.history["steps"]]
    assert decisions[0].startswith("rolled back") and decisions[1].startswith("rolled back")
    return model, usage


def test_revalidating_an_unchanged_prompt_makes_no_model_call(llm_cache):
    model, usage = _fit_with_a_repeated_bad_proposal()
    validations_of_bad = [c for c in model.calls_of("forward") if "BAD prompt" in c.text]
    assert len(validations_of_bad) == 2  # the first validation only: the second is all hits
    assert usage.by_purpose()["forward"].cache_hits >= 2


def test_the_same_run_without_a_cache_repeats_those_calls():
    model, usage = _fit_with_a_repeated_bad_proposal()
    assert len([c for c in model.calls_of("forward") if "BAD prompt" in c.text]) == 4
    assert usage.by_purpose()["forward"].cache_hits == 0


# -- cost and report -----------------------------------------------------------------------


def test_cached_input_tokens_cost_the_cached_price():
    usage = UsageTracker()
    usage.record("gpt-4o-mini", "backward", input_tokens=1_000_000, cached_input_tokens=500_000)
    assert estimate_cost(usage).total == pytest.approx(0.5 * 0.15 + 0.5 * 0.075)
    two_prices = {"gpt-4o-mini": (0.15, 0.60)}  # no cached price: the input price
    assert estimate_cost(usage, two_prices).total == pytest.approx(0.15)
