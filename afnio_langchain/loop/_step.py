"""The one validation-gated training step, called by ``fit``/``Trainer`` and by the DSPy
teleprompter.

One step: the face runs and scores a minibatch (with grad); the feedback policy picks
the items not yet correct and words their feedback; one backward pass per item runs
(concurrently: a failure loses only its item); the optimizer rewrites the parameters;
the face scores the validation set; the gate policy keeps the rewrite or rolls the
parameters back. A face hands the step its own way to run and score a minibatch and a
validation set (a LangChain chain for ``train``, a DSPy program for ``dspy``) and the
output Variables each item's feedback goes to.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from afnio_langchain._aio import run_sync
from afnio_langchain.autodiff import Variable, describe_error, run_backward
from afnio_langchain.loop._metrics import MetricResult, feedback_text
from afnio_langchain.models import unrecoverable_cause
from afnio_langchain.optim import Optimizer, StepReport

GATES = ("improve", "no_worse", "off")
"""The gate rules: keep a rewrite when validation rises / does not drop (a tie at zero is
never kept) / always. See :class:`GatePolicy`."""

_TIE_TOLERANCE = 1e-9

ACCEPTED = "accepted"
ROLLED_BACK = "rolled_back"
NO_FEEDBACK = "no_feedback"
NO_UPDATE = "no_update"
FAILED = "failed"


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate is kept, and why (the text training logs show)."""

    keep: bool
    reason: str


@dataclass(frozen=True)
class GatePolicy:
    """When a rewrite of the parameters replaces the current values.

    Rules:
        ``"improve"`` (the default): only when the candidate's validation score is higher
            than the current one, by at least ``min_improvement`` (which only this rule
            takes). A tie is never
            kept, so a rewrite that validation cannot tell apart from the current values
            (a broken proposal on a model whose answers do not depend on it, say) never
            replaces them.
        ``"no_worse"``: also when the score ties, but only a tie above zero: at a score
            of zero nothing is right either way, and a tie says nothing about the rewrite.
        ``"off"``: every rewrite is kept; the step does not validate (a face may keep
            the best values it measured itself).

    Args:
        rule: One of :data:`GATES`.
        min_improvement: How much a rise must add to count as one (>= 0).

    Example:
        >>> from afnio_langchain.loop import GatePolicy
        >>> gate = GatePolicy()
        >>> gate.decide(0.75, current=0.5).keep, gate.decide(0.5, current=0.5).reason
        (True, 'rolled back: validation 0.500 <= 0.500')
        >>> tie = GatePolicy("no_worse")
        >>> tie.decide(0.5, current=0.5).keep, tie.decide(0.0, current=0.0).keep
        (True, False)
    """

    rule: str = "improve"
    min_improvement: float = 0.0

    def __post_init__(self) -> None:
        if self.rule not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {self.rule!r}")
        value = self.min_improvement
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"min_improvement must be a number, got {value!r}")
        if value < 0:
            raise ValueError(f"min_improvement must be >= 0, got {value}")
        if value and self.rule != "improve":
            raise ValueError(f"min_improvement applies to gate='improve', not {self.rule!r}")

    @property
    def validates(self) -> bool:
        """Whether a step measures the validation set before keeping a rewrite."""
        return self.rule != "off"

    def decide(self, candidate: float, current: float | None) -> GateDecision:
        """Keep ``candidate`` (a validation score) over ``current`` (None: nothing measured
        yet, so anything is kept)?"""
        if self.rule == "off" or current is None:
            return GateDecision(True, ACCEPTED)
        rise = candidate - current
        tie = abs(rise) <= _TIE_TOLERANCE
        shown = f"rolled back: validation {candidate:.3f}"
        if self.rule == "no_worse":
            if rise > _TIE_TOLERANCE or (tie and current > 0):
                return GateDecision(True, ACCEPTED)
            if tie:
                return GateDecision(False, f"{shown} = {current:.3f} (a tie at zero is never kept)")
            return GateDecision(False, f"{shown} < {current:.3f}")
        if rise > _TIE_TOLERANCE and rise >= self.min_improvement - _TIE_TOLERANCE:
            return GateDecision(True, ACCEPTED)
        if rise > _TIE_TOLERANCE:
            return GateDecision(
                False, f"{shown} < {current:.3f} + min_improvement {self.min_improvement:g}"
            )
        return GateDecision(False, f"{shown} <= {current:.3f}")


