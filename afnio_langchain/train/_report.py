"""Run reports: a JSON report, a Markdown summary and a PNG plot of the score curve,
written atomically into an output folder.

The report holds the scores before and after, the per-epoch curve, every step's
decision, calls/tokens/cost per purpose, the prompt history and the final prompts
with a diff against the originals.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afnio_langchain.autodiff import Data
from afnio_langchain.runnables import load_prompts, prompts_state
from afnio_langchain.train._files import atomic_write_json, atomic_write_text
from afnio_langchain.train._loading import param_keys

if TYPE_CHECKING:
    from afnio_langchain.train._trainer import TrainResult

REPORT_FORMAT = "afnio_langchain.report"
REPORT_VERSION = 1
REPORT_JSON = "report.json"
SUMMARY_MD = "summary.md"
PLOT_PNG = "score_curve.png"
PROMPTS_JSON = "prompts.json"
PLOT_HINT = "pip install 'afnio-langchain[plot]'"


@dataclass(frozen=True)
class ReportFiles:
    """Paths of the files :func:`write_report` wrote (``plot`` is None without matplotlib).

    Example:
        >>> import json, tempfile
        >>> from afnio_langchain import ChatCompletionRunnable, Variable
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> from afnio_langchain.train import exact_match, fit, write_report
        >>> model = ScriptedChatModel(forward="four", feedback="Ask for digits.", optimizer="Use digits.")
        >>> system = Variable("Answer the question.", role="system prompt", requires_grad=True)
        >>> chain = ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{q}")])
        >>> result = fit(chain, [{"q": "2+2?", "answer": "4"}], metric=exact_match,
        ...              optimizer_model=model, backward_model=model, progress=False)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     files = write_report(result, folder)
        ...     title = files.summary.read_text(encoding="utf-8").splitlines()[0]
        ...     saved = json.loads(files.prompts.read_text(encoding="utf-8"))
        >>> files.report.name, title, [entry["value"] for entry in saved["prompts"]]
        ('report.json', '# afnio-langchain optimization report', ['Use digits.'])
    """

    report: Path
    summary: Path
    prompts: Path
    plot: Path | None


def _value_text(value: Data) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2) if isinstance(value, list) else str(value)


def prompt_diff(old: Data, new: Data, name: str = "prompt") -> str:
    """A unified diff between two values ("" when equal).

    Example:
        >>> from afnio_langchain.train._report import prompt_diff
        >>> print(prompt_diff("Be brief.", "Be brief.\\nAnswer in French.", "system prompt"))
        --- system prompt (before)
        +++ system prompt (after)
        @@ -1 +1,2 @@
         Be brief.
        +Answer in French.
    """
    if old == new:
        return ""
    lines = difflib.unified_diff(
        _value_text(old).splitlines(),
        _value_text(new).splitlines(),
        fromfile=f"{name} (before)",
        tofile=f"{name} (after)",
        lineterm="",
    )
    return "\n".join(lines)


def prompt_history(result: TrainResult) -> list[dict[str, Any]]:
    """Every value each parameter took or was proposed, step by step, with the decision."""
    state = result.state
    history: list[dict[str, Any]] = [
        {"step": 0, "index": i, "role": role, "value": value, "status": "initial", "kept": True}
        for i, (role, value) in enumerate(zip(state.roles, state.initial_values))
    ]
    for step in state.history["steps"]:
        accepted = step.get("decision") == "accepted"
        for param in step.get("params", []):
            if param.get("status") == "skipped":
                continue
            history.append(
                {
                    "step": step["step"],
                    "index": param.get("index"),
                    "role": param.get("role"),
                    "value": param.get("new_value") if param.get("status") == "updated" else None,
                    "status": param.get("status"),
                    "reason": param.get("reason", ""),
                    "kept": accepted and param.get("status") == "updated",
                    "decision": step.get("decision"),
                }
            )
    return history


STEP_OUTCOMES = ("accepted", "rolled_back", "no_update", "failed")
"""What a step can end in: kept; rolled back by the validation gate; no update (no
feedback to send, or every proposal rejected); failed."""

ERRORS_SHOWN = 10
"""How many per-example errors a report lists (the counts cover them all)."""


def step_outcome(step: dict[str, Any]) -> str:
    """The outcome of a step record, one of :data:`STEP_OUTCOMES`.

    Example:
        >>> from afnio_langchain.train._report import step_outcome
        >>> step_outcome({"decision": "no update: every proposal was rejected or skipped"})
        'no_update'
    """
    decision = str(step.get("decision", ""))
    if decision == "accepted":
        return "accepted"
    if decision.startswith("rolled back"):
        return "rolled_back"
    if decision.startswith("failed"):
        return "failed"
    return "no_update"


def step_counts(steps: list[dict[str, Any]]) -> dict[str, int]:
    """``{"total": n, "accepted": ..., "rolled_back": ..., "no_update": ..., "failed": ...}``;
    the four outcomes add up to the total.

    Example:
        >>> from afnio_langchain.train import step_counts
        >>> step_counts([{"decision": "accepted"}, {"decision": "rolled back: validation 0.2 <= 0.5"},
        ...              {"decision": "no feedback: every item already correct"}])
        {'total': 3, 'accepted': 1, 'rolled_back': 1, 'no_update': 1, 'failed': 0}
    """
    counts = {"total": len(steps), **{outcome: 0 for outcome in STEP_OUTCOMES}}
    for step in steps:
        counts[step_outcome(step)] += 1
    return counts


def example_errors(result: TrainResult) -> dict[str, Any]:
    """The per-example errors of a run: how many in all, and the first
    :data:`ERRORS_SHOWN` with where they happened, the example's index and the message."""
    state = result.state
    listed: list[dict[str, Any]] = []
    total = 0

    def add(where: str, record: dict[str, Any], key: str, count_key: str) -> None:
        nonlocal total
        total += int(record.get(count_key) or 0) if count_key else 0
        for entry in record.get(key) or []:
            if len(listed) < ERRORS_SHOWN:
                listed.append({"where": where, **entry})

    for epoch in state.history["epochs"]:
        if epoch.get("epoch") == 0:
            add("validation set, before training", epoch, "val_error_examples", "val_errors")
            add("training set, before training", epoch, "train_error_examples", "train_errors")
    for step in state.history["steps"]:
        add(f"step {step['step']}, training minibatch", step, "error_examples", "errors")
        add(f"step {step['step']}, validation set", step, "val_error_examples", "val_errors")
    last = state.history["epochs"][-1] if state.history["epochs"] else {}
    total += int(state.final.get("train_errors") or 0)
    add("training set, after training", last, "final_train_error_examples", "")
    return {"total": total, "shown": listed}


