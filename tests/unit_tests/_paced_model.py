"""A scripted model for tests of minibatch pipelines: stage ``k`` (its system prompt
says "You are stage k.") answers item ``i`` (its question is ``q<i>``, or the stage
before's answer) with ``s<k>-i<i>`` and writes the feedback ``fb s<k> i<i>``; the calls
of one kind take the time ``delay(stage, item)`` gives, fail where ``fail`` lists their
``(stage, item)``, and have their spans logged in ``spans``. A call ``hold`` names waits
until its predicate is true of ``spans`` (or ``HOLD_LIMIT`` seconds pass), so a test
of what runs while that call is slow need not guess how slow it must be."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from afnio_langchain.testing import ScriptedChatModel

HOLD_LIMIT = 10.0
_ITEM = re.compile(r"\b(?:q|s\d-i)(\d+)\b")
_STAGE = re.compile(r"You are stage (\d)")


async def hold_until(ready: Any, limit: float = HOLD_LIMIT) -> None:
    """Wait until ``ready()`` is true, or for ``limit`` seconds: a slow call held while
    the test's other calls go past it, with no delay guessed."""
    deadline = time.monotonic() + limit
    while not ready() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


def stage_and_item(text: str) -> tuple[int, int]:
    """The (stage, item) a request is about, from its text."""
    return int(_STAGE.findall(text)[0]), int(_ITEM.findall(text)[-1])


def _is_backward(text: str) -> bool:
    return "feedback" in text.lower() and "var_" in text


class Paced(ScriptedChatModel):
    """See the module doc; ``paced`` is ``"forward"`` or ``"backward"``."""

    def __init__(
        self,
        paced: str,
        delay: Any = None,
        fail: frozenset = frozenset(),
        hold: dict | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            forward=lambda r: "s{}-i{}".format(*stage_and_item(r)),
            feedback=lambda r: "fb s{} i{}".format(*stage_and_item(r)),
            **kwargs,
        )
        object.__setattr__(self, "_paced", paced)
        object.__setattr__(self, "_delay", delay or (lambda stage, item: 0.0))
        object.__setattr__(self, "_fail", set(fail))
        object.__setattr__(self, "_hold", dict(hold or {}))
        object.__setattr__(self, "spans", {})

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):
        text = "\n".join(str(m.content) for m in messages)
        backward = _is_backward(text)
        optimizer = "improved" in text
        paced = (self._paced == "backward") == backward and not optimizer
        key = stage_and_item(text) if paced else None
        began = time.perf_counter()
        if key is not None:
            if key in self._fail:
                raise ValueError(f"the model refuses stage {key[0]} item {key[1]}")
            await asyncio.sleep(self._delay(*key))
            if key in self._hold:
                ready = self._hold[key]
                await hold_until(lambda: ready(self.spans))
        result = await super()._agenerate(messages, stop, run_manager, **kwargs)
        if key is not None:
            self.spans[key] = (began, time.perf_counter())
        return result
