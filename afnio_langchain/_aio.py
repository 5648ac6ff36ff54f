"""Running coroutines from synchronous code, also inside a running event loop.

LangChain users call sync entry points from notebooks (a running loop) and from
thread pools (no loop). Both must work, and contextvars (grad mode, usage scopes,
LangChain's run tree) must follow the call.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextvars
import inspect
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_THREAD: threading.Thread | None = None
_LOOP_LOCK = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    """One long-lived event loop in a daemon thread, shared by every sync entry point.

    Clients keep connection pools bound to the loop that opened them (openai, httpx,
    langchain-openai), so sync calls must not each start a fresh loop.
    """
    global _LOOP, _LOOP_THREAD
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.is_closed() or not (_LOOP_THREAD and _LOOP_THREAD.is_alive()):
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="afnio-loop", daemon=True)
            thread.start()
            _LOOP, _LOOP_THREAD = loop, thread
        return _LOOP


@atexit.register
def _close_background_loop() -> None:
    """At exit, let the background loop finish what closes the connection pools opened
    on it (see :func:`_wind_down`)."""
    loop, thread = _LOOP, _LOOP_THREAD
    if loop is None or loop.is_closed() or thread is None or not thread.is_alive():
        return
    try:
        asyncio.run_coroutine_threadsafe(_wind_down(), loop).result(timeout=10)
    except Exception:  # exiting anyway: never fail the interpreter's shutdown
        pass


async def _wind_down() -> None:
    """Finish every task of the running loop, then finalise its async generators.

    Per-loop clients are closed by async generators (``models/_per_loop.py``): at the
    loop's shutdown, and when their owner (a model object) is collected, which schedules
    the close as a task. Closing an aiohttp session itself starts tasks. All of them
    must end before the loop does, or aiohttp warns "Unclosed client session" and
    asyncio "Task was destroyed but it is pending".
    """
    me = asyncio.current_task()
    for _ in range(2):  # the generators' shutdown may start tasks of its own
        await asyncio.sleep(0)  # closes scheduled by collected generators become tasks
        for _ in range(8):  # a closing task may start another
            pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not pending:
                break
            await asyncio.wait(pending, timeout=5)
        await asyncio.get_running_loop().shutdown_asyncgens()


_MAIN_LOOP: asyncio.AbstractEventLoop | None = None


def _main_thread_loop() -> asyncio.AbstractEventLoop | None:
    """The main thread's own event loop, when the caller may run it: in the main thread
    with no loop running there (a script, the CLI); None otherwise (a notebook, a
    thread pool, a sync call made from inside a coroutine). It is kept from call to
    call, so connection pools opened on it are reused, and it is not made the thread's
    current loop (``asyncio.get_event_loop()`` is left as it was)."""
    global _MAIN_LOOP
    if threading.get_ident() != threading.main_thread().ident:
        return None
    if asyncio.events._get_running_loop() is not None:  # no RuntimeError raised per call
        return None
    if _MAIN_LOOP is None or _MAIN_LOOP.is_closed():
        _MAIN_LOOP = asyncio.new_event_loop()
    return _MAIN_LOOP


def _run_here(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on ``loop`` in this thread. Interrupted (Ctrl-C, SystemExit), the
    model calls left running are cancelled and awaited before the interrupt goes on,
    as ``asyncio.run`` does, so none keeps running into the next sync call."""
    task = loop.create_task(coro, context=contextvars.copy_context())
    try:
        # One pass over the ready callbacks first: the task's first step. A coroutine
        # that never waits (a model client answering from memory) is then done without
        # a loop iteration (no poll for I/O), where run_until_complete takes two and a
        # done callback. HTTP calls, LangChain chat models and LangChain's cache wait.
        if not _run_ready_once(loop):
            loop.call_soon(loop.stop)
            loop.run_forever()
        if task.done():
            return task.result()
        return loop.run_until_complete(task)
    except (KeyboardInterrupt, SystemExit):
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit
        left = [t for t in asyncio.all_tasks(loop) if not t.done() and not _is_closing(t)]
        for pending in left:
            pending.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        raise


def _run_ready_once(loop: asyncio.AbstractEventLoop) -> bool:
    """Run the callbacks ready on ``loop`` (not running) once, as one iteration of
    ``run_forever`` runs them, without its poll for I/O and its timers: the loop is
    marked running in this thread, with its async-generator hooks, meanwhile. False,
    with nothing run, for a loop other than asyncio's own (uvloop) or in debug mode:
    then ``run_forever`` does it.

    ``run_forever`` costs more per call than the rest of a sync chat op's own
    bookkeeping (``benchmarks/overhead.py``, ``forward_sync``); what it does beyond this
    (timers, I/O events) is done by the ``run_until_complete`` that follows whenever
    the task is not done after this pass.
    """
    if not isinstance(loop, asyncio.BaseEventLoop) or loop.get_debug():
        return False
    ready = loop._ready  # type: ignore[attr-defined]
    hooks = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(
        firstiter=loop._asyncgen_firstiter_hook,  # type: ignore[attr-defined]
        finalizer=loop._asyncgen_finalizer_hook,  # type: ignore[attr-defined]
    )
    loop._thread_id = threading.get_ident()  # type: ignore[attr-defined]
    asyncio.events._set_running_loop(loop)
    try:
        for _ in range(len(ready)):  # what was ready now: later callbacks wait, as there
            handle = ready.popleft()
            if not handle._cancelled:
                handle._run()
    finally:
        asyncio.events._set_running_loop(None)
        loop._thread_id = None  # type: ignore[attr-defined]
        sys.set_asyncgen_hooks(*hooks)
    return True


