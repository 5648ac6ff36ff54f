"""What a compile records: the package's own report (:class:`CompileReport`, one
:class:`StepRecord` per step) and the statistics DSPy's optimizers attach to the
program they return, under DSPy's names.

DSPy-named statistics (see docs/dspy.md), on the returned program:

- always, as COPRO: ``candidate_programs`` (every validated candidate, best first:
  ``{"score", "program", "instructions", "step", "accepted", "full_eval"}``) and
  ``total_calls`` (examples scored, the task metric's calls);
- with ``track_stats``: ``score`` (MIPROv2: the returned program's validation score),
  ``results_best`` and ``results_latest`` (COPRO: per predictor, per step ("depth"),
  the ``max``/``average``/``min``/``std`` of its top 10 / latest candidates' scores),
  ``trial_logs`` (MIPROv2: per candidate ``full_eval_score``, ``full_eval_program``,
  ``total_eval_calls_so_far``) and ``prompt_model_total_calls`` (MIPROv2: optimizer
  model calls).

Scores there are on DSPy's scale, percentages like ``dspy.Evaluate``'s ``score``; the
package's own report keeps the metric's mean (0 to 1).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class StepRecord:
    """What one optimization step did.

    Attributes:
        step: The step number (from 1).
        epoch: The pass over the trainset it belongs to (from 1).
        batch_size: Examples in its minibatch.
        train_score: Mean metric score of the minibatch before the update.
        errors: Examples of the minibatch that failed (scored ``failure_score``).
        with_feedback: Examples whose feedback was sent backward (the others scored
            as correct, failed, or were skipped).
        backward_errors: Of those, how many backward passes failed (a reply that was
            not a gradient, a model error).
        updated: Predictors whose instructions the optimizer rewrote.
        val_score: Validation score of the rewritten program (None: not validated).
        val_errors: Validation examples that failed.
        accepted: Whether the rewrite was kept (None: nothing was rewritten).
        note: The step's decision when it kept nothing (``"rolled back: validation
            0.000 <= 0.000"``, ``"no feedback: ..."``, ``"failed: ..."``).

    Example:
        >>> from afnio_langchain.dspy import StepRecord
        >>> record = StepRecord(step=1, epoch=1, batch_size=4, train_score=0.25, with_feedback=3,
        ...                     updated=["answer"], val_score=0.5, accepted=False,
        ...                     note="rolled back: validation 0.500 <= 0.750")
        >>> record.accepted, record.note.startswith("rolled back")
        (False, True)
    """

    step: int
    epoch: int
    batch_size: int
    train_score: float | None
    errors: int = 0
    with_feedback: int = 0
    backward_errors: int = 0
    updated: list[str] = field(default_factory=list)
    val_score: float | None = None
    val_errors: int = 0
    accepted: bool | None = None
    note: str = ""


@dataclass
class CompileReport:
    """The record of one ``compile``.

    Attributes:
        initial_score: Validation score of the student (None without validation).
        best_score: Validation score of the returned program (None without validation).
        steps: One :class:`StepRecord` per step.
        instructions: Predictor name -> the returned program's instructions.
        program_calls: Predictor calls the program made while compiling (training and
            validation runs; each is one model call unless DSPy's cache answered it).
        usage: Model calls and tokens by purpose and model, as
            :meth:`~afnio_langchain.models.UsageTracker.as_dict` (calls through this
            package's clients: backward, optimizer, and the program's own calls when
            it runs on :func:`~afnio_langchain.dspy.as_dspy_lm`).
        initial_errors: Validation examples that failed before the first step.
        failed_examples: Example runs that failed over the whole compile (training and
            validation; each scored ``failure_score``).
        total_calls: Example runs scored over the whole compile (the metric's calls).

    Example:
        >>> import dspy
        >>> from dspy.utils import DummyLM
        >>> from afnio_langchain.dspy import TextualGradientDescent
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> coach = ScriptedChatModel(feedback="Ask for the capital city.",
        ...                           optimizer="Answer with the name of the capital city.")
        >>> trainset = [dspy.Example(country="France", capital="Paris").with_inputs("country")]
        >>> def metric(gold, pred, trace=None):
        ...     return gold.capital == pred.capital
        >>> optimizer = TextualGradientDescent(metric, backward_model=coach, num_threads=1)
        >>> replies = [{"capital": "France"}] * 2 + [{"capital": "Paris"}]  # before, during, after
        >>> with dspy.context(lm=DummyLM(replies)):
        ...     _ = optimizer.compile(dspy.Predict("country -> capital"), trainset=trainset)
        >>> report = optimizer.last_report
        >>> report.initial_score, report.best_score, report.program_calls, report.instructions
        (0.0, 1.0, 3, {'self': 'Answer with the name of the capital city.'})
        >>> report.usage["by_purpose"]["optimizer"]["calls"], len(report.steps), report.total_calls
        (1, 1, 3)
    """

    initial_score: float | None
    best_score: float | None
    steps: list[StepRecord]
    instructions: dict[str, str]
    program_calls: int
    usage: dict[str, Any]
    initial_errors: int = 0
    failed_examples: int = 0
    total_calls: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass
class _Candidate:
    step: int
    score: float
    program: Any
    instructions: dict[str, str]
    changed: list[str]
    calls_so_far: int
    accepted: bool = False


class CandidateLog:
    """The validated candidates of one compile, and DSPy's statistics over them.

    Example:
        >>> import dspy
        >>> from afnio_langchain.dspy._stats import CandidateLog
        >>> program = dspy.Predict("question -> answer")
        >>> log = CandidateLog(["self"])
        >>> log.add(0, 0.5, program, ["self"], calls_so_far=2, accepted=True)
        >>> log.add(1, 1.0, program, ["self"], calls_so_far=6, accepted=True)
        >>> log.attach(program, track_stats=True, total_calls=6, prompt_model_calls=1)
        >>> [c["score"] for c in program.candidate_programs], program.score
        ([100.0, 50.0], 100.0)
        >>> program.results_best["self"]["max"], program.results_latest["self"]["average"]
        ([50.0, 100.0], [50.0, 100.0])
    """

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self.candidates: list[_Candidate] = []

    def add(
        self,
        step: int,
        score: float,
        program: Any,
        changed: list[str],
        *,
        calls_so_far: int,
        accepted: bool,
    ) -> None:
        """Record a validated candidate (``program`` is copied)."""
        instructions = {name: p.signature.instructions for name, p in program.named_predictors()}
        self.candidates.append(
            _Candidate(step, score, program.deepcopy(), instructions, list(changed), calls_so_far, accepted)
        )

    def attach(
        self, program: Any, *, track_stats: bool, total_calls: int, prompt_model_calls: int
    ) -> None:
        """Set the DSPy-named statistics (module docstring) on the returned program."""
        ranked = sorted(self.candidates, key=lambda c: c.score, reverse=True)
        program.candidate_programs = [
            {
                "score": _percent(c.score),
                "program": c.program,
                "instructions": c.instructions,
                "step": c.step,
                "accepted": c.accepted,
                "full_eval": True,
            }
            for c in ranked
        ]
        program.total_calls = total_calls
        if not track_stats:
            return
        kept = [c for c in self.candidates if c.accepted]
        program.score = _percent(kept[-1].score) if kept else None
        program.prompt_model_total_calls = prompt_model_calls
        program.results_best = {name: _empty_stats() for name in self.names}
        program.results_latest = {name: _empty_stats() for name in self.names}
        program.trial_logs = {}
        for n, candidate in enumerate(self.candidates, start=1):
            program.trial_logs[n] = {
                "step": candidate.step,
                "full_eval_score": _percent(candidate.score),
                "full_eval_program": candidate.program,
                "total_eval_calls_so_far": candidate.calls_so_far,
                "accepted": candidate.accepted,
            }
            for name in candidate.changed:
                seen = [c.score for c in self.candidates[:n] if name in c.changed]
                top = sorted(seen, reverse=True)[:10]
                _append(program.results_best[name], candidate.step, top)
                _append(program.results_latest[name], candidate.step, [candidate.score])


def _empty_stats() -> dict[str, list[float]]:
    return {"depth": [], "max": [], "average": [], "min": [], "std": []}


def _append(stats: dict[str, list[float]], depth: int, scores: list[float]) -> None:
    shown = [_percent(s) for s in scores]
    stats["depth"].append(depth)
    stats["max"].append(max(shown))
    stats["average"].append(round(sum(shown) / len(shown), 2))
    stats["min"].append(min(shown))
    stats["std"].append(round(statistics.pstdev(shown), 2))


def _percent(score: float) -> float:
    return round(100 * score, 2)


__all__ = ["CandidateLog", "CompileReport", "StepRecord"]
