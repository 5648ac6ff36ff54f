"""A minibatch through a three-step pipeline, item by item: ``step | step`` is a
``ChatPipeline``, whose ``ainvoke`` on a list input sends each item on to the next
step as soon as it has its reply, instead of waiting for the step's slowest item.

The steps run on a fake chat model whose replies take 0.05 to 0.4 s, depending on the
item (as a real model's do). The same steps run once as a ``ChatPipeline`` and once
as LangChain's stage-by-stage ``RunnableSequence``; the script prints both wall times
(measured), checks that the outputs are the same, then trains the pipeline's three
system prompts with one backward pass and one TGD step::

    python examples/minibatch_pipeline.py
"""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import Any

from langchain_core.runnables import RunnableSequence

from afnio_langchain import ChatCompletionRunnable, Variable, parameters
from afnio_langchain.optim import TGD
from afnio_langchain.testing import ScriptedChatModel

QUESTIONS = [f"What is {a} + {b}?" for a, b in zip(range(1, 13), range(5, 17))]


class SlowFake(ScriptedChatModel):
    """Scripted replies, each forward call taking 0.05-0.4 s (fixed per request text)."""

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):
        text = "".join(str(m.content) for m in messages)
        if "var_" not in text and "improved" not in text:  # forward calls only
            await asyncio.sleep(0.05 + (zlib.crc32(text.encode()) % 8) * 0.05)
        return await super()._agenerate(messages, stop, run_manager, **kwargs)


def build(model: Any) -> list[ChatCompletionRunnable]:
    prompts = {
        "solver": "Solve the arithmetic question.",
        "checker": "Check the solution and correct it if needed.",
        "writer": "State the final answer in one sentence.",
    }
    return [
        ChatCompletionRunnable(
            model=model,
            messages=[
                ("system", Variable(text, role=f"{name} system prompt", requires_grad=True)),
                ("user", "{question}" if name == "solver" else "{draft}"),
            ],
            output_role=f"{name} answer",
            backward_model=model,
        )
        for name, text in prompts.items()
    ]


async def main() -> None:
    model = SlowFake(
        forward=lambda request: f"The answer to {request.rsplit('?', 1)[0].rsplit('What', 1)[-1]}?",
        feedback="Show the sum as a number.",
        optimizer="Solve the question and give the sum as a number.",
    )
    solver, checker, writer = build(model)
    pipeline = solver | checker | writer
    sequence = RunnableSequence(solver, checker, writer)
    print(f"{type(pipeline).__name__} of {len(pipeline.steps)} steps, {len(QUESTIONS)} questions")

    timings = {}
    outputs = {}
    for name, chain in (("ChatPipeline", pipeline), ("RunnableSequence", sequence)):
        began = time.perf_counter()
        outputs[name] = await chain.ainvoke({"question": QUESTIONS})
        timings[name] = time.perf_counter() - began
        print(f"{name}: {timings[name]:.2f} s")
    print("same outputs:", outputs["ChatPipeline"].data == outputs["RunnableSequence"].data)

    answers = outputs["ChatPipeline"]
    await answers.abackward(["Give the sum as a number."] * len(QUESTIONS))
    params = parameters(pipeline)
    print(f"gradients on {sum(1 for p in params if p.grad)} of {len(params)} system prompts")
    await TGD(params, model=model).astep()
    print("new solver prompt:", params[0].data)


if __name__ == "__main__":
    asyncio.run(main())
