"""Run the benchmark suite: ``python benchmarks/run.py [--quick]``.

Writes JSON results, a Markdown summary and (full run) PNG plots under
``benchmarks/results/`` (``benchmarks/results/quick/`` for ``--quick``), and prints,
as its last line, one JSON object with the headline figures:

- ``critical_path_ratio``: wall time of one training step of the 3-stage pipeline
  (minibatch 32, concurrency limit 64) over its critical-path bound;
- ``calls_per_step`` and ``textgrad_calls_per_step``: model calls of that step;
- ``textgrad_wall_ratio``: TextGrad's wall time for the same step over ours;
- ``overhead_us_per_node``: the engine's own time per graph node with a zero-latency
  model (the worst of forward and backward, through the async and the sync API).

TextGrad figures are null when TextGrad is not installed (see requirements.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import overhead, pipeline_textgrad, report  # noqa: E402
from benchmarks.scenarios import OursRunner, StepConfig, TextGradRunner, log  # noqa: E402
from benchmarks.server_process import ServerProcess  # noqa: E402

HEADLINE = StepConfig(minibatch=32, limit=64)
RESULTS = ROOT / "benchmarks" / "results"
TARGETS = {
    "critical_path_ratio": 1.2,
    "textgrad_wall_ratio": 5.0,
    "overhead_us_per_node": 1000.0,  # 1% of a 100 ms call
}


def machine_info() -> dict[str, Any]:
    """The machine and software the figures were measured on."""
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("afnio-langchain", "langchain-core", "langchain-openai", "openai", "textgrad"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu_model": cpu_model,
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def plan(quick: bool) -> dict[str, list]:
    """Which configurations each scenario measures."""
    if quick:
        return {
            "steps": [HEADLINE, StepConfig(32, 64, mode="minibatch")],
            "textgrad": [(32, 0)],
            "scaling_minibatch": [],
            "scaling_depth": [],
        }
    steps = [
        StepConfig(minibatch, limit, mode=mode, client=client)
        for client in ("openai", "langchain")
        for mode in ("pipelined", "minibatch")
        for minibatch in (1, 8, 32)
        for limit in (8, 64)
    ]
    return {
        "steps": steps,
        "textgrad": [(1, 0), (8, 0), (32, 0), (32, 32)],
        "scaling_minibatch": [
            StepConfig(minibatch, 64, mode=mode)
            for mode in ("pipelined", "minibatch")
            for minibatch in (1, 2, 4, 8, 16, 32, 64, 128)
        ],
        "scaling_depth": [StepConfig(8, 64, depth=depth) for depth in range(1, 9)],
    }


async def run_ours(runner: OursRunner, todo: dict[str, list], repeats: int) -> dict[str, list]:
    """Every configuration of this package's scenarios, on one event loop."""
    done: dict[StepConfig, dict[str, Any]] = {}

    async def measure(config: StepConfig) -> dict[str, Any]:
        if config not in done:
            done[config] = await runner.run(config, repeats)
        return done[config]

    out: dict[str, list] = {}
    for scenario in ("steps", "scaling_minibatch", "scaling_depth"):
        if todo[scenario]:
            log(f"{scenario}:")
        out[scenario] = [await measure(config) for config in todo[scenario]]
    return out


def worst_per_node(row: dict[str, Any]) -> float:
    """The worst µs per node of an overhead row (forward or backward, async or sync API)."""
    return max(v for k, v in row.items() if k.endswith("_us_per_node"))


