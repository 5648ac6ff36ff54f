"""One training step of an LCEL pipeline of ``ChatCompletionRunnable`` stages with this
package: forward over a minibatch, deterministic evaluation, backward, one TGD step.

Everything runs on one event loop (the caller's), so the HTTP connection pools of the
clients are reused from step to step."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from afnio_langchain import Variable, concurrency_limit, track_usage
from afnio_langchain.autodiff import DeterministicEvaluator
from afnio_langchain.models import as_model_client
from afnio_langchain.optim import TGD
from afnio_langchain.runnables import ChatCompletionRunnable
from benchmarks import task

CLIENTS = ("langchain", "openai")
"""``langchain``: langchain-openai's ``ChatOpenAI``; ``openai``: ``openai.AsyncOpenAI``."""

CONDENSE_THRESHOLD = 64
"""TGD shows up to this many gradients in its one update call per parameter (the
default, 8, adds a condensation round to steps over more than 8 items)."""

MODEL_NAME = "fake-model"


def make_model(client: str, base_url: str) -> Any:
    """The model object a user would pass, pointed at the loopback server."""
    if client == "langchain":
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(model=MODEL_NAME, base_url=base_url, api_key="bench-key", temperature=0)
    if client == "openai":
        import openai

        return as_model_client(
            openai.AsyncOpenAI(base_url=base_url, api_key="bench-key"), MODEL_NAME
        )
    raise ValueError(f"client must be one of {CLIENTS}, got {client!r}")


def make_pipeline(model: Any, depth: int = 3) -> tuple[Any, list[Variable]]:
    """``depth`` stages composed with ``|``, each with a trainable system prompt."""
    if depth < 1:
        raise ValueError("depth must be >= 1")
    prompts = [
        Variable(task.stage_prompt(k), role=task.stage_role(k), requires_grad=True)
        for k in range(depth)
    ]
    steps = [
        ChatCompletionRunnable(
            model=model,
            messages=[("system", prompts[k]), ("user", task.user_template(k))],
            backward_model=model,
            output_role=task.output_role(k),
        )
        for k in range(depth)
    ]
    chain = steps[0]
    for step in steps[1:]:
        chain = chain | step  # a Variable flows into the next stage's one {draft} field
    return chain, prompts


MODES = ("pipelined", "minibatch")
"""How a step runs the minibatch. ``pipelined``: one graph per item, each item's forward,
evaluation and backward run as one task, the items concurrently (started one by one,
so each item's first request leaves before the next item's is built); one optimizer
step at the end. ``minibatch``: the minibatch as one list-valued input, so each stage
is one node making all the items' calls at once, then one evaluation, one backward
pass, one optimizer step."""


@dataclass
class StepResult:
    """Wall time of one step, per phase, and the usage the package counted.

    ``forward_s`` and ``backward_s`` are None in ``pipelined`` mode, where the two
    overlap (their sum is ``forward_backward_s``)."""

    mode: str
    wall_s: float
    forward_backward_s: float
    optimizer_s: float
    forward_s: float | None = None
    backward_s: float | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    updated: int = 0
    cpu_s: float | None = None  # filled in by callers that measure it


async def train_step(
    chain: Any,
    optimizer: TGD,
    questions: list[str],
    answers: list[str],
    *,
    limit: int,
    mode: str = "pipelined",
) -> StepResult:
    """One training step: forward, evaluate, backward, ``TGD.step``; timed by phase."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    optimizer.zero_grad()
    forward_s = backward_s = None
    with concurrency_limit(limit), track_usage() as usage:
        began = time.perf_counter()
        if mode == "pipelined":

            async def item(question: str, answer: str) -> None:
                reply = await chain.ainvoke({"question": question})
                _, explanation = DeterministicEvaluator.apply(reply, answer, task.evaluate)
                await explanation.abackward()

            tasks = []
            for question, answer in zip(questions, answers):
                tasks.append(asyncio.ensure_future(item(question, answer)))
                await asyncio.sleep(0)  # this item's request leaves before the next is built
            await asyncio.gather(*tasks)
        else:
            replies = await chain.ainvoke({"question": questions})
            forward_s = time.perf_counter() - began
            _, explanation = DeterministicEvaluator.apply(replies, answers, task.evaluate)
            await explanation.abackward()
            backward_s = time.perf_counter() - began - forward_s
        backwarded = time.perf_counter()
        await optimizer.astep()
        ended = time.perf_counter()
    report = optimizer.last_step
    return StepResult(
        mode=mode,
        wall_s=ended - began,
        forward_backward_s=backwarded - began,
        optimizer_s=ended - backwarded,
        forward_s=forward_s,
        backward_s=backward_s,
        usage=usage.as_dict(),
        updated=len(report.updated) if report is not None else 0,
    )


def make_optimizer(params: list[Variable], model: Any) -> TGD:
    """TGD over the stage prompts, with the benchmark's condensation threshold."""
    return TGD(params, model=model, condense_threshold=CONDENSE_THRESHOLD)