def build_report(result: TrainResult) -> dict[str, Any]:
    """The JSON report of a run."""
    state = result.state
    usage = result.usage.as_dict()
    steps = state.history["steps"]
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "config": result.config,
        "status": state.stage,
        "stopped": state.stopped,
        "scores": {
            "before": dict(state.baseline),
            "after": dict(state.final),
            "best_val": state.best_val,
        },
        "epochs": state.history["epochs"],
        "steps": steps,
        "step_counts": step_counts(steps),
        "errors": example_errors(result),
        "usage": {
            "total": usage["total"],
            "by_purpose": usage["by_purpose"],
            "by_model": usage["by_model"],
            "evaluation": result.eval_usage.as_dict()["total"],
        },
        "cost": result.cost.to_dict(),
        "wall_time_s": round(result.wall_time_s, 3),
        "prompts": [
            {
                "index": i,
                "role": role,
                "initial": initial,
                "final": final,
                "changed": initial != final,
                "diff": prompt_diff(initial, final, role or f"parameter {i}"),
            }
            for i, (role, initial, final) in enumerate(
                zip(state.roles, state.initial_values, [p.data for p in result.params])
            )
        ],
        "prompt_history": prompt_history(result),
    }


def _fence(text: str, lang: str = "") -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text}\n{ticks}"


