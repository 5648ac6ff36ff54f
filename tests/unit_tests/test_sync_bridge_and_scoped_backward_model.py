"""Sync entry points (the main thread's own loop, the shared background loop for every
other caller), and the scoped backward model."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import subprocess
import sys
import textwrap
import threading

import pytest

from afnio_langchain import Variable, get_backward_model, set_backward_model, use_backward_model
from afnio_langchain._aio import run_sync
from afnio_langchain.autodiff import ChatCompletion
from afnio_langchain.testing import ScriptedChatModel


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_inside_a_sync_call_reaches_the_caller_and_the_loop_survives(interrupt):
    async def interrupted() -> None:
        await asyncio.sleep(0)
        raise interrupt

    async def answer() -> int:
        return 42

    with pytest.raises(interrupt):
        run_sync(interrupted)
    assert run_sync(answer) == 42


def test_a_sync_call_that_never_waits_and_one_that_waits_both_finish_on_the_callers_loop():
    # The main thread's sync call first gives the loop one pass (a coroutine that never
    # waits is done there); one that waits goes on until it is done.
    async def at_once() -> str:
        return "instant"

    async def broken() -> None:
        raise ValueError("bad prompt")

    async def interrupted_at_once() -> None:
        raise KeyboardInterrupt

    async def waits() -> int:
        for _ in range(3):
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        return 3

    assert run_sync(at_once) == "instant"
    with pytest.raises(ValueError, match="bad prompt"):
        run_sync(broken)
    with pytest.raises(KeyboardInterrupt):
        run_sync(interrupted_at_once)
    assert run_sync(waits) == 3
    assert run_sync(at_once) == "instant"


def test_work_a_sync_call_leaves_scheduled_runs_on_the_next_sync_call():
    ran: list[str] = []

    async def leaves_work() -> str:
        asyncio.get_running_loop().call_soon(ran.append, "callback")
        return "done"

    async def later() -> None:
        await asyncio.sleep(0)

    assert run_sync(leaves_work) == "done"
    run_sync(later)
    assert ran == ["callback"]


def test_use_backward_model_is_scoped_and_leaves_the_default_alone():
    default = ScriptedChatModel(feedback="from the default")
    scoped = ScriptedChatModel(feedback="from the scope")
    set_backward_model(default)
    try:
        system = Variable("Be brief.", role="system prompt", requires_grad=True)
        messages = [{"role": "system", "content": [system]}, {"role": "user", "content": ["Hi"]}]
        with use_backward_model(scoped):
            ChatCompletion.apply(ScriptedChatModel(forward="hello"), messages).backward("shorter")
        ChatCompletion.apply(ScriptedChatModel(forward="hello"), messages).backward("shorter")
        assert [g.data for g in system.grad] == ["from the scope", "from the default"]
        assert get_backward_model().model is default
    finally:
        set_backward_model(None)


def test_scoped_backward_models_of_two_threads_do_not_clash():
    seen: dict[str, str] = {}
    barrier = threading.Barrier(2)

    def run(name: str) -> None:
        model = ScriptedChatModel(forward="ok", feedback=f"feedback of {name}", latency=0.05)
        system = Variable("Be brief.", role="system prompt", requires_grad=True)
        messages = [{"role": "system", "content": [system]}, {"role": "user", "content": ["Hi"]}]
        with use_backward_model(model):
            barrier.wait()  # both scopes are open at once
            ChatCompletion.apply(model, messages).backward("shorter")
        seen[name] = system.grad[0].data

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"a": "feedback of a", "b": "feedback of b"}
    assert get_backward_model() is None


# -- the main thread runs its own loop -------------------------------------------------


_SLOW_STEP_REPORT = re.compile(r"^Executing <.*> took \d+(\.\d+)? seconds$", re.MULTILINE)
"""asyncio's debug mode (on under ``-X dev``) reports any loop step over 0.1 s: on a
loaded machine the first call's imports and TLS setup are one. A matter of the
machine's speed, not a leak."""


def _run_in_dev_mode(script: str) -> str:
    """Run ``script`` in a fresh interpreter with ``-X dev`` (every ResourceWarning
    shown) and return its stdout, checking that it exited cleanly and printed nothing
    on stderr but asyncio's slow-step reports."""
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    stderr = _SLOW_STEP_REPORT.sub("", done.stderr).strip()
    assert stderr == "", done.stderr
    return done.stdout


def test_a_sync_call_in_the_main_thread_runs_on_the_callers_thread_and_keeps_its_loop():
    seen: list[tuple[threading.Thread, asyncio.AbstractEventLoop]] = []

    async def where() -> None:
        seen.append((threading.current_thread(), asyncio.get_running_loop()))

    run_sync(where)
    run_sync(where)
    assert seen[0][0] is threading.main_thread() and seen[1][0] is threading.main_thread()
    assert seen[0][1] is seen[1][1]  # one loop: connection pools opened on it are reused


def test_sync_calls_leave_asyncio_run_and_the_current_loop_alone():
    async def answer() -> int:
        return 42

    run_sync(answer)
    assert asyncio.run(answer()) == 42
    assert run_sync(answer) == 42


