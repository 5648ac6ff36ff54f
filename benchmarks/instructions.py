"""Instructions per forward node, counted by valgrind: ``python -m benchmarks.instructions``.

CPU time per node moves by a tenth and more from run to run on a shared virtual
machine; the number of instructions the interpreter executes does not. This runs the
forward graph of :mod:`benchmarks.overhead` (``width`` chains, instant model) under
``valgrind --tool=callgrind`` at two depths, for this package (the async API driven
node by node, with the chains run at once through ``asyncio.gather``, and the sync
API) and for TextGrad, and reports the difference over the extra nodes: the
instructions of one node, without the interpreter's start, the imports and the
warm-up. ``gather`` runs the same ``asyncio.gather`` calls over coroutines that return
at once, without the engine: asyncio's own share of the chains run at once. The
garbage collector is off (when it runs depends on allocation counts, not on the
node's work), and string hashing is seeded (dict and set layouts are the same in
every run).
Needs valgrind (``apt install valgrind``); each measurement takes one to three minutes
(valgrind runs Python about 50 times slower). The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODES = ("sequential", "concurrent", "sync", "textgrad", "gather")
_COLLECTED = re.compile(r"Collected\s*:\s*([\d,]+)")


async def _returns_at_once() -> None:
    return None


async def _bare_gather(width: int, depth: int) -> None:
    """asyncio's own share of the chains run at once: ``depth`` gathers of ``width``
    coroutines that return at once, no engine (``gather`` mode)."""
    for _ in range(depth):
        await asyncio.gather(*[_returns_at_once() for _ in range(width)])


def build_forward(mode: str, width: int, depth: int) -> None:
    """The forward graph of ``width`` chains of ``depth`` nodes, in ``mode``; for
    ``gather``, the same gathers with no graph."""
    if mode == "gather":  # before the import: no engine at all
        asyncio.run(_bare_gather(width, depth))
        return
    from benchmarks import overhead

    if mode == "textgrad":
        overhead.textgrad_forward(width, depth, overhead._textgrad_engine())
        return
    if mode == "sync":
        overhead._ours_forward_sync(width, depth)
        return
    asyncio.run(overhead._ours_forward_async(width, depth, concurrent=mode == "concurrent"))


def instructions(mode: str, width: int, depth: int) -> int:
    """Instructions valgrind counts for a whole run of :func:`build_forward` (after a
    warm-up graph of depth 2)."""
    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["PYTHONHASHSEED"] = "0"  # the same dict and set layouts in every run
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # TextGrad's litellm: no network at import
        completed = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={scratch}/out",
             sys.executable, "-m", "benchmarks.instructions", "--run", mode,
             str(width), str(depth)],
            capture_output=True, text=True, env=env, cwd=scratch, check=False,
        )
    found = _COLLECTED.search(completed.stderr)
    if completed.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind failed ({mode}, depth {depth}):\n{completed.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_node(mode: str, width: int = 10, depths: tuple[int, int] = (20, 60)) -> int:
    """Instructions of one node: the difference between two depths over the extra nodes."""
    low, high = (instructions(mode, width, d) for d in depths)
    return round((high - low) / (width * (depths[1] - depths[0])))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--width", type=int, default=10)
    parser.add_argument("--depths", default="20,60", help="the two depths, comma-separated")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode {unknown[0]!r}; expected one of {MODES}")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt install valgrind)")
    low, high = (int(d) for d in args.depths.split(","))
    result: dict[str, Any] = {"width": args.width, "depths": [low, high],
                              "python": sys.version.split()[0]}
    for mode in modes:
        result[f"{mode}_instructions_per_node"] = per_node(mode, args.width, (low, high))
        print(f"{mode}: {result[f'{mode}_instructions_per_node']:,} instructions per node",
              flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--run"]:  # one measured run, inside valgrind
        gc.disable()
        mode, width, depth = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        build_forward(mode, width, 2)  # warm imports and caches
        build_forward(mode, width, depth)
    else:
        main()
