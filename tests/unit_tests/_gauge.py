"""Counting calls in progress at once, for tests of concurrency that do not time it:
``Gauge`` is a plain LangChain chat model (not the package's scripted one) that sleeps
``latency`` per call, and :func:`counted_sleep` is the same count for any fake."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult


async def counted_sleep(owner: Any, seconds: float) -> None:
    """Sleep ``seconds`` counted in ``owner.in_flight``; ``owner.peak`` keeps the most
    at once and ``owner.total`` the calls."""
    owner.in_flight += 1
    owner.total += 1
    owner.peak = max(owner.peak, owner.in_flight)
    try:
        await asyncio.sleep(seconds)
    finally:
        owner.in_flight -= 1


class Gauge(BaseChatModel):
    """A plain async chat model that measures how many calls are in flight at once."""

    latency: float = 0.1
    reply: str = "ok"
    in_flight: int = 0
    peak: int = 0
    total: int = 0

    @property
    def _llm_type(self) -> str:
        return "gauge"

    def _generate(self, messages, stop=None, run_manager=None, **kw):  # pragma: no cover
        raise NotImplementedError("async only")

    async def _agenerate(self, messages, stop=None, run_manager=None, **kw):
        await counted_sleep(self, self.latency)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=self.reply))])
