"""Writing the results: JSON files, a Markdown summary and PNG plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["markdown", "plot_scaling", "write_json"]


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _calls(usage: dict[str, Any]) -> str:
    return "/".join(str(usage[p]["calls"]) for p in ("forward", "backward", "optimizer"))


def _tokens(usage: dict[str, Any], key: str) -> str:
    return f"{usage['total'][key]:,}"


def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _cpu_per_call(step: dict[str, Any]) -> str:
    cpu = step.get("client_cpu_s")
    return "–" if cpu is None else f"{1000 * cpu / step['calls_per_step']:.2f}"


def step_table(steps: Sequence[dict[str, Any]]) -> str:
    """One Markdown row per step configuration.

    Example:
        >>> usage = {p: {"calls": 1, "input_tokens": 2, "output_tokens": 3}
        ...          for p in ("forward", "backward", "optimizer", "total")}
        >>> row = {"library": "afnio_langchain", "client": "openai", "mode": "pipelined",
        ...        "minibatch": 1, "limit": 8, "wall_s": 1.0, "bound_s": 0.9, "ratio": 1.11,
        ...        "usage": usage, "calls_per_step": 3}
        >>> step_table([row]).splitlines()[2]
        '| afnio_langchain | openai | pipelined | 1 | 8 | 1.000 | 0.900 | 1.110 | 3 (1/1/1) | 2 | 3 | – |'
    """
    lines = [
        "| library | client | mode | minibatch | limit | wall (s) | bound (s) | ratio "
        "| calls (fwd/bwd/opt) | input tokens | output tokens | client CPU (ms/call) |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for s in steps:
        lines.append(
            f"| {s['library']} | {s['client']} | {s['mode']}{' (loaded)' if s.get('loaded') else ''} "
            f"| {s['minibatch']} | {s['limit']} "
            f"| {_num(s['wall_s'])} | {_num(s.get('bound_s'))} | {_num(s.get('ratio'))} "
            f"| {s['calls_per_step']} ({_calls(s['usage'])}) | {_tokens(s['usage'], 'input_tokens')} "
            f"| {_tokens(s['usage'], 'output_tokens')} | {_cpu_per_call(s)} |"
        )
    return "\n".join(lines)


def overhead_table(rows: Sequence[dict[str, Any]]) -> str:
    """One Markdown row per library of the engine-overhead scenario."""
    lines = [
        "| library | nodes | minibatch | forward (µs) | backward (µs) "
        "| forward, one node after another (µs) | sync forward (µs) "
        "| sync backward (µs) | per | GC in fwd+bwd (µs) | peak memory (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        per = "item call" if "items" in r else "node"
        unit = "_us_per_item_call" if "items" in r else "_us_per_node"
        lines.append(
            f"| {r['library']} | {r['nodes']} | {r.get('items', 1)} "
            f"| {_num(r.get('forward' + unit), 1)} | {_num(r.get('backward' + unit), 1)} "
            f"| {_num(r.get('forward_sequential' + unit), 1)} "
            f"| {_num(r.get('forward_sync' + unit), 1)} | {_num(r.get('backward_sync' + unit), 1)} "
            f"| {per} | {_num(r.get('gc_per_node_us'), 1)} | {_num(r.get('peak_memory_mib'), 2)} |"
        )
    return "\n".join(lines)


def markdown(
    summary: dict[str, Any],
    steps: Sequence[dict[str, Any]],
    overhead: Sequence[dict[str, Any]],
    machine: dict[str, Any],
    settings: dict[str, Any],
    plots: Sequence[str] = (),
) -> str:
    """The whole Markdown report."""
    parts = [
        "# Benchmark results",
        "",
        f"Machine: {machine['cpu_model']}, {machine['nproc']} CPUs, Python "
        f"{machine['python']} ({machine['platform']}); load average at start "
        f"{machine['load_average']}.",
        f"Server: {settings['latency']} s per call + {settings['per_token_latency']} s per "
        f"output token; forward replies {settings['forward_words']} words, gradients "
        f"{settings['feedback_words']} words.",
        "",
        "## Headline",
        "",
        "```json",
        json.dumps(summary, indent=2),
        "```",
        "",
        "## Training steps",
        "",
        "Wall time of one step (median of the timed runs), the critical-path bound, their "
        "ratio, model calls per purpose and tokens (the server's whitespace count).",
        "",
        step_table(steps),
        "",
        "## Engine overhead (zero-latency fake model)",
        "",
        overhead_table(overhead),
        "",
    ]
    for plot in plots:
        parts += [f"![{Path(plot).stem}]({Path(plot).name})", ""]
    return "\n".join(parts)


def _pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive backend, None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_scaling(
    path: Path,
    rows: Sequence[dict[str, Any]],
    x_key: str,
    title: str,
    textgrad: Sequence[dict[str, Any]] = (),
) -> bool:
    """Wall time and bound against ``x_key`` (one line per mode); False without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    modes = sorted({r["mode"] for r in rows})
    for mode in modes:
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r[x_key])
        ax.plot(
            [r[x_key] for r in mine],
            [r["wall_s"] for r in mine],
            "o-",
            label=f"afnio-langchain ({mode})",
        )
    bound = sorted({r[x_key]: r["bound_s"] for r in rows}.items())
    ax.plot([x for x, _ in bound], [b for _, b in bound], "k--", label="critical-path bound")
    markers = iter(("s-", "D"))
    for mode in sorted({r["mode"] for r in textgrad}, key=lambda m: m != "sequential"):
        tg = sorted((r for r in textgrad if r["mode"] == mode), key=lambda r: r[x_key])
        ax.plot(
            [r[x_key] for r in tg],
            [r["wall_s"] for r in tg],
            next(markers, "^"),
            color="tab:red",
            label=f"TextGrad ({mode})",
        )
    ax.set_xlabel(x_key.replace("_", " "))
    ax.set_ylabel("wall time of one training step (s)")
    if x_key == "minibatch":
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_overhead(path: Path, rows: Sequence[dict[str, Any]]) -> bool:
    """Engine CPU per node against graph size, and per item call against minibatch size
    (one line per phase); TextGrad's per node as black lines (it has no minibatch op).
    False without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False

    def graphs_of(library: str) -> list[dict[str, Any]]:
        by_size = {r["nodes"]: r for r in rows if r["library"] == library and "items" not in r}
        return [by_size[n] for n in sorted(by_size)]  # each size once: rows may repeat one

    graphs, textgrad = graphs_of("afnio_langchain"), graphs_of("textgrad")
    batches = sorted((r for r in rows if "items" in r), key=lambda r: r["items"])
    fig, (by_nodes, by_items) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=120, sharey=True)
    phases = ("forward", "backward", "forward_sync", "backward_sync")
    for phase in phases:
        label = phase.replace("_sync", " (sync API)")
        by_nodes.plot(
            [r["nodes"] for r in graphs], [r[f"{phase}_us_per_node"] for r in graphs], "o-",
            label=label,
        )
        if batches and f"{phase}_us_per_item_call" in batches[0]:
            by_items.plot(
                [r["items"] for r in batches],
                [r[f"{phase}_us_per_item_call"] for r in batches],
                "o-",
                label=label,
            )
    for phase, style in (("forward", "s:"), ("backward", "s--")):
        points = [r for r in textgrad if r.get(f"{phase}_us_per_node") is not None]
        if points:
            by_nodes.plot([r["nodes"] for r in points], [r[f"{phase}_us_per_node"] for r in points],
                          style, color="black", label=f"TextGrad {phase}")
    by_nodes.set(xscale="log", xlabel="graph nodes (width x depth 100)",
                 ylabel="engine CPU (µs)", title="per node, against graph size")
    by_items.set(xscale="log", xlabel="minibatch items (depth 10)",
                 title="per item call, against minibatch size")
    for ax in (by_nodes, by_items):
        ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a run without minibatch rows has none
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
