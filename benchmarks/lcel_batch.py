"""Wall time of ``batch`` over 16 inputs through a three-LLM-step LCEL pipeline, against
running the same inputs one after another, with a fake chat model that takes 0.2 s a call.

The pipeline is the shape of ``examples/lcel_pipeline.py``: dict coercion with a
retriever, then draft, critique and final steps chained with
``RunnablePassthrough.assign``. Its critical path is three calls, so a fully concurrent
batch takes about 3 x 0.2 s whatever the number of inputs; serial takes 16 x 3 x 0.2 s.

LangChain runs ``RunnableAssign.batch`` in a thread pool (by default
``min(32, cpu_count + 4)`` threads), so ``batch`` is measured with the default config
and with ``max_concurrency=16``; ``abatch`` runs everything on one event loop.

    python benchmarks/lcel_batch.py [--inputs 16] [--latency 0.2]

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough

from afnio_langchain import ChatCompletionRunnable, Variable, parameters
from afnio_langchain.testing import ScriptedChatModel


def pipeline(model: Any) -> Runnable:
    def llm(name: str, template: str) -> ChatCompletionRunnable:
        system = Variable(f"You are the {name}.", role=f"{name} system prompt", requires_grad=True)
        return ChatCompletionRunnable(model=model, messages=[("system", system), ("user", template)])

    chain = (
        {"question": RunnablePassthrough(), "notes": RunnableLambda(lambda q: f"notes on {q}")}
        | RunnablePassthrough.assign(draft=llm("drafter", "{question}\n{notes}"))
        | RunnablePassthrough.assign(critique=llm("critic", "{question}\n{draft}"))
        | RunnablePassthrough.assign(answer=llm("finalizer", "{draft}\n{critique}"))
        | itemgetter("answer")
    )
    assert len(parameters(chain)) == 3
    return chain


def timed(run: Callable[[], list[Any]], expected: int) -> float:
    began = time.perf_counter()
    outputs = run()
    elapsed = time.perf_counter() - began
    if len(outputs) != expected or not all(isinstance(o, Variable) and o.grad_fn for o in outputs):
        raise RuntimeError("the pipeline did not return one differentiable Variable per input")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    n, latency = args.inputs, args.latency
    chain = pipeline(ScriptedChatModel(forward="reply", latency=latency))
    questions = [f"question {i}" for i in range(n)]

    results = {
        "serial": timed(lambda: [chain.invoke(q) for q in questions], n),
        "batch": timed(lambda: chain.batch(questions), n),
        "batch_max_concurrency": timed(
            lambda: chain.batch(questions, config={"max_concurrency": n}), n
        ),
        "abatch": timed(lambda: asyncio.run(chain.abatch(questions)), n),
    }
    bound = 3 * latency
    print(f"{n} inputs, 3 LLM steps, {latency:.2f} s per call, {os.cpu_count()} CPUs")
    print(f"critical path {bound:.2f} s; serial model time {n * bound:.2f} s")
    labels = {
        "serial": "serial invoke",
        "batch": "batch (default config)",
        "batch_max_concurrency": f"batch (max_concurrency={n})",
        "abatch": "abatch",
    }
    for key, seconds in results.items():
        print(f"  {labels[key]:<28} {seconds:6.2f} s  ({results['serial'] / seconds:4.1f}x)")
    print(json.dumps({"inputs": n, "latency": latency, **{k: round(v, 3) for k, v in results.items()}}))


if __name__ == "__main__":
    main()
