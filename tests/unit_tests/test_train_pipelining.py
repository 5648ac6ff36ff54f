"""The trainer runs each example through the whole chain as its own task, so a fast
example's later steps do not wait for a slow example's earlier ones."""

from __future__ import annotations

import asyncio

from _paced_model import hold_until
from langchain_core.runnables import RunnableLambda

from afnio_langchain import ChatCompletionRunnable, Variable
from afnio_langchain.testing import ScriptedChatModel
from afnio_langchain.train._evaluation import arun_chain


class LoggingModel(ScriptedChatModel):
    """Answers the user text back after a delay; logs when each call starts and ends.
    The call for "slow" is held until "fast" is through the chain (or for 10 s, if the
    chain's steps wait for each other and it never is), so no delay is guessed."""

    log: list[str] = []

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):
        text = str(messages[-1].content)
        self.log.append(f"start {text}")
        await asyncio.sleep(0.01)
        if text == "slow":
            await hold_until(lambda: "end fast again" in self.log, limit=10.0)
        self.log.append(f"end {text}")
        return await super()._agenerate(messages, stop, run_manager, **kwargs)


def two_step_chain(model: LoggingModel):
    def step(name: str) -> ChatCompletionRunnable:
        system = Variable(f"You are the {name}.", role=f"{name} prompt", requires_grad=True)
        return ChatCompletionRunnable(
            model=model, messages=[("system", system), ("user", "{text}")]
        )

    return step("first") | RunnableLambda(lambda v: {"text": v}) | step("second")


async def test_a_fast_example_finishes_its_chain_before_a_slow_example_leaves_step_one():
    model = LoggingModel(forward=lambda request: request.rsplit("\n", 1)[-1] + " again")
    outputs = await arun_chain(
        two_step_chain(model), [{"text": "slow"}, {"text": "fast"}], grad=True
    )
    assert [o.data for o in outputs] == ["slow again again", "fast again again"]
    assert model.log.index("end fast again") < model.log.index("end slow")
    assert all(o.grad_fn is not None for o in outputs)


async def test_max_concurrency_bounds_examples_in_flight():
    model = LoggingModel(forward="ok")
    inputs = [{"text": f"item {i}"} for i in range(6)]
    in_flight = peak = 0
    original = model._agenerate

    async def counting(*args, **kwargs):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await original(*args, **kwargs)
        finally:
            in_flight -= 1

    object.__setattr__(model, "_agenerate", counting)
    outputs = await arun_chain(two_step_chain(model), inputs, grad=True, max_concurrency=2)
    assert len(outputs) == 6 and peak == 2
