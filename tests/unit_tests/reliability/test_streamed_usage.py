"""A streamed reply's usage, as the provider reports it in the stream's last chunk, is
counted like a whole reply's: prompt and completion tokens, and the prompt tokens read
from the provider's prompt cache (``prompt_tokens_details.cached_tokens``).

Driven through LangChain's ``ChatOpenAI`` (``stream_usage=True``, which asks for the
usage chunk) against the independent stdlib server."""

from __future__ import annotations

from typing import Any

from langchain_openai import ChatOpenAI

from afnio_langchain import Variable, track_usage
from afnio_langchain.models import LangChainChatModelClient
from afnio_langchain.runnables import ChatCompletionRunnable

from ._stdlib_server import CACHED_USAGE, Reply, Request, StdlibServer, sse
from .conftest import FAST, KEY, MODEL

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]


def _streamed_four(request: Request) -> Reply:
    assert request.streaming
    assert request.body.get("stream_options") == {"include_usage": True}
    return sse(["The answer ", "is 4."], usage=CACHED_USAGE)


def _model(server: StdlibServer) -> ChatOpenAI:
    return ChatOpenAI(base_url=server.base_url, api_key=KEY, model=MODEL, timeout=5,
                      stream_usage=True)


async def test_a_streamed_reply_counts_the_provider_cached_prompt_tokens():
    with StdlibServer(_streamed_four) as server:
        client = LangChainChatModelClient(_model(server), retry=FAST)
        with track_usage() as usage:
            chunks = [chunk async for chunk in client.astream(MESSAGES)]
    assert "".join(chunks) == "The answer is 4."
    counts = usage.by_purpose()["forward"]
    assert (counts.calls, counts.input_tokens, counts.output_tokens) == (1, 40, 5)
    assert counts.cached_input_tokens == 32


async def test_a_streamed_pipeline_step_reports_cached_tokens_as_a_whole_reply_does():
    def whole_or_streamed(request: Request) -> Reply:
        if request.streaming:
            return _streamed_four(request)
        return Reply(body={
            "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"},
                         "finish_reason": "stop"}],
            "usage": CACHED_USAGE,
        })

    with StdlibServer(whole_or_streamed) as server:
        step = ChatCompletionRunnable(
            model=_model(server),
            messages=[("system", Variable("Be brief.", requires_grad=True)), ("user", "{q}")],
        )
        totals: dict[str, Any] = {}
        for way in ("ainvoke", "astream"):
            with track_usage() as usage:
                if way == "ainvoke":
                    await step.ainvoke({"q": "2+2?"})
                else:
                    _ = [chunk async for chunk in step.astream({"q": "2+2?"})]
            totals[way] = usage.by_purpose()["forward"]
    assert totals["astream"].cached_input_tokens == totals["ainvoke"].cached_input_tokens == 32
    assert totals["astream"].input_tokens == totals["ainvoke"].input_tokens == 40