def _score(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any], plot_file: str | None) -> str:
    """The Markdown summary of a JSON report."""
    scores = report["scores"]
    counts = report["step_counts"]
    config = report["config"]
    lines = ["# afnio-langchain optimization report", ""]
    lines.append(
        f"Metric **{_cell(config.get('metric'))}**, {config.get('epochs')} epoch(s), batch size "
        f"{config.get('batch_size')}, seed {config.get('seed')}, gate `{config.get('gate')}`. "
        f"Status: **{report['status']}**"
        + (f" ({_cell(report['stopped'])})" if report.get("stopped") else "")
        + f". Wall time {report['wall_time_s']:.1f} s."
    )
    models = config.get("models")
    if isinstance(models, dict) and models:
        lines += ["", "Models: " + ", ".join(f"{k} `{v}`" for k, v in models.items()) + "."]
    lines += [
        "",
        "## Scores",
        "",
        "| set | before | after |",
        "| --- | --- | --- |",
        f"| validation | {_score(scores['before'].get('val'))} | {_score(scores['after'].get('val'))} |",
        f"| train | {_score(scores['before'].get('train'))} | {_score(scores['after'].get('train'))} |",
        "",
        f"{counts['total']} step(s): {counts['accepted']} accepted, {counts['rolled_back']} rolled "
        f"back, {counts['no_update']} without an update, {counts['failed']} failed.",
        "",
        "## Per epoch",
        "",
        "| epoch | train | validation | steps | accepted | rolled back |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for e in report["epochs"]:
        lines.append(
            f"| {e['epoch']} | {_score(e.get('train_score'))} | {_score(e.get('val_score'))} | "
            f"{e.get('steps', '-')} | {e.get('accepted', '-')} | {e.get('rolled_back', '-')} |"
        )
    if plot_file:
        lines += ["", f"![score curve]({plot_file})"]
    else:
        lines += ["", f"(No plot: matplotlib is not installed. `{PLOT_HINT}` adds it.)"]
    lines += [
        "",
        "## Steps",
        "",
        "| step | epoch | train (batch) | parameters | validation | decision |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in report["steps"]:
        params = ", ".join(
            f"{p.get('role') or p.get('index')}: {p.get('status')}" for p in s.get("params", [])
        ) or "-"
        lines.append(
            f"| {s['step']} | {s['epoch']} | {_score(s.get('train_score'))} | {_cell(params)} | "
            f"{_score(s.get('val_score'))} | {_cell(s.get('decision', '-'))} |"
        )
    lines += [
        "",
        "## Calls, tokens and cost",
        "",
        "| purpose | calls | cache hits | input tokens (cached) | output tokens | retries "
        "| failures | cost (USD) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    cost = report["cost"]
    for purpose, u in report["usage"]["by_purpose"].items():
        lines.append(
            f"| {purpose} | {u['calls']} | {u.get('cache_hits', 0)} | {u['input_tokens']} "
            f"({u.get('cached_input_tokens', 0)}) | {u['output_tokens']} | "
            f"{u['retries']} | {u['failures']} | {cost['by_purpose'].get(purpose, 0.0):.4f} |"
        )
    t = report["usage"]["total"]
    lines.append(
        f"| **total** | {t['calls']} | {t.get('cache_hits', 0)} | {t['input_tokens']} "
        f"({t.get('cached_input_tokens', 0)}) | {t['output_tokens']} | "
        f"{t['retries']} | {t['failures']} | {cost['total']:.4f} |"
    )
    ev = report["usage"]["evaluation"]
    lines += ["", f"Of these, evaluations made {ev['calls']} call(s)."]
    if cost["unpriced_models"]:
        lines.append(
            "Models without a price (counted as 0): "
            + ", ".join(f"`{m}`" for m in cost["unpriced_models"])
            + "."
        )
    errors = report.get("errors") or {"total": 0, "shown": []}
    if errors["total"]:
        lines += ["", "## Errors", "", f"{errors['total']} example(s) failed; the first {len(errors['shown'])}:", ""]
        for e in errors["shown"]:
            lines.append(f"- {_cell(e['where'])}, example {e['index']}: {_cell(e['error'])}")
    lines += ["", "## Final prompts", ""]
    for p in report["prompts"]:
        title = p["role"] or f"parameter {p['index']}"
        lines += [f"### {_cell(title)}", ""]
        if p["changed"]:
            lines += [_fence(_value_text(p["final"])), "", "Diff against the original:", "", _fence(p["diff"], "diff"), ""]
        else:
            lines += ["Unchanged:", "", _fence(_value_text(p["final"])), ""]
    rejected = [h for h in report["prompt_history"] if h.get("status") == "rejected"]
    if rejected:
        lines += ["## Rejected proposals", ""]
        for h in rejected:
            lines.append(f"- step {h['step']}, {_cell(h['role'])}: {_cell(h.get('reason', ''))}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def plot_scores(report: dict[str, Any], path: str | os.PathLike[str]) -> bool:
    """Draw the train/validation score per epoch (and validation per step) as a PNG.

    Returns:
        False (and writes nothing) when matplotlib is not installed.
    """
    figure = score_figure(report)
    if figure is None:
        return False
    import io

    from afnio_langchain.train._files import atomic_write_bytes

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return True


def score_figure(report: dict[str, Any]) -> Any:
    """The matplotlib ``Figure`` of :func:`plot_scores` (None without matplotlib).

    Each kind of step that occurred (kept, rolled back) gets its own marker colour and
    legend entry, so the legend shows only what the run did.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None

    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    epochs = report["epochs"]
    for key, label, marker in (("train_score", "train", "o"), ("val_score", "validation", "s")):
        points = [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None]
        if points:
            axes.plot([x for x, _ in points], [y for _, y in points], marker=marker, label=label)
    n_batches = max((s.get("batch", 0) for s in report["steps"]), default=0) + 1
    tried = [
        (s["epoch"] - 1 + (s.get("batch", 0) + 1) / n_batches, s["val_score"], s.get("decision") == "accepted")
        for s in report["steps"]
        if s.get("val_score") is not None
    ]
    for kept, colour, label in (
        (True, "tab:green", "validation after a kept step"),
        (False, "tab:red", "validation after a rolled-back step"),
    ):
        points = [(x, y) for x, y, ok in tried if ok is kept]
        if points:
            axes.scatter(
                [x for x, _ in points], [y for _, y in points],
                color=colour, marker="x", zorder=3, label=label,
            )
    last_epoch = max((e["epoch"] for e in epochs), default=0)
    axes.set_xticks(list(range(0, last_epoch + 1)))
    axes.set_xlabel("epoch (0 = before training)")
    axes.set_ylabel("score")
    axes.set_ylim(-0.05, 1.05)
    axes.set_title("Score per epoch")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    return figure


def prompts_file(result: TrainResult) -> dict[str, Any]:
    """The trained values as a prompts file (the one format of
    :func:`afnio_langchain.runnables.prompts_state`): ``afnio-langchain evaluate
    --prompts``, :func:`apply_prompts` and ``TrainableChain.load`` read it."""
    return prompts_state(result.params, param_keys(result.chain, result.params))


def apply_prompts(
    params: list[Any], saved: Any, source: str = "prompts file", chain: Any = None
) -> None:
    """Write the values of a prompts file (its path or its content) into ``params``:
    matched by key when ``chain`` is a ``make_trainable`` chain and the file has keys,
    else by position and role.

    Raises:
        ValueError: (:class:`~afnio_langchain.runnables.PromptsFileError`) the file is
            of another kind or does not match the parameters.
    """
    keys = param_keys(chain, params) if chain is not None else None
    load_prompts(params, saved, keys, source=source)


def write_report(result: TrainResult, out_dir: str | os.PathLike[str]) -> ReportFiles:
    """Write ``report.json``, ``summary.md``, ``prompts.json`` and (with matplotlib)
    ``score_curve.png`` into ``out_dir`` (created if needed), each atomically."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    report = build_report(result)
    plot_path = folder / PLOT_PNG
    has_plot = plot_scores(report, plot_path)
    report["files"] = {"summary": SUMMARY_MD, "prompts": PROMPTS_JSON, "plot": PLOT_PNG if has_plot else None}
    if not has_plot:
        report["files"]["plot_hint"] = PLOT_HINT
    prompts_path = atomic_write_json(folder / PROMPTS_JSON, prompts_file(result))
    report_path = atomic_write_json(folder / REPORT_JSON, report)
    summary_path = atomic_write_text(
        folder / SUMMARY_MD, render_markdown(report, PLOT_PNG if has_plot else None)
    )
    return ReportFiles(report_path, summary_path, prompts_path, plot_path if has_plot else None)
