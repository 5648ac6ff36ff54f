"""One client per running event loop (and :class:`LoopValues`: cheap state per loop).

httpx connection pools belong to the loop that opened them: a pool opened by a sync
call (which runs on the package's background loop) breaks an ``await`` on the
caller's own loop ("bound to a different event loop"), and a pool left open when
``asyncio.run`` ends breaks the next run. Adapters keep one client per loop here; each
is closed when its loop shuts down its async generators (``asyncio.run`` does), or,
when its owner (an adapter, a model) is collected first, by a task on its loop.

The open clients are held apart from their owner (by the owner's finalizer, until
their close is scheduled): an owner is often collected as part of a reference cycle
(an exception's traceback holds the frames that held it), and a client collected
with it would be finalised before any close could run (aiohttp: "Unclosed client
session").
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

from afnio_langchain._aio import CLOSING_TASK_NAME

T = TypeVar("T")


class LoopValues(Generic[T]):
    """A value per event loop, built on first use there and dropped with its loop, for
    state with nothing to close (the attempts' timer, the concurrency slots). Read on
    every model call: the last loop's value is found without a ``WeakKeyDictionary``
    lookup, which allocates a weak reference each time. Call :meth:`get` on the
    loop's own thread.

    Example:
        >>> import asyncio
        >>> from afnio_langchain.models._per_loop import LoopValues
        >>> counters = LoopValues(lambda loop: [0])
        >>> async def count():
        ...     counter = counters.get(asyncio.get_running_loop())
        ...     counter[0] += 1
        ...     return counters.get(asyncio.get_running_loop())[0]
        >>> asyncio.run(count()), asyncio.run(count())
        (1, 1)
    """

    __slots__ = ("_build", "_values", "_last")

    def __init__(self, build: Callable[[asyncio.AbstractEventLoop], T]) -> None:
        self._build = build
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop], T] | None = None

    def get(self, loop: asyncio.AbstractEventLoop) -> T:
        """The value of ``loop``."""
        last = self._last  # one read: another loop's thread may replace it
        if last is not None and last[0]() is loop:
            return last[1]
        value = self._values.get(loop)
        if value is None:
            value = self._values[loop] = self._build(loop)
        self._last = (weakref.ref(loop), value)
        return value


class PerLoop(Generic[T]):
    """A value per running event loop, built on first use there.

    Args:
        build: Makes the value for the running loop.
        close: Awaited with the value when its loop shuts down (None: nothing to close).

    Example:
        >>> import asyncio
        >>> from afnio_langchain.models._per_loop import PerLoop
        >>> built = []
        >>> pool = PerLoop(lambda: built.append(1) or len(built))
        >>> async def twice():
        ...     return await pool.get(), await pool.get()
        >>> asyncio.run(twice()), asyncio.run(twice())
        ((1, 1), (2, 2))
    """

    def __init__(
        self, build: Callable[[], T], close: Callable[[T], Awaitable[object]] | None = None
    ) -> None:
        self._build = build
        self._close = close
        # loop -> (value, the async generator that closes it; kept alive with it, since
        # a collected generator would be finalised, closing the value, at once)
        self._values: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[T, AsyncIterator[None] | None]
        ] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        weakref.finalize(self, _close_later, self._values)

    async def get(self) -> T:
        """The value for the running loop."""
        loop = asyncio.get_running_loop()
        entry = self._values.get(loop)
        if entry is not None:
            return entry[0]
        with self._lock:
            entry = self._values.get(loop)
            fresh = entry is None
            if entry is None:
                value = self._build()
                closer = None if self._close is None else _close_with_loop(value, self._close)
                entry = self._values[loop] = (value, closer)
        if fresh and entry[1] is not None:
            await entry[1].__anext__()  # registered with the loop: runs at its shutdown
        return entry[0]


async def _close_with_loop(value: T, close: Callable[[T], Awaitable[object]]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await close(value)


def _close_later(values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple]) -> None:
    """The owner is gone: close each of its values on the loop it was opened on."""
    for loop, (_, closer) in list(values.items()):
        if closer is None or loop.is_closed():
            continue
        try:
            loop.call_soon_threadsafe(_start_closing, loop, closer)
        except RuntimeError:  # the loop closed meanwhile
            pass


def _start_closing(loop: asyncio.AbstractEventLoop, closer: AsyncIterator[None]) -> None:
    loop.create_task(closer.aclose(), name=CLOSING_TASK_NAME)  # type: ignore[attr-defined]
