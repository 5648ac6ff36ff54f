"""The concurrency limit on model calls.

Forward minibatches, backward nodes and optimizer steps all fan out into model calls;
one semaphore per event loop caps how many are in flight. The limit is a contextvar,
so ``with concurrency_limit(4):`` applies to everything started inside the block.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import weakref
from collections.abc import AsyncIterator, Iterator

DEFAULT_MAX_CONCURRENCY = int(os.environ.get("AFNIO_MAX_CONCURRENCY", "16"))

_LIMIT: contextvars.ContextVar[int] = contextvars.ContextVar(
    "afnio_max_concurrency", default=DEFAULT_MAX_CONCURRENCY
)
_SEMAPHORES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


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


def call_slots() -> asyncio.Semaphore:
    """The semaphore of the current limit on the running loop: ``async with`` it to
    hold one slot for a model call (cheaper on the hot path than :func:`call_slot`)."""
    loop = asyncio.get_running_loop()
    per_loop = _SEMAPHORES.get(loop)
    if per_loop is None:
        per_loop = _SEMAPHORES[loop] = {}
    limit = _LIMIT.get()
    semaphore = per_loop.get(limit)
    if semaphore is None:
        semaphore = per_loop[limit] = asyncio.Semaphore(limit)
    return semaphore


@contextlib.asynccontextmanager
async def call_slot() -> AsyncIterator[None]:
    """Hold one of the current limit's slots for the duration of a model call."""
    async with call_slots():
        yield
