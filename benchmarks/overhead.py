"""Engine overhead: the time and memory the library itself spends per graph node when
the model answers instantly, for this package and for TextGrad, on the same graph.

The graph is ``width`` independent chains of ``depth`` chat-completion nodes (1,000
nodes by default), each chain with its own trainable system prompt, joined by one sum
node. Forward builds it node by node; backward sends one feedback text from the sum to
every system prompt. The fakes answer from constants with no parsing of their own
(this package's fake reads the JSON keys from the schema the engine sends), so what is
timed is the library: graph bookkeeping, prompt building, reply parsing, scheduling,
usage counting. Time and memory are measured in separate runs (``tracemalloc`` slows
Python down), in a fresh interpreter (:func:`measure_in_subprocess`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from afnio_langchain import Variable
from afnio_langchain.autodiff import ChatCompletion, Sum
from afnio_langchain.models import BaseModelClient, Completion, JsonSchema, Message
from benchmarks import pipeline_textgrad, task

FORWARD_TEXT = "The total is 42 apples, from adding the morning and afternoon sales."
FEEDBACK_TEXT = "Ask for the bare number first, then one line that checks the sum."
ROOT_FEEDBACK = "The final answers must be bare numbers."

_clock = time.process_time
"""CPU time of this process (every thread, the package's event-loop thread included):
on a shared machine, wall time also counts the time other processes held the CPU."""


class GarbageCollectionTimer:
    """CPU seconds the interpreter's cyclic garbage collector spends while active, by
    generation: the part of a phase's time that grows with everything alive in the
    process (a full collection visits every tracked object), not with the node.

    Example:
        >>> with GarbageCollectionTimer() as collector:
        ...     _ = [[i] for i in range(10_000)]
        >>> collector.seconds >= 0 and sorted(collector.by_generation) == [0, 1, 2]
        True
    """

    def __init__(self) -> None:
        self.by_generation = {0: 0.0, 1: 0.0, 2: 0.0}
        self._began = 0.0

    @property
    def seconds(self) -> float:
        return sum(self.by_generation.values())

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = _clock()
        else:
            self.by_generation[info["generation"]] += _clock() - self._began

    def __enter__(self) -> GarbageCollectionTimer:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


class ZeroLatencyClient(BaseModelClient):
    """This package's fake: answers instantly, JSON when a schema is sent.

    Example:
        >>> client = ZeroLatencyClient()
        >>> client.complete([{"role": "user", "content": "hi"}]).text == FORWARD_TEXT
        True
    """

    model_name = "zero-latency"

    async def _agenerate(
        self, messages: Sequence[Message], json_schema: JsonSchema | None, params: dict[str, Any]
    ) -> Completion:
        if json_schema is None:
            return Completion(FORWARD_TEXT, self.model_name, 1, 1)
        keys = json_schema.schema.get("properties", {})
        return Completion(json.dumps({k: FEEDBACK_TEXT for k in keys}), self.model_name, 1, 1)


def _textgrad_engine() -> Any:
    from textgrad.engine import EngineLM

    class ZeroLatencyEngine(EngineLM):
        """TextGrad's fake: answers instantly."""

        model_string = "zero-latency"

        def generate(self, prompt: Any, system_prompt: str | None = None, **kwargs: Any) -> str:
            return FEEDBACK_TEXT if "feedback" in (system_prompt or "") else FORWARD_TEXT

        def __call__(self, prompt: Any, **kwargs: Any) -> str:
            return self.generate(prompt, **kwargs)

    return ZeroLatencyEngine()


# -- this package ---------------------------------------------------------------------


def _ours_graph(width: int) -> tuple[list[Variable], Any, list[dict[str, Any]]]:
    prompts = [
        Variable(task.stage_prompt(w % 3), role=task.stage_role(w), requires_grad=True)
        for w in range(width)
    ]
    messages = [
        [{"role": "system", "content": [p]}, {"role": "user", "content": ["{draft}"]}]
        for p in prompts
    ]
    return prompts, ZeroLatencyClient(), messages


async def _ours_forward_async(
    width: int, depth: int, *, concurrent: bool = True
) -> tuple[Variable, list[Variable]]:
    """The graph built through the async API. ``concurrent``: the chains at once, a task
    per node (``asyncio.gather``); else one node after another, as TextGrad's harness
    drives TextGrad (what the engine costs without asyncio's scheduling)."""
    prompts, client, messages = _ours_graph(width)
    replies: list[Any] = [Variable(f"question {w}", role="question") for w in range(width)]
    for _ in range(depth):
        nodes = [
            ChatCompletion.aapply(
                client, messages[w], inputs={"draft": replies[w]}, backward_model=client
            )
            for w in range(width)
        ]
        replies = list(await asyncio.gather(*nodes)) if concurrent else [await n for n in nodes]
    return Sum.apply(replies), prompts


def _ours_forward_sync(width: int, depth: int) -> tuple[Variable, list[Variable]]:
    prompts, client, messages = _ours_graph(width)
    replies: list[Any] = [Variable(f"question {w}", role="question") for w in range(width)]
    for _ in range(depth):
        replies = [
            ChatCompletion.apply(
                client, messages[w], inputs={"draft": replies[w]}, backward_model=client
            )
            for w in range(width)
        ]
    return Sum.apply(replies), prompts


def ours(width: int, depth: int) -> dict[str, float]:
    """Seconds for forward (async API with the chains run concurrently, async API one
    node after another, sync API) and backward of the graph."""

    async def run() -> dict[str, float]:
        with GarbageCollectionTimer() as collector:
            began = _clock()
            root, prompts = await _ours_forward_async(width, depth)
            forwarded = _clock()
            await root.abackward(ROOT_FEEDBACK)
            ended = _clock()
        if any(len(p.grad) != depth for p in prompts):
            raise AssertionError("every system prompt should get one gradient per node")
        return {"forward_s": forwarded - began, "backward_s": ended - forwarded,
                "gc_s": collector.seconds}

    async def run_sequential() -> float:
        began = _clock()
        await _ours_forward_async(width, depth, concurrent=False)
        return _clock() - began

    gc.collect()
    timings = asyncio.run(run())
    gc.collect()  # each graph starts from the same collector state (no full collection due)
    timings["forward_sequential_s"] = asyncio.run(run_sequential())
    gc.collect()
    began = _clock()
    root, _ = _ours_forward_sync(width, depth)
    timings["forward_sync_s"] = _clock() - began
    began = _clock()
    root.backward(ROOT_FEEDBACK)
    timings["backward_sync_s"] = _clock() - began
    return timings


def ours_peak_memory(width: int, depth: int) -> int:
    """Peak bytes allocated while building the graph and running backward."""

    async def run() -> None:
        root, _ = await _ours_forward_async(width, depth)
        await root.abackward(ROOT_FEEDBACK)

    return _peak(lambda: asyncio.run(run()))


# -- TextGrad -------------------------------------------------------------------------


def textgrad_forward(width: int, depth: int, engine: Any) -> tuple[list[Any], list[Any]]:
    """TextGrad's forward of the graph: its system prompts and its last replies."""
    pipeline_textgrad.keep_textgrad_local()  # run by hand, textgrad logs into the cwd
    import textgrad as tg
    from textgrad.autograd import FormattedLLMCall

    prompts = [
        tg.Variable(
            task.stage_prompt(w % 3), requires_grad=True, role_description=task.stage_role(w)
        )
        for w in range(width)
    ]
    calls = [FormattedLLMCall(engine, "{draft}", {"draft": None}, system_prompt=p) for p in prompts]
    replies = [
        tg.Variable(f"question {w}", requires_grad=False, role_description="question")
        for w in range(width)
    ]
    for _ in range(depth):
        replies = [calls[w]({"draft": replies[w]}) for w in range(width)]
    return prompts, replies


def _textgrad_run(width: int, depth: int, timings: dict[str, float] | None) -> None:
    pipeline_textgrad.keep_textgrad_local()
    import textgrad as tg

    engine = _textgrad_engine()
    gc.collect()
    collector = GarbageCollectionTimer().__enter__()
    began = _clock()
    prompts, replies = textgrad_forward(width, depth, engine)
    root = tg.sum(replies)
    forwarded = _clock()
    root.backward(engine)
    ended = _clock()
    collector.__exit__()
    if any(len(p.gradients) != depth for p in prompts):
        raise AssertionError("every system prompt should get one gradient per node")
    if timings is not None:
        timings.update(
            forward_s=forwarded - began, backward_s=ended - forwarded, gc_s=collector.seconds
        )


def textgrad(width: int, depth: int) -> dict[str, float]:
    """Seconds for forward and backward of the graph with TextGrad."""
    timings: dict[str, float] = {}
    _textgrad_run(width, depth, timings)
    return timings


def textgrad_peak_memory(width: int, depth: int) -> int:
    """Peak bytes allocated while TextGrad builds the graph and runs backward."""
    return _peak(lambda: _textgrad_run(width, depth, None))


# -- measuring ------------------------------------------------------------------------


def _peak(run: Callable[[], None]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def ours_minibatch(items: int, depth: int) -> dict[str, float]:
    """Seconds for forward and backward of one chain of ``depth`` chat-completion nodes
    over a list input of ``items`` (each node makes ``items`` calls)."""
    prompt = Variable(task.stage_prompt(0), role=task.stage_role(0), requires_grad=True)
    client = ZeroLatencyClient()
    messages = [{"role": "system", "content": [prompt]}, {"role": "user", "content": ["{draft}"]}]

    async def run() -> dict[str, float]:
        began = _clock()
        reply: Any = [f"question {i}" for i in range(items)]
        for _ in range(depth):
            reply = await ChatCompletion.aapply(
                client, messages, inputs={"draft": reply}, backward_model=client
            )
        forwarded = _clock()
        await reply.abackward(ROOT_FEEDBACK)
        ended = _clock()
        if len(prompt.grad) != depth * items:
            raise AssertionError("the prompt should get one gradient per item per node")
        return {"forward_s": forwarded - began, "backward_s": ended - forwarded}

    gc.collect()
    return asyncio.run(run())


def measure_minibatch(items: int, depth: int = 10, repeats: int = 3) -> dict[str, Any]:
    """Best-of-``repeats`` µs per item call of :func:`ours_minibatch` (this package only:
    TextGrad has no minibatch op)."""
    ours_minibatch(min(items, 4), 2)  # warm imports and caches
    runs = [ours_minibatch(items, depth) for _ in range(repeats)]
    calls = items * depth
    out: dict[str, Any] = {"library": "afnio_langchain", "items": items, "depth": depth,
                           "nodes": depth, "item_calls": calls}
    for key in runs[0]:
        out[key[: -len("_s")] + "_us_per_item_call"] = round(
            min(r[key] for r in runs) / calls * 1e6, 1
        )
    return out


def measure(library: str, width: int = 10, depth: int = 100, repeats: int = 3,
            items: int | None = None) -> dict[str, Any]:
    """Best-of-``repeats`` µs per node (forward, backward) and peak memory.

    Args:
        library: ``"afnio_langchain"`` or ``"textgrad"``.
        width: Independent chains.
        depth: Nodes per chain (``width * depth`` chat-completion nodes in all).
        repeats: Timed runs; the fastest is kept (the least disturbed by other load).
        items: Measure a minibatch instead (:func:`measure_minibatch`, this package only).
    """
    if items is not None:
        return measure_minibatch(items, depth, repeats)
    timed, peak = {
        "afnio_langchain": (ours, ours_peak_memory),
        "textgrad": (textgrad, textgrad_peak_memory),
    }[library]
    nodes = width * depth
    timed(width, min(depth, 5))  # warm imports and caches
    runs = [timed(width, depth) for _ in range(repeats)]
    fastest = min(runs, key=lambda run: run["forward_s"] + run["backward_s"])
    best = {key: min(run[key] for run in runs) for key in runs[0] if key != "gc_s"}
    out: dict[str, Any] = {"library": library, "nodes": nodes, "width": width, "depth": depth}
    for key, seconds in best.items():
        out[key[: -len("_s")] + "_us_per_node"] = round(seconds / nodes * 1e6, 1)
    # Of the fastest forward + backward: not a phase, so not named "..._us_per_node".
    out["gc_per_node_us"] = round(fastest["gc_s"] / nodes * 1e6, 1)
    out["peak_memory_mib"] = round(peak(width, depth) / 2**20, 2)
    return out


def measure_in_subprocess(library: str, **options: int) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter: a heap holding only what the graph needs
    (garbage collection time grows with everything else alive in the process)."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.overhead", library, json.dumps(options)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(root),
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"the overhead benchmark of {library} failed:\n{completed.stderr[-2000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def measure_in_turns(
    libraries: Sequence[str], rounds: int = 3, **options: int
) -> list[dict[str, Any]]:
    """:func:`measure_in_subprocess` of each of ``libraries`` in turns, ``rounds`` times,
    the order reversed every other round: a slow stretch of the machine then falls on
    every library's figures, not on one library's alone (the overhead targets compare
    this package's figures with TextGrad's). One row per library, in the order given:
    each figure is its best round's (:func:`best_of_rounds`).

    Args:
        libraries: ``"afnio_langchain"`` and/or ``"textgrad"``.
        rounds: Fresh interpreters per library.
        **options: :func:`measure`'s keywords.
    """
    taken: dict[str, list[dict[str, Any]]] = {library: [] for library in libraries}
    for r in range(rounds):
        for library in libraries if r % 2 == 0 else list(reversed(libraries)):
            taken[library].append(measure_in_subprocess(library, **options))
    return [best_of_rounds(rows) for rows in taken.values()]


def best_of_rounds(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One library's rows of :func:`measure` merged: each phase's fastest round, the GC
    share of the round with the fastest forward + backward, the least peak memory, and
    ``rounds``, how many rows there were.

    Example:
        >>> rows = [{"library": "textgrad", "forward_us_per_node": 50.0,
        ...          "backward_us_per_node": 180.0, "gc_per_node_us": 3.0,
        ...          "peak_memory_mib": 4.46},
        ...         {"library": "textgrad", "forward_us_per_node": 47.0,
        ...          "backward_us_per_node": 190.0, "gc_per_node_us": 4.0,
        ...          "peak_memory_mib": 4.45}]
        >>> best = best_of_rounds(rows)
        >>> best["forward_us_per_node"], best["backward_us_per_node"], best["gc_per_node_us"]
        (47.0, 180.0, 3.0)
        >>> best["peak_memory_mib"], best["rounds"]
        (4.45, 2)
    """
    best = dict(rows[0])
    for key in rows[0]:
        if key.endswith(("_us_per_node", "_us_per_item_call")):
            best[key] = min(row[key] for row in rows)
    fastest = min(rows, key=_forward_and_backward)
    if "gc_per_node_us" in fastest:
        best["gc_per_node_us"] = fastest["gc_per_node_us"]
    if "peak_memory_mib" in rows[0]:
        best["peak_memory_mib"] = min(row["peak_memory_mib"] for row in rows)
    best["rounds"] = len(rows)
    return best


def _forward_and_backward(row: dict[str, Any]) -> float:
    unit = "_us_per_item_call" if "items" in row else "_us_per_node"
    return float(row["forward" + unit] + row["backward" + unit])


if __name__ == "__main__":
    print(
        json.dumps(measure(sys.argv[1], **json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")))
    )
