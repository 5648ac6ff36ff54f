"""Sync entry points on the shared background loop, and the scoped backward model."""

from __future__ import annotations

import asyncio
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
