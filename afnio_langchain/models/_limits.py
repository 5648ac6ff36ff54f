"""The concurrency limit on model calls.

Forward minibatches, backward nodes and optimizer steps all fan out into model calls;
one set of :class:`CallSlots` per event loop caps how many are in flight. The limit is a
contextvar, so ``with concurrency_limit(4):`` applies to everything started inside the
block.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import os
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

from afnio_langchain.models._per_loop import LoopValues

DEFAULT_MAX_CONCURRENCY = int(os.environ.get("AFNIO_MAX_CONCURRENCY", "16"))

_LIMIT: contextvars.ContextVar[int] = contextvars.ContextVar(
    "afnio_max_concurrency", default=DEFAULT_MAX_CONCURRENCY
)


class _Ready:
    """An awaitable that is already done: ``await`` returns None without suspending."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]


_READY = _Ready()


class CallSlots:
    """A first-come, first-served limit of ``limit`` model calls in flight at once,
    held with ``async with``.

    ``asyncio.Semaphore`` does the same, but its ``async with`` starts two coroutines
    (``__aenter__``, ``acquire``) and a third on exit: 1.05 µs more than an empty
    coroutine, against 0.69 here (docs/performance.md, round fourteen), on every model
    call. Here a free slot is taken, and given back, without one; only a
    call that has to wait starts a coroutine. A freed slot is handed straight to the
    longest waiter, so a newcomer never overtakes the queue.

    Example:
        >>> import asyncio
        >>> from afnio_langchain.models._limits import CallSlots
        >>> async def main():
        ...     slots, running, most = CallSlots(2), 0, 0
        ...     async def call():
        ...         nonlocal running, most
        ...         async with slots:
        ...             running += 1
        ...             most = max(most, running)
        ...             await asyncio.sleep(0.01)
        ...             running -= 1
        ...     await asyncio.gather(*[call() for _ in range(6)])
        ...     return most, slots.free
        >>> asyncio.run(main())
        (2, 2)
    """

    __slots__ = ("free", "_waiters")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
        self.free = limit
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def locked(self) -> bool:
        """True when a call would have to wait for a slot."""
        return self.free == 0

    async def acquire(self) -> bool:
        """Take a slot, waiting for one if none is free (as ``asyncio.Semaphore``)."""
        await self.__aenter__()
        return True

    def release(self) -> None:
        """Give a slot back: to the longest waiter if there is one."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to it: ``free`` is unchanged
                return
        self.free += 1

    def __aenter__(self) -> Any:
        if self.free > 0:  # then nobody waits: a freed slot goes to a waiter first
            self.free -= 1
            return _READY
        return self._wait()

    def __aexit__(self, *exc: object) -> Any:
        self.release()
        return _READY

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, then cancelled before using it
            else:
                with contextlib.suppress(ValueError):  # not popped by a release yet
                    self._waiters.remove(waiter)
            raise


_SLOTS: LoopValues[dict[int, CallSlots]] = LoopValues(lambda loop: {})
"""Per event loop: the slots of each limit in use there."""


def get_concurrency_limit() -> int:
    """The number of model calls allowed in flight at once in the current context."""
    return _LIMIT.get()


@contextlib.contextmanager
def concurrency_limit(max_concurrency: int) -> Iterator[None]:
    """Cap concurrent model calls started inside the block.

    Example:
        >>> from afnio_langchain.models import concurrency_limit, get_concurrency_limit
        >>> with concurrency_limit(4):
        ...     get_concurrency_limit()
        4
    """
    if not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise ValueError(f"max_concurrency must be a positive int, got {max_concurrency!r}")
    token = _LIMIT.set(max_concurrency)
    try:
        yield
    finally:
        _LIMIT.reset(token)


def call_slots() -> CallSlots:
    """The slots of the current limit on the running loop: ``async with`` them to
    hold one slot for a model call (cheaper on the hot path than :func:`call_slot`)."""
    per_loop = _SLOTS.get(asyncio.get_running_loop())
    limit = _LIMIT.get()
    slots = per_loop.get(limit)
    if slots is None:
        slots = per_loop[limit] = CallSlots(limit)
    return slots


@contextlib.asynccontextmanager
async def call_slot() -> AsyncIterator[None]:
    """Hold one of the current limit's slots for the duration of a model call."""
    async with call_slots():
        yield
