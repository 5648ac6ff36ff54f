"""Run the benchmark suite: ``python benchmarks/run.py [--quick]``.

Writes JSON results, a Markdown summary and (full run) PNG plots under
``benchmarks/results/`` (``benchmarks/results/quick/`` for ``--quick``), and prints,
as its last line, one JSON object with the headline figures:

- ``critical_path_ratio``: wall time of one training step of the 3-stage pipeline
  (minibatch 32, concurrency limit 64) over its critical-path bound, the worst over
  the pipelined and list-input minibatch modes through the ``openai`` client and
  through ``ChatOpenAI``; ``critical_path_ratios`` names each one;
- ``loaded_critical_path_ratio``: the same steps with a CPU-bound process running
  beside them (``loaded_critical_path_ratios`` names each);
- ``calls_per_step`` and ``textgrad_calls_per_step``: model calls of that step;
- ``textgrad_wall_ratio``: TextGrad's wall time for the same step over ours;
- ``tokens_ratio_vs_textgrad``: our input tokens per step over TextGrad's;
- ``overhead_us_per_node`` and ``textgrad_overhead_us_per_node``: each engine's own CPU
  time per graph node with a zero-latency model (the worst of forward and backward,
  and for this package of its async and sync API), on the same 1,000-node graph;
  ``targets_met`` compares each phase with TextGrad's same phase
  (``overhead_forward_us_per_node``, ``overhead_backward_us_per_node``), and
  ``overhead_us_per_node`` is met only when both are;
- ``cache_calls_saved``: model calls an LLM cache saves over a whole ``fit`` run
  with rollbacks;
- ``load_average``: the machine's load average at the start; ``cpu_steal_percent``:
  the share of CPU time the hypervisor gave to other guests during the timed steps
  (``steps``) and the loaded steps (``loaded``), null off Linux; ``machine_busy`` (and
  a warning on stderr) when either says the machine was not idle.

The four paths' steps are taken in turns, one step of each per round, so that a
slower stretch of the machine falls on all of them alike; so are the two libraries'
overhead runs (three fresh interpreters each, the best round kept), which the overhead
targets compare.

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

from benchmarks import cache_fit, overhead, pipeline_textgrad, report  # noqa: E402
from benchmarks.background import busy_core  # noqa: E402
from benchmarks.cpu_steal import StealMeter  # noqa: E402
from benchmarks.placement import Placement, plan_placement  # noqa: E402
from benchmarks.scenarios import OursRunner, StepConfig, TextGradRunner, log  # noqa: E402
from benchmarks.server_process import ServerProcess  # noqa: E402

HEADLINE = StepConfig(minibatch=32, limit=64)
HEADLINE_STEPS = [
    StepConfig(32, 64, mode=mode, client=client)
    for client in ("openai", "langchain")
    for mode in ("pipelined", "minibatch")
]
"""The step in every mode and through every client: the worst is the headline ratio."""
RESULTS = ROOT / "benchmarks" / "results"
TARGETS = {
    "critical_path_ratio": 1.05,
    "textgrad_wall_ratio": 5.0,
    "tokens_ratio_vs_textgrad": 0.25,
}
BUSY_LOAD_PER_CPU = 0.25
"""A 1-minute load average above this per CPU at the start: the figures are suspect."""
BUSY_STEAL_PERCENT = 10.0
"""A stolen share of CPU time above this over the timed steps: other guests of the same
host held the cores (see :mod:`benchmarks.cpu_steal`), and the figures are suspect."""


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
            "steps": list(HEADLINE_STEPS),
            "loaded": list(HEADLINE_STEPS),
            "textgrad": [(32, 0)],
            "scaling_minibatch": [],
            "scaling_depth": [],
            "overhead_scaling": [],
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
        "loaded": list(HEADLINE_STEPS),
        "textgrad": [(1, 0), (8, 0), (32, 0), (32, 32)],
        "scaling_minibatch": [
            StepConfig(minibatch, 64, mode=mode)
            for mode in ("pipelined", "minibatch")
            for minibatch in (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)
        ],
        "scaling_depth": [StepConfig(8, 64, depth=depth) for depth in range(1, 9)],
        "overhead_scaling": [
            {"width": 1, "depth": 100},
            {"width": 10, "depth": 100},
            {"width": 100, "depth": 100},
            *({"items": items, "depth": 10} for items in (1, 32, 256, 1024)),
        ],
    }


async def run_ours(
    runner: OursRunner,
    todo: dict[str, list],
    repeats: int,
    placement: Placement | None = None,
) -> dict[str, list]:
    """Every configuration of this package's scenarios, on one event loop. The steps
    (and the loaded steps) are measured in turns, one of each per round; the stolen
    share of CPU time over each set is kept in ``steal_percent``. The loaded steps' busy
    process runs on the measured process's CPUs (``placement.client``)."""
    done: dict[StepConfig, dict[str, Any]] = {}

    async def measure(config: StepConfig) -> dict[str, Any]:
        if config not in done:
            done[config] = await runner.run(config, repeats)
        return done[config]

    out: dict[str, Any] = {"steal_percent": {}}
    if todo["steps"]:
        log("steps (in turns, one of each per round):")
        with StealMeter() as steal:
            rows = await runner.run_together(list(todo["steps"]), repeats)
        out["steal_percent"]["steps"] = steal.percent
        done.update(zip(todo["steps"], rows))
    out["steps"] = [done[config] for config in todo["steps"]]
    for scenario in ("scaling_minibatch", "scaling_depth"):
        if todo[scenario]:
            log(f"{scenario}:")
        out[scenario] = [await measure(config) for config in todo[scenario]]
    if todo["loaded"]:
        log("loaded (a CPU-bound process beside the step):")
        with busy_core(placement.client if placement else None), StealMeter() as steal:
            loaded = await runner.run_together(list(todo["loaded"]), repeats)
        out["steal_percent"]["loaded"] = steal.percent
        out["loaded"] = [{**row, "loaded": True} for row in loaded]
    else:
        out["loaded"] = []
    return out


