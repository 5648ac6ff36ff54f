"""The deadlines of model-call attempts: one timer per event loop for all of them.

Every attempt has a deadline (600 s when nothing sets one), and nearly every attempt
ends long before it. A timer per attempt (``loop.call_at``, or ``asyncio.timeout``)
costs a timer handle, a push onto the loop's heap, a cancel and a later pop, on every
model call's hot path (``benchmarks/``). Here a loop's attempts share one timer, set for
the earliest deadline: watching and unwatching an attempt is a dict insert and delete,
and the timer is only moved when a new deadline comes before it.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from afnio_langchain.models._per_loop import LoopValues

__all__ = ["Deadline", "watchdog"]


class Deadline:
    """One attempt's deadline: cancels the attempt's task when it passes."""

    __slots__ = ("task", "expired")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.expired = False

    def expire(self) -> None:
        self.expired = True
        self.task.cancel()


class Watchdog:
    """The deadlines of one event loop's attempts, behind one timer.

    Example:
        >>> import asyncio
        >>> from afnio_langchain.models._deadlines import Deadline, watchdog
        >>> async def main():
        ...     loop = asyncio.get_running_loop()
        ...     sleeper = asyncio.ensure_future(asyncio.sleep(10))
        ...     deadline = Deadline(sleeper)
        ...     watchdog(loop).watch(deadline, loop.time() + 0.01)
        ...     try:
        ...         await sleeper
        ...     except asyncio.CancelledError:
        ...         return deadline.expired
        >>> asyncio.run(main())
        True
    """

    __slots__ = ("loop", "due", "timer", "timer_at")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.due: dict[Deadline, float] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf

    def watch(self, deadline: Deadline, when: float) -> None:
        """Expire ``deadline`` at loop time ``when`` unless :meth:`unwatch` comes first."""
        self.due[deadline] = when
        if when < self.timer_at:
            self._set_timer(when)

    def unwatch(self, deadline: Deadline) -> None:
        self.due.pop(deadline, None)  # the timer stays: it rechecks when it fires

    def _set_timer(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(when, self._fire)
        self.timer_at = when

    def _fire(self) -> None:
        # The loop runs a timer once its time is reached (to its clock's resolution), so
        # everything due by the timer's own time has passed too.
        fired_at = max(self.timer_at, self.loop.time())
        self.timer, self.timer_at = None, math.inf
        expired = [deadline for deadline, when in self.due.items() if when <= fired_at]
        for deadline in expired:
            del self.due[deadline]
            deadline.expire()
        if self.due:
            self._set_timer(min(self.due.values()))


_WATCHDOGS: LoopValues[Watchdog] = LoopValues(Watchdog)


def watchdog(loop: asyncio.AbstractEventLoop) -> Watchdog:
    """The watchdog of ``loop`` (call it on that loop's thread)."""
    return _WATCHDOGS.get(loop)
