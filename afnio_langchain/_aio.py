"""Running coroutines from synchronous code, also inside a running event loop.

LangChain users call sync entry points from notebooks (a running loop) and from
thread pools (no loop). Both must work, and contextvars (grad mode, usage scopes,
LangChain's run tree) must follow the call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(coro_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``coro_factory()`` to completion and return its result.

    Without a running loop in this thread the coroutine runs under ``asyncio.run``.
    Inside a running loop (a notebook, an async framework) it runs on a fresh loop in
    a worker thread, with a copy of the caller's contextvars, while the caller waits.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())
    context = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(context.run, lambda: asyncio.run(coro_factory()))
        return future.result()


async def run_in_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking callable in the default executor, carrying contextvars."""
    return await asyncio.to_thread(func, *args, **kwargs)


async def gather_all(awaitables: list[Awaitable[T]]) -> list[T]:
    """Await all, and if one fails cancel the rest before re-raising its error."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
