"""Client CPU per model call: ``python -m benchmarks.client_cpu [--calls N]``.

Sequential calls against the loopback server in its own process (no latency), so the
process's CPU time is the client's alone: the plain ``openai.AsyncOpenAI`` and
``ChatOpenAI`` a user would call, the same two through this package's adapters
(``acomplete``), and the same two behind a ``ChatCompletion`` op that is given the
model object itself on every call, as a chain's stage gives it, and the two ops over a
list input of :data:`MINIBATCH` items (per item call: the CPU a minibatch's items queue
for on one core, the critical path's share of it). Each figure is the
fastest of ``--rounds`` rounds of ``--calls`` calls (the least disturbed by other
load), with the median next to it; the last line is JSON. The server runs on a CPU of
its own, as in ``run.py`` (``--no-pin``: wherever the scheduler puts it).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.placement import plan_placement
from benchmarks.server_process import ServerProcess

MESSAGES = [
    {"role": "system", "content": "You are a careful solver of arithmetic word problems. " * 6},
    {"role": "user", "content": "A shop sold 17 apples in the morning and 25 after noon. " * 3},
]
MODEL = "fake-model"
MINIBATCH = 32
"""Items of the list-input op calls (the benchmark's headline minibatch)."""


def _clients(base_url: str) -> dict[str, tuple[Callable[[], Awaitable[Any]], int]]:
    """Each client's call, and how many model calls one call of it makes."""
    import openai
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    from afnio_langchain.models import as_model_client

    raw = openai.AsyncOpenAI(base_url=base_url, api_key="bench-key")
    chat = ChatOpenAI(model=MODEL, base_url=base_url, api_key="bench-key", temperature=0)
    ours_openai = as_model_client(openai.AsyncOpenAI(base_url=base_url, api_key="bench-key"), MODEL)
    ours_chat = as_model_client(
        ChatOpenAI(model=MODEL, base_url=base_url, api_key="bench-key", temperature=0)
    )
    lc_messages = [SystemMessage(MESSAGES[0]["content"]), HumanMessage(MESSAGES[1]["content"])]
    from afnio_langchain.autodiff import ChatCompletion

    # As a chain's stage or a user's op call passes it: the model itself, every call.
    op_chat = ChatOpenAI(model=MODEL, base_url=base_url, api_key="bench-key", temperature=0)
    listed = [MESSAGES[0], {"role": "user", "content": "{question}"}]
    questions = [f"{MESSAGES[1]['content']} ({i})" for i in range(MINIBATCH)]
    return {
        "openai.AsyncOpenAI": (
            lambda: raw.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0),
            1,
        ),
        "ChatOpenAI.ainvoke": (lambda: chat.ainvoke(lc_messages), 1),
        "afnio_langchain over openai": (lambda: ours_openai.acomplete(MESSAGES), 1),
        "afnio_langchain over ChatOpenAI": (lambda: ours_chat.acomplete(MESSAGES), 1),
        "ChatCompletion op over openai": (lambda: ChatCompletion.aapply(ours_openai, MESSAGES), 1),
        "ChatCompletion op over ChatOpenAI": (lambda: ChatCompletion.aapply(op_chat, MESSAGES), 1),
        f"op over openai, {MINIBATCH} items, per item": (
            lambda: ChatCompletion.aapply(ours_openai, listed, inputs={"question": questions}),
            MINIBATCH,
        ),
        f"op over ChatOpenAI, {MINIBATCH} items, per item": (
            lambda: ChatCompletion.aapply(op_chat, listed, inputs={"question": questions}),
            MINIBATCH,
        ),
    }


async def _measure(call: Callable[[], Awaitable[Any]], calls: int, rounds: int) -> list[float]:
    for _ in range(20):  # connections opened, request templates built
        await call()
    per_call = []
    for _ in range(rounds):
        gc.collect()
        began = time.process_time()
        for _ in range(calls):
            await call()
        per_call.append((time.process_time() - began) / calls * 1e6)
    return per_call


async def run(base_url: str, calls: int, rounds: int) -> dict[str, dict[str, float]]:
    """µs of client CPU per call, fastest and median round, for each client."""
    out = {}
    for name, (call, items) in _clients(base_url).items():
        runs = [us / items for us in await _measure(call, max(1, calls // items), rounds)]
        out[name] = {"min_us": round(min(runs)), "median_us": round(statistics.median(runs))}
        print(f"{name:40s} {out[name]['min_us']:6d} µs (median {out[name]['median_us']})",
              file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per client")
    parser.add_argument("--no-pin", action="store_true", help="no CPU of its own for the server")
    args = parser.parse_args()
    placement = plan_placement(pin=not args.no_pin)  # as run.py places them
    placement.pin_this_process()
    with ServerProcess(0.0, 0.0, cpus=placement.server) as server:
        print(json.dumps(asyncio.run(run(server.base_url, args.calls, args.rounds))))


if __name__ == "__main__":
    main()