@dataclass(frozen=True)
class FeedbackPolicy:
    """Which scored items get feedback, and what it says.

    An item gets feedback unless it failed (nothing to send feedback through) or, with
    ``skip_correct``, it scored at least ``success_threshold``. The feedback is the
    metric's own text, or (when it gave none) a note of the score and the expected
    output (:func:`~afnio_langchain.loop.feedback_text`).

    Example:
        >>> from afnio_langchain.loop import FeedbackPolicy, MetricResult, ScoredItem
        >>> policy = FeedbackPolicy(metric="exact_match")
        >>> item = ScoredItem(MetricResult(0.0), expected="Paris")
        >>> policy.needs_feedback(item), policy.text(item)
        (True, "This output scored 0.00 out of 1 on the metric exact_match. The expected output was 'Paris'.")
        >>> policy.needs_feedback(ScoredItem(MetricResult(1.0)))
        False
    """

    metric: str = "metric"
    skip_correct: bool = True
    success_threshold: float = 1.0

    def needs_feedback(self, item: ScoredItem) -> bool:
        if item.error is not None:
            return False
        return not (self.skip_correct and item.result.score >= self.success_threshold)

    def text(self, item: ScoredItem) -> str:
        return feedback_text(item.result, self.metric, item.expected)


@dataclass(frozen=True)
class ScoredItem:
    """One minibatch example after the face ran it and the metric scored it.

    Attributes:
        result: The metric's verdict (score 0, or the face's failure score, on error).
        prediction: What the face produced (a chain's output Variable, a DSPy run...);
            the face's ``roots`` reads the output Variables to send feedback to from it.
        expected: The expected output as text, for the default feedback (None: unknown).
        error: What went wrong running or scoring it, or None.
    """

    result: MetricResult
    prediction: Any = field(default=None, compare=False, repr=False)
    expected: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Validation:
    """A validation pass: the mean score and how many examples failed."""

    score: float
    errors: int = 0


@dataclass
class StepOutcome:
    """What one step did.

    Attributes:
        status: ``accepted``, ``rolled_back``, ``no_feedback``, ``no_update`` or ``failed``.
        decision: The same, as the text training logs show (``"rolled back: validation
            0.500 <= 0.750"``, ``"failed: every backward pass failed: ..."``).
        items: The scored minibatch.
        feedback_items: Items whose feedback was sent backward.
        backward_errors: Of those, how many backward passes failed.
        report: The optimizer's step report (None when it did not step).
        validation: The validation of the rewrite (None when not validated).
    """

    status: str
    decision: str
    items: list[ScoredItem]
    feedback_items: int = 0
    backward_errors: int = 0
    report: StepReport | None = None
    validation: Validation | None = None

    @property
    def train_score(self) -> float | None:
        """The minibatch's mean score (None for an empty minibatch)."""
        if not self.items:
            return None
        return sum(item.result.score for item in self.items) / len(self.items)

    @property
    def errors(self) -> int:
        return sum(1 for item in self.items if item.error is not None)

    @property
    def failed(self) -> bool:
        """Nothing could be run, backpropagated or stepped."""
        return self.status == FAILED

    @property
    def kept(self) -> bool | None:
        """True: the rewrite was kept; False: rolled back; None: nothing was rewritten."""
        return {ACCEPTED: True, ROLLED_BACK: False}.get(self.status)

    @property
    def updated(self) -> list[int]:
        """Indices (in the optimizer) of the parameters the optimizer rewrote."""
        return [] if self.report is None else [r.index for r in self.report.updated]


