"""Garbage-collector time per training step: ``python -m benchmarks.gc_pauses [--steps N]``.

A step allocates the graph of its minibatch (Variables, nodes, conversations, requests,
LangChain's run objects) and keeps it for the whole step, so the interpreter's young
collections move much of it into the oldest generation. CPython 3.11 runs a full
collection once those moves add up to a quarter of the objects already there, and a full
collection visits every object alive in the process: the imports of langchain, openai
and aiohttp alone are about 150,000 of them. So every few steps one step pays a pause
that grows with the heap, not with the step.

This runs ``--steps`` pipelined steps of the 3-stage pipeline (minibatch 32, the
``openai`` client) against the loopback server with no latency, then as many with the
heap frozen (``gc.freeze()`` after setup, which moves everything alive into a permanent
generation the collector skips), and prints per step the CPU time, the collector's time
by generation and the full collections. The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from typing import Any

from benchmarks import pipeline_ours, task
from benchmarks.overhead import GarbageCollectionTimer
from benchmarks.server_process import ServerProcess

__all__ = ["measure"]


async def _steps(step: Any, steps: int) -> dict[str, Any]:
    cpu, collector_ms, full_ms = [], [], []
    full_before = gc.get_stats()[2]["collections"]
    for _ in range(steps):
        with GarbageCollectionTimer() as collector:
            began = time.process_time()
            await step()
            cpu.append(round((time.process_time() - began) * 1000, 1))
        collector_ms.append(round(collector.seconds * 1000, 1))
        full_ms.append(round(collector.by_generation[2] * 1000, 1))
    return {
        "cpu_ms_per_step": cpu,
        "gc_ms_per_step": collector_ms,
        "full_collection_ms_per_step": full_ms,
        "full_collections": gc.get_stats()[2]["collections"] - full_before,
        "mean_gc_ms_per_step": round(sum(collector_ms) / steps, 1),
        "worst_gc_ms_in_a_step": max(collector_ms),
    }


async def measure(base_url: str, steps: int, client: str = "openai") -> dict[str, Any]:
    """Collector time per step, with the heap as it is and then frozen."""
    model = pipeline_ours.make_model(client, base_url)
    chain, prompts = pipeline_ours.make_pipeline(model)
    optimizer = pipeline_ours.make_optimizer(prompts, model)
    questions, answers = task.dataset(32, seed=1)

    async def step() -> None:
        await pipeline_ours.train_step(chain, optimizer, questions, answers, limit=64)

    await step()  # connections opened, caches filled
    gc.collect()
    out: dict[str, Any] = {"client": client, "steps": steps,
                           "objects_tracked": len(gc.get_objects())}
    out["as_is"] = await _steps(step, steps)
    gc.collect()
    gc.freeze()
    try:
        out["frozen"] = await _steps(step, steps)
    finally:
        gc.unfreeze()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--client", choices=pipeline_ours.CLIENTS, default="openai")
    args = parser.parse_args()
    with ServerProcess(0.0, 0.0) as server:
        result = asyncio.run(measure(server.base_url, args.steps, args.client))
    for variant in ("as_is", "frozen"):
        row = result[variant]
        print(f"{variant:7s} collector ms per step {row['gc_ms_per_step']}; "
              f"{row['full_collections']} full collections; mean "
              f"{row['mean_gc_ms_per_step']} ms, worst step {row['worst_gc_ms_in_a_step']} ms",
              file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