def headline(
    steps: list[dict[str, Any]],
    textgrad_steps: list[dict[str, Any]],
    overheads: list[dict[str, Any]],
    machine: dict[str, Any],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The summary object printed last."""
    ours = next(
        s
        for s in steps
        if s["client"] == HEADLINE.client
        and s["mode"] == HEADLINE.mode
        and s["minibatch"] == HEADLINE.minibatch
        and s["limit"] == HEADLINE.limit
        and s["depth"] == HEADLINE.depth
    )
    minibatch_mode = next(
        (
            s
            for s in steps
            if s["client"] == HEADLINE.client
            and s["mode"] == "minibatch"
            and s["minibatch"] == HEADLINE.minibatch
            and s["limit"] == HEADLINE.limit
            and s["depth"] == HEADLINE.depth
        ),
        None,
    )
    tg = next(
        (
            t
            for t in textgrad_steps
            if t["minibatch"] == HEADLINE.minibatch and t["mode"] == "sequential"
        ),
        None,
    )
    ours_overhead = next(o for o in overheads if o["library"] == "afnio_langchain")
    tg_overhead = next((o for o in overheads if o["library"] == "textgrad"), None)
    per_node = worst_per_node(ours_overhead)
    summary: dict[str, Any] = {
        "critical_path_ratio": ours["ratio"],
        "calls_per_step": ours["calls_per_step"],
        "textgrad_calls_per_step": tg["calls_per_step"] if tg else None,
        "textgrad_wall_ratio": round(tg["wall_s"] / ours["wall_s"], 2) if tg else None,
        "overhead_us_per_node": per_node,
        "wall_s": ours["wall_s"],
        "bound_s": ours["bound_s"],
        "best_ratio": ours["best_ratio"],
        "minibatch_mode_ratio": minibatch_mode["ratio"] if minibatch_mode else None,
        "textgrad_wall_s": tg["wall_s"] if tg else None,
        "tokens_per_step": {
            "input": ours["usage"]["total"]["input_tokens"],
            "output": ours["usage"]["total"]["output_tokens"],
        },
        "textgrad_tokens_per_step": {
            "input": tg["usage"]["total"]["input_tokens"],
            "output": tg["usage"]["total"]["output_tokens"],
        }
        if tg
        else None,
        "textgrad_overhead_us_per_node": (worst_per_node(tg_overhead) if tg_overhead else None),
        "peak_memory_mib": ours_overhead["peak_memory_mib"],
        "textgrad_peak_memory_mib": tg_overhead["peak_memory_mib"] if tg_overhead else None,
        "step": {
            "minibatch": HEADLINE.minibatch,
            "limit": HEADLINE.limit,
            "depth": HEADLINE.depth,
            "mode": HEADLINE.mode,
            "client": HEADLINE.client,
        },
        "latency_s": settings["latency"],
        "per_token_latency_s": settings["per_token_latency"],
        "machine": f"{machine['cpu_model']}, {machine['nproc']} CPUs, Python {machine['python']}",
    }
    met = {
        "critical_path_ratio": summary["critical_path_ratio"] <= TARGETS["critical_path_ratio"],
        "overhead_us_per_node": per_node < TARGETS["overhead_us_per_node"],
    }
    if tg:
        met["fewer_calls_than_textgrad"] = (
            summary["calls_per_step"] < summary["textgrad_calls_per_step"]
        )
        met["textgrad_wall_ratio"] = (
            summary["textgrad_wall_ratio"] >= TARGETS["textgrad_wall_ratio"]
        )
    summary["targets_met"] = met
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the headline scenarios only")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per call")
    parser.add_argument(
        "--per-token-latency", type=float, default=0.001, help="extra seconds per output token"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed steps per configuration (quick: 5, else 3)"
    )
    parser.add_argument("--no-textgrad", action="store_true", help="skip TextGrad")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    args.repeats = args.repeats or (5 if args.quick else 3)
    out_dir = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    machine = machine_info()
    settings = {
        "latency": args.latency,
        "per_token_latency": args.per_token_latency,
        "forward_words": 24,
        "feedback_words": 16,
        "repeats": args.repeats,
        "condense_threshold": overhead_settings()["condense_threshold"],
    }
    todo = plan(args.quick)
    use_textgrad = not args.no_textgrad and pipeline_textgrad.available()
    if not args.no_textgrad and not use_textgrad:
        log(
            "TextGrad is not installed: its figures are null "
            "(pip install -r benchmarks/requirements.txt)"
        )

    with ServerProcess(
        args.latency,
        args.per_token_latency,
        forward_words=settings["forward_words"],
        feedback_words=settings["feedback_words"],
    ) as server:
        log(f"server at {server.base_url}: {args.latency} s + {args.per_token_latency} s/token")
        # This package first, before TextGrad (and litellm) are imported: a bigger heap
        # makes every garbage collection slower, and the two must not tax each other.
        ours = asyncio.run(run_ours(OursRunner(server), todo, args.repeats))
        log("engine overhead (zero-latency model, 1,000 nodes):")
        overheads = [overhead.measure_in_subprocess("afnio_langchain")]
        log(f"  ours: {overheads[0]}")
        textgrad_steps: list[dict[str, Any]] = []
        if use_textgrad:
            with pipeline_textgrad.textgrad_environment(server.base_url):
                log("textgrad:")
                runner = TextGradRunner(server)
                textgrad_steps = [
                    runner.run(minibatch, forward_threads=threads, bound_limit=HEADLINE.limit)
                    for minibatch, threads in todo["textgrad"]
                ]
                overheads.append(overhead.measure_in_subprocess("textgrad"))
                log(f"  textgrad overhead: {overheads[-1]}")

    steps = ours["steps"] + textgrad_steps
    summary = headline(ours["steps"], textgrad_steps, overheads, machine, settings)
    plots = []
    if ours["scaling_minibatch"]:
        path = out_dir / "scaling_minibatch.png"
        if report.plot_scaling(
            path,
            ours["scaling_minibatch"],
            "minibatch",
            "One training step against minibatch size (3 stages, limit 64)",
            textgrad_steps,
        ):
            plots.append(str(path))
    if ours["scaling_depth"]:
        path = out_dir / "scaling_depth.png"
        if report.plot_scaling(
            path,
            ours["scaling_depth"],
            "depth",
            "One training step against pipeline depth (minibatch 8)",
        ):
            plots.append(str(path))
    report.write_json(out_dir / "steps.json", steps)
    report.write_json(out_dir / "overhead.json", overheads)
    if ours["scaling_minibatch"] or ours["scaling_depth"]:
        report.write_json(
            out_dir / "scaling.json",
            {"minibatch": ours["scaling_minibatch"], "depth": ours["scaling_depth"]},
        )
    elapsed = round(time.perf_counter() - began, 1)
    report.write_json(
        out_dir / "summary.json",
        {"summary": summary, "machine": machine, "settings": settings, "elapsed_s": elapsed},
    )
    (out_dir / "summary.md").write_text(
        report.markdown(summary, steps, overheads, machine, settings, plots), encoding="utf-8"
    )
    log(f"results in {out_dir} ({elapsed} s)")
    print(report.step_table(steps))
    print(json.dumps(summary))
    return summary


def overhead_settings() -> dict[str, Any]:
    """Settings of this package's pipeline that the results depend on."""
    from benchmarks.pipeline_ours import CONDENSE_THRESHOLD

    return {"condense_threshold": CONDENSE_THRESHOLD}


if __name__ == "__main__":
    main()