def test_an_interrupt_cancels_every_model_call_it_left_running():
    cancelled: list[str] = []

    async def slow_call(name: str) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    async def minibatch() -> None:
        calls = [asyncio.ensure_future(slow_call(f"item {k}")) for k in range(3)]
        await asyncio.sleep(0.01)  # the calls are in flight
        raise KeyboardInterrupt  # as Ctrl-C would, in the middle of the step
        await asyncio.gather(*calls)

    with pytest.raises(KeyboardInterrupt):
        run_sync(minibatch)
    assert sorted(cancelled) == ["item 0", "item 1", "item 2"]

    async def answer() -> int:
        return 7

    assert run_sync(answer) == 7  # the next call starts on a clean loop


def test_a_sync_call_from_a_thread_pool_or_inside_a_running_loop_still_works():
    async def where() -> str:
        return threading.current_thread().name

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(run_sync, where).result() == "afnio-loop"

    async def notebook_cell() -> str:
        return run_sync(where)  # a sync call with the notebook's loop running

    assert asyncio.run(notebook_cell()) == "afnio-loop"


def test_a_script_of_sync_calls_closes_its_connection_pools_at_exit():
    """aiohttp warns "Unclosed client session" when a pool outlives its loop, and asyncio
    "Task was destroyed but it is pending" when closing it was left half done: neither
    for models alive at exit, nor for models collected along the way."""
    script = textwrap.dedent(
        """
        import gc, openai
        from langchain_openai import ChatOpenAI
        from afnio_langchain import Variable
        from afnio_langchain.autodiff import ChatCompletion
        from afnio_langchain.models import as_model_client
        from afnio_langchain.testing import OpenAICompatServer
        server = OpenAICompatServer().start()
        def step(model):
            prompt = Variable("Be brief.", requires_grad=True)
            messages = [{"role": "system", "content": [prompt]}, {"role": "user", "content": ["hi"]}]
            ChatCompletion.apply(model, messages, backward_model=model).backward("Shorter.")
            return len(prompt.grad)
        def models():
            yield as_model_client(openai.AsyncOpenAI(base_url=server.base_url, api_key="k"), "m")
            yield ChatOpenAI(model="m", base_url=server.base_url, api_key="k")
        grads = [step(model) for model in models()]  # collected along the way
        gc.collect()
        kept = ChatOpenAI(model="m", base_url=server.base_url, api_key="k")
        # the last call: the collected models' pools start closing in it, and outlive it
        grads.append(step(kept))
        print(sum(grads))
        """
    )
    assert _run_in_dev_mode(script).strip() == "3"


def test_a_client_collected_after_a_failed_call_closes_its_connection_pool():
    """A failed call's traceback puts the client in a reference cycle: collected there,
    its connection pool used to be finalised unclosed ("Unclosed connector")."""
    script = textwrap.dedent(
        """
        import gc, openai
        from afnio_langchain.autodiff import ChatCompletion
        from afnio_langchain.models import OpenAIClient, RetryPolicy
        from afnio_langchain.testing import Fault, OpenAICompatServer
        server = OpenAICompatServer().start()
        retry = RetryPolicy(max_attempts=2, initial_wait=0.001, max_wait=0.01)
        def call(fail):
            raw = openai.AsyncOpenAI(base_url=server.base_url, api_key="k")
            client = OpenAIClient(raw, "m", retry=retry)
            if fail:
                server.inject(Fault.http(500), times=2)
            try:
                return ChatCompletion.apply(client, [{"role": "user", "content": ["hi"]}]).data
            except Exception as exc:
                return type(exc).__name__
        print(call(False), call(True))
        gc.collect()
        print(call(False))
        """
    )
    assert _run_in_dev_mode(script).split() == ["echo:", "hi", "InternalServerError", "echo:", "hi"]


def test_the_first_step_of_a_sync_call_runs_as_asyncio_runs_a_task():
    # The main thread's sync call runs the task's first step itself, without a loop
    # iteration: what a model client's code reads there must be what a task running on
    # a running loop reads (its own task, a running loop, the loop's async-generator
    # hooks), and asyncio.timeout, which needs all of them, must work across a wait.
    seen: dict[str, object] = {}

    async def ticks():
        yield 1

    async def inspects() -> str:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        seen["running"] = loop.is_running()
        seen["hooks"] = sys.get_asyncgen_hooks().firstiter is not None
        generator = ticks()
        seen["generator_item"] = await generator.__anext__()
        async with asyncio.timeout(5):
            await asyncio.sleep(0)
        seen["same_task"] = asyncio.current_task() is task
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(1)
        return "done"

    hooks_before = sys.get_asyncgen_hooks()
    assert run_sync(inspects) == "done"
    assert seen == {"running": True, "hooks": True, "generator_item": 1, "same_task": True}
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # the caller's thread has no running loop after it
    assert sys.get_asyncgen_hooks() == hooks_before


def test_sync_calls_work_on_a_loop_in_asyncio_debug_mode():
    script = textwrap.dedent(
        """
        import asyncio
        from afnio_langchain._aio import run_sync

        async def at_once():
            return asyncio.get_running_loop().get_debug()

        async def waits():
            await asyncio.sleep(0.01)
            return "waited"

        print(run_sync(at_once), run_sync(waits))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONASYNCIODEBUG": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "waited"]
