"""What the commands print: the plan before a run, the summary after it, an evaluation.

The summary's figures come from the report (:func:`afnio_langchain.train.write_report`
writes the same ones), so the console, ``summary.md`` and ``report.json`` agree: the
step counts add up to the steps the bar showed, and the call count is the bar's.
"""

from __future__ import annotations

from typing import Any

from afnio_langchain.models import redact
from afnio_langchain.train import (
    EvalResult,
    Trainer,
    TrainResult,
    count_llm_steps,
    example_errors,
    step_counts,
)

DEMO_NOTE = (
    "\nThis ran the whole loop ({model} model): forward, feedback, backward, proposals, the "
    "validation gate, checkpoints and the report. It is not learning: the model barely follows "
    "a system prompt, and one review of the {n_val} validation reviews moves the score by "
    "{step:.2f}. To see the prompt improve, run it on a model that follows instructions: "
    "afnio-langchain demo --model openai:gpt-4o-mini (or --model openai-compatible:NAME@URL)."
)
"""Printed after a demo on the local or scripted model."""


def plan_line(trainer: Trainer, n_train: int, n_val: int) -> str:
    """``plan: 2 epoch(s), 4 step(s), 1 LLM call per example; at most about 72 model calls (...)``."""
    per_example = count_llm_steps(trainer.chain)
    calls = trainer.estimate_calls(n_train, n_val, per_example)
    steps = -(-n_train // trainer.batch_size) * trainer.epochs
    shown = ", ".join(f"{k} {v}" for k, v in calls.items() if v)
    return (
        f"plan: {trainer.epochs} epoch(s), {steps} step(s), {per_example} LLM call(s) per example; "
        f"at most about {sum(calls.values())} model calls ({shown})"
    )


def _score(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary(result: TrainResult, files: Any, session_wall_s: float, elapsed_before: float) -> str:
    """The lines printed after a run.

    Args:
        result: What :meth:`Trainer.fit` returned.
        files: What :func:`write_report` wrote.
        session_wall_s: Wall time of this command.
        elapsed_before: Training time of earlier sessions (a resumed run).
    """
    state = result.state
    counts = step_counts(state.history["steps"])
    errors = example_errors(result)
    by_purpose = result.usage.as_dict()["by_purpose"]
    total = result.usage.total()
    calls = ", ".join(f"{p} {u['calls']}" for p, u in by_purpose.items()) or "none"
    lines = [
        "",
        f"Validation score: {_score(state.baseline.get('val'))} -> {_score(state.final.get('val'))}",
        f"Train score:      {_score(state.baseline.get('train'))} -> {_score(state.final.get('train'))}",
        f"Steps: {counts['total']} ({counts['accepted']} accepted, {counts['rolled_back']} rolled back, "
        f"{counts['no_update']} without an update, {counts['failed']} failed)"
        + (f"; stopped early: {state.stopped}" if state.stopped else ""),
    ]
    if errors["total"]:
        first = errors["shown"][0]
        lines.append(
            f"Errors: {errors['total']} example(s) failed; the first: {first['where']}, "
            f"example {first['index']}: {first['error'][:200]} (all listed in {files.summary.name})"
        )
    lines += [
        f"Calls: {calls} (total {total.calls}; tokens in {total.input_tokens}, out {total.output_tokens})",
        f"Cost: ${result.cost.total:.4f}"
        + (f" (no price for: {', '.join(result.cost.unpriced)})" if result.cost.unpriced else ""),
        _times(result, session_wall_s, elapsed_before),
        f"Report: {files.summary} (also {files.report.name}, {files.prompts.name}"
        + (f", {files.plot.name})" if files.plot else "; no plot: pip install 'afnio-langchain[plot]')"),
    ]
    for role, before, p in zip(state.roles, state.initial_values, result.params):
        status = "changed" if p.data != before else "unchanged"
        lines.append(f"Final {role or 'parameter'} ({status}):")
        lines += [f"  | {line}" for line in str(p.data).splitlines() or [""]]
    return redact("\n".join(lines))  # a learned prompt may quote a key


def _times(result: TrainResult, session_wall_s: float, elapsed_before: float) -> str:
    sessions = result.state.sessions
    if sessions <= 1:
        return f"Wall time: {session_wall_s:.1f} s (training: {result.wall_time_s:.1f} s)"
    # Earlier sessions count in both figures, so the wall time is never below the training time.
    wall = elapsed_before + session_wall_s
    return (
        f"Wall time: {wall:.1f} s over {sessions} sessions (this one: {session_wall_s:.1f} s); "
        f"training: {result.wall_time_s:.1f} s"
    )


def evaluation_lines(result: EvalResult, line_numbers: Any, limit: int = 20) -> list[str]:
    """The score, then each example that scored below 1 or failed, by line number."""
    score = "n/a" if result.score is None else f"{result.score:.3f}"
    lines = [f"score: {score} on {len(result.items)} example(s) ({result.errors} error(s))"]
    shown = 0
    for line, item in zip(line_numbers, result.items):
        if item.error or item.score < 1.0:
            if shown == limit:
                lines.append("  ... (all of them in --out FILE)")
                break
            detail = item.error or item.feedback or f"output {redact(repr(item.output))[:120]}"
            lines.append(redact(f"  line {line}: {item.score:.2f}  {detail}"))
            shown += 1
    return lines