def training_step(
    optimizer: Optimizer,
    minibatch: Callable[[], Sequence[ScoredItem]],
    roots: Callable[[ScoredItem], Sequence[Variable]],
    *,
    feedback: FeedbackPolicy,
    gate: GatePolicy,
    validate: Callable[[], Validation] | None = None,
    current: float | None = None,
    max_concurrency: int | None = None,
) -> StepOutcome:
    """Run one validation-gated step over ``optimizer``'s parameters.

    Args:
        optimizer: Rewrites the parameters from their gradients.
        minibatch: Runs and scores the step's examples with grad enabled.
        roots: The output Variables an item's feedback is sent to (may raise when the
            face's output cannot carry feedback; an empty list skips the item).
        feedback: Which items get feedback, and its wording.
        gate: Whether a rewrite is kept.
        validate: Scores the validation set with the parameters as they are now
            (None: no validation set; every rewrite is kept).
        current: The validation score of the parameters before the step.
        max_concurrency: Cap on backward calls in flight (None: the enclosing limit).

    Raises:
        Exception: A backward pass or the optimizer failed in a way no later step can
            avoid (:func:`~afnio_langchain.models.is_unrecoverable`: a rejected key, a
            model that does not exist); other failures fail only the step.

    Returns:
        The :class:`StepOutcome`; on ``rolled_back`` the parameters hold their values
        from before the step again. Gradients are cleared either way.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import ChatCompletion
        >>> from afnio_langchain.loop import (FeedbackPolicy, GatePolicy, MetricResult,
        ...                                   ScoredItem, Validation, training_step)
        >>> from afnio_langchain.optim import TGD
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> model = ScriptedChatModel(forward=lambda t: "4" if "digits" in t else "four",
        ...                           feedback="Ask for digits.", optimizer="Answer with digits.")
        >>> system = Variable("Answer.", role="system prompt", requires_grad=True)
        >>> def ask():
        ...     messages = [{"role": "system", "content": [system]},
        ...                 {"role": "user", "content": [Variable("2+2?")]}]
        ...     return ChatCompletion.apply(model, messages, backward_model=model)
        >>> def minibatch():
        ...     answer = ask()
        ...     return [ScoredItem(MetricResult(float(answer.data == "4")), answer, expected="4")]
        >>> def validate():
        ...     return Validation(float(ask().data == "4"))
        >>> outcome = training_step(TGD([system], model=model), minibatch, lambda i: [i.prediction],
        ...                         feedback=FeedbackPolicy(), gate=GatePolicy(),
        ...                         validate=validate, current=0.0)
        >>> outcome.status, outcome.validation.score, system.data
        ('accepted', 1.0, 'Answer with digits.')
    """
    optimizer.zero_grad()
    items = list(minibatch())
    if items and all(item.error is not None for item in items):
        first = next(item.error for item in items)
        return StepOutcome(FAILED, f"failed: every example of the minibatch failed: {first}", items)
    pending = []
    wanted = 0
    for item in items:
        if not feedback.needs_feedback(item):
            continue
        wanted += 1
        outputs = list(roots(item))
        if outputs:
            pending.append([(output, feedback.text(item)) for output in outputs])
    if not pending:
        if wanted:  # e.g. a program whose outputs came from no trainable parameter
            reason = "the items to learn from reached no trainable prompt"
        elif any(i.error for i in items):
            reason = "no item to learn from"
        else:
            reason = "every item already correct"
        return StepOutcome(NO_FEEDBACK, f"no feedback: {reason}", items)
    failures = run_sync(lambda: _backward_each(pending, max_concurrency))
    outcome = StepOutcome(NO_UPDATE, "", items, len(pending), len(failures))
    if len(failures) == len(pending):
        optimizer.zero_grad()
        outcome.status, outcome.decision = FAILED, f"failed: every backward pass failed: {failures[0]}"
        return outcome
    before = [p.data for p in optimizer.params]
    try:
        optimizer.step()
    except Exception as exc:  # nothing was written (optimizers write only when all succeed)
        cause = unrecoverable_cause(exc)
        if cause is not None:  # a rejected key or a missing model: no later step can do better
            raise cause from (None if cause is exc else exc)
        outcome.status, outcome.decision = FAILED, f"failed: the optimizer step failed: {describe_error(exc)}"
        return outcome
    finally:
        optimizer.zero_grad()
    outcome.report = optimizer.last_step
    if outcome.report is None or not outcome.report.any_updated:
        outcome.decision = "no update: every proposal was rejected or skipped"
        return outcome
    if validate is None or not gate.validates:
        outcome.status, outcome.decision = ACCEPTED, ACCEPTED
        return outcome
    outcome.validation = validate()
    decision = gate.decide(outcome.validation.score, current)
    if not decision.keep:
        for p, value in zip(optimizer.params, before):
            p.data = value
    outcome.status = ACCEPTED if decision.keep else ROLLED_BACK
    outcome.decision = decision.reason
    return outcome


async def _backward_each(
    pending: list[list[tuple[Variable, str]]], max_concurrency: int | None
) -> list[str]:
    """One backward pass per item, concurrently, so one failure loses only its item."""
    outcomes = await asyncio.gather(
        *(run_backward(pairs, max_concurrency=max_concurrency) for pairs in pending),
        return_exceptions=True,
    )
    failures = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):
                raise outcome
            cause = unrecoverable_cause(outcome)
            if cause is not None:  # the model's own error (LMAuthError...), as DSPy raises it
                raise cause
            failures.append(describe_error(outcome))
    return failures
