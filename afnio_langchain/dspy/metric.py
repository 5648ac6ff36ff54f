"""Calling the metrics DSPy users write and reading score and feedback from them.

Accepted metrics: ``metric(example, prediction, trace=None)`` returning a number or a
bool, or a GEPA-style metric ``metric(gold, pred, trace, pred_name, pred_trace)``
returning ``dspy.Prediction(score=..., feedback=...)`` (``ScoreWithFeedback``) or a
dict with those keys. Metrics are called in scoring mode (``trace=None``, and
``pred_name=pred_trace=None``: feedback about the whole program's output).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Metric = Callable[..., Any]

_EXPECTED = (
    "a number, a bool, or dspy.Prediction(score=..., feedback=...) "
    "(a dict with 'score' and 'feedback' works too)"
)


@dataclass(frozen=True)
class MetricResult:
    """What a metric said about one prediction.

    Attributes:
        score: The score, as a float (``True`` is 1.0).
        feedback: The metric's feedback text, or None when it returned a score only.

    Example:
        >>> import dspy
        >>> from afnio_langchain.dspy.metric import MetricResult, to_metric_result
        >>> to_metric_result(True)
        MetricResult(score=1.0, feedback=None)
        >>> to_metric_result(dspy.Prediction(score=0, feedback="Name the city."))
        MetricResult(score=0.0, feedback='Name the city.')
    """

    score: float
    feedback: str | None = None


def to_metric_result(value: Any) -> MetricResult:
    """Read score and feedback from what a metric returned.

    Raises:
        TypeError: The value is none of the accepted shapes, or the score is not a number.
    """
    feedback: Any = None
    if isinstance(value, Mapping):
        if "score" not in value:
            raise TypeError(f"the metric returned a dict without 'score'; expected {_EXPECTED}")
        score, feedback = value["score"], value.get("feedback")
    elif isinstance(value, (bool, int, float)):
        score = value
    elif hasattr(value, "score"):
        score, feedback = value.score, getattr(value, "feedback", None)
    else:
        raise TypeError(f"the metric returned {type(value).__name__}; expected {_EXPECTED}")
    if isinstance(score, bool):
        score = float(score)
    if not isinstance(score, (int, float)) or math.isnan(float(score)):
        raise TypeError(f"the metric's score must be a number or a bool, got {score!r:.100}")
    text = None if feedback is None else str(feedback).strip() or None
    return MetricResult(float(score), text)


def call_metric(metric: Metric, example: Any, prediction: Any) -> MetricResult:
    """Call ``metric`` on one example in scoring mode and read its result.

    The call is ``metric(example, prediction, None)``; a metric that requires
    ``pred_name`` and ``pred_trace`` (GEPA's form) gets ``None`` for both, and a
    two-argument metric gets ``(example, prediction)``.

    Example:
        >>> import dspy
        >>> from afnio_langchain.dspy.metric import call_metric
        >>> def exact(gold, pred, trace=None):
        ...     return gold.answer == pred.answer
        >>> gold = dspy.Example(question="2+2?", answer="4").with_inputs("question")
        >>> call_metric(exact, gold, dspy.Prediction(answer="5")).score
        0.0
    """
    return to_metric_result(metric(*_arguments(metric, example, prediction)))


def _arguments(metric: Metric, example: Any, prediction: Any) -> tuple[Any, ...]:
    try:
        signature = inspect.signature(metric)
    except (TypeError, ValueError):  # a builtin or C callable: DSPy's usual form
        return (example, prediction, None)
    for arguments in (
        (example, prediction, None),
        (example, prediction, None, None, None),
        (example, prediction),
    ):
        try:
            signature.bind(*arguments)
        except TypeError:
            continue
        return arguments
    raise TypeError(
        f"the metric {getattr(metric, '__name__', metric)!r} must accept "
        "(example, prediction, trace=None) or GEPA's (gold, pred, trace, pred_name, pred_trace)"
    )


__all__ = ["Metric", "MetricResult", "call_metric", "to_metric_result"]