CLOSING_TASK_NAME = "afnio-close-pool"
"""The name of the tasks that close a collected owner's connection pool
(``models/_per_loop.py``)."""


def _is_closing(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` closes a connection pool: cancelled, the pool would never be
    closed."""
    return task.get_name() == CLOSING_TASK_NAME


@atexit.register
def _close_main_loop() -> None:
    """At exit, close the main thread's loop once it has closed the connection pools
    opened on it (see :func:`_wind_down`)."""
    loop = _MAIN_LOOP
    if loop is None or loop.is_closed() or loop.is_running():
        return
    try:
        loop.run_until_complete(_wind_down())
        loop.close()
    except Exception:  # exiting anyway: never fail the interpreter's shutdown
        pass


def run_sync(coro_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``coro_factory()`` to completion from synchronous code and return its result.

    The coroutine runs with a copy of the caller's contextvars (grad mode, usage scopes,
    LangChain's run tree), so it works the same from a script, a thread pool or inside
    a running loop (a notebook). In the main thread of a script the caller runs it
    itself, on the main thread's own loop (no thread hop per call: the hop cost more
    engine CPU per node than everything else a sync node does, see ``benchmarks/``).
    Elsewhere it runs on the package's background event loop.
    """
    here = _main_thread_loop()
    if here is not None:
        return _run_here(here, coro_factory())
    loop = _background_loop()
    if threading.current_thread() is _LOOP_THREAD:
        # Called from code already running on the background loop: use a fresh one.
        context = contextvars.copy_context()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(context.run, lambda: asyncio.run(coro_factory())).result()
    context = contextvars.copy_context()
    result: concurrent.futures.Future[T] = concurrent.futures.Future()
    task_box: list[asyncio.Task[T]] = []

    def start() -> None:
        try:
            task = context.run(loop.create_task, _shielding_the_loop(coro_factory()))
        except BaseException as exc:  # the factory itself failed
            result.set_exception(exc)
            return
        task_box.append(task)

        def done(t: asyncio.Task[T]) -> None:
            if t.cancelled():
                result.cancel()
            elif t.exception() is not None:
                result.set_exception(t.exception())  # type: ignore[arg-type]
            else:
                result.set_result(t.result())

        task.add_done_callback(done)

    loop.call_soon_threadsafe(start)
    try:
        return result.result()
    except _LoopExit as exit_:
        raise exit_.original from None
    except BaseException:
        if task_box:  # interrupted (Ctrl-C) or failed: make sure nothing keeps running
            loop.call_soon_threadsafe(task_box[0].cancel)
        raise


class _LoopExit(Exception):
    """Carries a KeyboardInterrupt/SystemExit raised inside a task to the waiting caller."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


async def _shielding_the_loop(coro: Coroutine[Any, Any, T]) -> T:
    # asyncio lets KeyboardInterrupt and SystemExit escape run_forever(): on the shared
    # loop that would kill its thread and leave the caller waiting forever.
    try:
        return await coro
    except (KeyboardInterrupt, SystemExit) as exc:
        raise _LoopExit(exc) from exc


async def run_in_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking callable in the default executor, carrying contextvars."""
    return await asyncio.to_thread(func, *args, **kwargs)


_STARTED_TOGETHER: contextvars.ContextVar[dict[Any, Any] | None] = contextvars.ContextVar(
    "afnio_started_together", default=None
)


def started_together() -> dict[Any, Any] | None:
    """A dict the tasks one :func:`start_each` started share (None in any other task):
    for what the items of one minibatch work out once, as a batch call would."""
    return _STARTED_TOGETHER.get()


async def start_each(awaitables: Iterable[Awaitable[T]]) -> list[asyncio.Future[T]]:
    """Start one task per awaitable, letting each run to its first wait before the next.

    Started all at once, N concurrent model calls each build their request before any
    is sent (the event loop runs every new task before resuming the first), so the N
    replies come back together and queue for the CPU. Started one by one, each request
    leaves as soon as it is built and each reply is handled as it arrives: at N = 32
    this saves about N reply-handling times per minibatch op (see ``benchmarks/``).
    If the caller is cancelled meanwhile, the tasks already started are cancelled too.
    The tasks share one :func:`started_together` dict.
    """
    pending = list(awaitables)
    tasks: list[asyncio.Future[T]] = []
    shared = _STARTED_TOGETHER.set({})  # each task copies the context as it is created
    try:
        for i, awaitable in enumerate(pending):
            tasks.append(asyncio.ensure_future(awaitable))
            if i < len(pending) - 1:
                await asyncio.sleep(0)
    except BaseException:
        for task in tasks:
            task.cancel()
        for awaitable in pending[len(tasks) :]:
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never started: no "was never awaited" warning
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        _STARTED_TOGETHER.reset(shared)
    return tasks


async def gather_all(awaitables: list[Awaitable[T]]) -> list[T]:
    """Await all, and if one fails cancel the rest before re-raising its error."""
    tasks = await start_each(awaitables)
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