TEXTGRAD_OVERHEAD_GRAPH = {"width": 10, "depth": 100}
"""The graph of :func:`benchmarks.overhead.measure`'s defaults (1,000 nodes)."""


def worst_per_node(row: dict[str, Any], phase: str = "") -> float:
    """The worst µs per node of an overhead row (forward or backward, async or sync API);
    with ``phase`` (``"forward"``, ``"backward"``), of that phase only.

    Example:
        >>> row = {"forward_us_per_node": 60.0, "forward_sync_us_per_node": 90.0,
        ...        "backward_us_per_node": 150.0, "gc_per_node_us": 5.0}
        >>> worst_per_node(row), worst_per_node(row, "forward")
        (150.0, 90.0)
    """
    return max(
        v for k, v in row.items() if k.endswith("_us_per_node") and k.startswith(phase)
    )


OVERHEAD_PHASES = ("forward", "backward")


def _name(step: dict[str, Any]) -> str:
    return f"{step['client']}/{step['mode']}"


def _headline_rows(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    wanted = {(c.client, c.mode, c.minibatch, c.limit, c.depth) for c in HEADLINE_STEPS}
    return [
        s for s in steps
        if (s["client"], s["mode"], s["minibatch"], s["limit"], s["depth"]) in wanted
    ]


def is_busy(
    load_average: list[float], nproc: int | None, steal_percent: float | None = None
) -> bool:
    """Whether the machine was busy: a 1-minute load above :data:`BUSY_LOAD_PER_CPU` per
    CPU, or more than :data:`BUSY_STEAL_PERCENT` of CPU time stolen by the hypervisor.

    Example:
        >>> is_busy([0.3, 0.2, 0.1], 2), is_busy([1.5, 1.0, 0.8], 2)
        (False, True)
        >>> is_busy([0.3, 0.2, 0.1], 2, steal_percent=30.0)
        True
    """
    return load_average[0] > BUSY_LOAD_PER_CPU * (nproc or 1) or too_much_stolen(steal_percent)


def too_much_stolen(steal_percent: float | None) -> bool:
    """Whether more than :data:`BUSY_STEAL_PERCENT` of CPU time was stolen (None: unknown).

    Example:
        >>> too_much_stolen(30.0), too_much_stolen(2.0), too_much_stolen(None)
        (True, False, False)
    """
    return steal_percent is not None and steal_percent > BUSY_STEAL_PERCENT


def headline(
    steps: list[dict[str, Any]],
    textgrad_steps: list[dict[str, Any]],
    overheads: list[dict[str, Any]],
    machine: dict[str, Any],
    settings: dict[str, Any],
    loaded: list[dict[str, Any]] | None = None,
    cache: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary object printed last."""
    rows = _headline_rows(steps)
    ratios = {_name(s): s["ratio"] for s in rows}
    worst = max(rows, key=lambda s: s["ratio"])
    ours = next(s for s in rows if s["client"] == HEADLINE.client and s["mode"] == HEADLINE.mode)
    loaded_ratios = {_name(s): s["ratio"] for s in _headline_rows(loaded or [])}
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
    tg_per_node = worst_per_node(tg_overhead) if tg_overhead else None
    tokens = ours["usage"]["total"]
    steal = machine.get("steal_percent") or {}
    summary: dict[str, Any] = {
        "critical_path_ratio": worst["ratio"],
        "critical_path_ratios": ratios,
        "worst_path": _name(worst),
        "loaded_critical_path_ratio": max(loaded_ratios.values()) if loaded_ratios else None,
        "loaded_critical_path_ratios": loaded_ratios or None,
        "overhead_us_per_node": per_node,
        "textgrad_overhead_us_per_node": tg_per_node,
        "overhead_per_phase_us": {
            k[: -len("_us_per_node")]: v for k, v in ours_overhead.items() if k.endswith("_us_per_node")
        },
        "textgrad_overhead_per_phase_us": {
            k[: -len("_us_per_node")]: v for k, v in tg_overhead.items() if k.endswith("_us_per_node")
        }
        if tg_overhead
        else None,
        "tokens_ratio_vs_textgrad": round(tokens["input_tokens"] / tg["usage"]["total"]["input_tokens"], 4)
        if tg
        else None,
        "cache_calls_saved": cache["calls_saved"] if cache else None,
        "cache_hits": cache["with_cache"]["cache_hits"] if cache else None,
        "calls_per_step": ours["calls_per_step"],
        "textgrad_calls_per_step": tg["calls_per_step"] if tg else None,
        "textgrad_wall_ratio": round(tg["wall_s"] / ours["wall_s"], 2) if tg else None,
        "wall_s": ours["wall_s"],
        "bound_s": ours["bound_s"],
        "textgrad_wall_s": tg["wall_s"] if tg else None,
        "tokens_per_step": {
            "input": tokens["input_tokens"],
            "output": tokens["output_tokens"],
            "prefix_cacheable_input": tokens.get("cached_input_tokens"),
        },
        "textgrad_tokens_per_step": {
            "input": tg["usage"]["total"]["input_tokens"],
            "output": tg["usage"]["total"]["output_tokens"],
            "prefix_cacheable_input": tg["usage"]["total"].get("cached_input_tokens"),
        }
        if tg
        else None,
        "peak_memory_mib": ours_overhead["peak_memory_mib"],
        "textgrad_peak_memory_mib": tg_overhead["peak_memory_mib"] if tg_overhead else None,
        "step": {"minibatch": HEADLINE.minibatch, "limit": HEADLINE.limit, "depth": HEADLINE.depth},
        "latency_s": settings["latency"],
        "per_token_latency_s": settings["per_token_latency"],
        "placement": settings.get("placement"),
        "load_average": machine["load_average"],
        "load_average_end": machine.get("load_average_end"),
        "cpu_steal_percent": steal or None,
        "machine_busy": is_busy(machine["load_average"], machine["nproc"], steal.get("steps")),
        "machine": f"{machine['cpu_model']}, {machine['nproc']} CPUs, Python {machine['python']}",
    }
    met = {"critical_path_ratio": summary["critical_path_ratio"] <= TARGETS["critical_path_ratio"]}
    if tg:
        # The issue asks for forward and backward each: the worst phase of one library
        # against the worst of the other would pass a forward twice TextGrad's.
        by_phase = {
            phase: worst_per_node(ours_overhead, phase) <= worst_per_node(tg_overhead, phase)
            for phase in OVERHEAD_PHASES
        } if tg_overhead else {}
        for phase, below in by_phase.items():
            met[f"overhead_{phase}_us_per_node"] = below
        met["overhead_us_per_node"] = all(by_phase.values()) if by_phase else None
        met["fewer_calls_than_textgrad"] = (
            summary["calls_per_step"] < summary["textgrad_calls_per_step"]
        )
        met["textgrad_wall_ratio"] = (
            summary["textgrad_wall_ratio"] >= TARGETS["textgrad_wall_ratio"]
        )
        met["tokens_ratio_vs_textgrad"] = (
            summary["tokens_ratio_vs_textgrad"] <= TARGETS["tokens_ratio_vs_textgrad"]
        )
    if cache:
        met["cache_calls_saved"] = cache["calls_saved"] > 0
    summary["targets_met"] = met
    return summary


OVERHEAD_ROUNDS = 3
"""Fresh interpreters per library for the headline overhead figures, taken in turns."""


def measure_overheads(
    libraries: list[str], scaling: list[dict[str, int]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The engine overhead rows: the 1,000-node graph for each library, and the scaling
    sizes (TextGrad's where it has them: no minibatch op, and its 1,000 nodes are the
    first rows), each library's runs taken in turns with the others'
    (:func:`benchmarks.overhead.measure_in_turns`)."""
    log(f"engine overhead (zero-latency model, 1,000 nodes, {OVERHEAD_ROUNDS} rounds in turns):")
    overheads = overhead.measure_in_turns(libraries, rounds=OVERHEAD_ROUNDS)
    for row in overheads:
        log(f"  {row['library']}: {row}")
    rows = []
    for options in scaling:
        mine = libraries
        if "items" in options or options == TEXTGRAD_OVERHEAD_GRAPH:
            mine = [library for library in libraries if library != "textgrad"]
        for row in overhead.measure_in_turns(mine, rounds=1, **options):
            log(f"  scaling {row['library']} {options}: {row}")
            rows.append(row)
    return overheads, rows


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
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="leave every process where the scheduler puts it (default: the server on a "
        "CPU of its own, see benchmarks/placement.py)",
    )
    args = parser.parse_args(argv)
    began = time.perf_counter()
    args.repeats = args.repeats or (5 if args.quick else 3)
    out_dir = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    machine = machine_info()
    if is_busy(machine["load_average"], machine["nproc"]):
        log(
            f"WARNING: the machine is busy (load average {machine['load_average']} on "
            f"{machine['nproc']} CPUs): wall-time figures will be high; rerun when it is idle"
        )
    settings = {
        "latency": args.latency,
        "per_token_latency": args.per_token_latency,
        "forward_words": 24,
        "feedback_words": 16,
        "repeats": args.repeats,
        "condense_threshold": overhead_settings()["condense_threshold"],
    }
    placement = plan_placement(pin=not args.no_pin)
    placement.pin_this_process()
    settings["placement"] = placement.describe()
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
        cpus=placement.server,
    ) as server:
        log(f"server at {server.base_url}: {args.latency} s + {args.per_token_latency} s/token")
        # This package first, before TextGrad (and litellm) are imported: a bigger heap
        # makes every garbage collection slower, and the two must not tax each other.
        ours = asyncio.run(run_ours(OursRunner(server), todo, args.repeats, placement))
        log("LLM cache over a fit run with rollbacks:")
        cache = cache_fit.measure(server)
        log(f"  {cache}")
        textgrad_steps: list[dict[str, Any]] = []
        libraries = ["afnio_langchain", "textgrad"] if use_textgrad else ["afnio_langchain"]
        # TextGrad's steps and overhead interpreters read it; ours ignore it.
        with pipeline_textgrad.textgrad_environment(server.base_url):
            if use_textgrad:
                log("textgrad:")
                runner = TextGradRunner(server)
                textgrad_steps = [
                    runner.run(minibatch, forward_threads=threads, bound_limit=HEADLINE.limit)
                    for minibatch, threads in todo["textgrad"]
                ]
            overheads, overhead_scaling = measure_overheads(libraries, todo["overhead_scaling"])

    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["steal_percent"] = ours["steal_percent"]
    stolen = ours["steal_percent"].get("steps")
    if too_much_stolen(stolen):
        log(
            f"WARNING: the hypervisor gave {stolen}% of this machine's CPU time to other "
            "guests during the timed steps: wall-time figures will be high; rerun when it is idle"
        )
    steps = ours["steps"] + ours["loaded"] + textgrad_steps
    summary = headline(
        ours["steps"], textgrad_steps, overheads, machine, settings, ours["loaded"], cache
    )
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
    if overhead_scaling:
        path = out_dir / "scaling_overhead.png"
        if report.plot_overhead(path, overheads + overhead_scaling):
            plots.append(str(path))
    report.write_json(out_dir / "steps.json", steps)
    report.write_json(out_dir / "overhead.json", overheads + overhead_scaling)
    report.write_json(out_dir / "cache.json", cache)
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
        report.markdown(summary, steps, overheads + overhead_scaling, machine, settings, plots),
        encoding="utf-8",
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
