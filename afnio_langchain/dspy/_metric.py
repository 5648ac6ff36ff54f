"""Calling the metrics DSPy users write and reading score and feedback from them.

Accepted metrics: ``metric(example, prediction, trace=None)`` returning a number or a
bool, or a GEPA-style metric ``metric(gold, pred, trace, pred_name, pred_trace)``
returning ``dspy.Prediction(score=..., feedback=...)`` (``ScoreWithFeedback``) or a
dict with those keys, all read by the one normaliser
:func:`afnio_langchain.loop.as_metric_result`. Metrics are called in scoring mode (``trace=None``, and
``pred_name=pred_trace=None``: feedback about the whole program's output).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from afnio_langchain.loop import MetricResult, as_metric_result

Metric = Callable[..., Any]


def call_metric(metric: Metric, example: Any, prediction: Any) -> MetricResult:
    """Call ``metric`` on one example in scoring mode and read its result.

    The call is ``metric(example, prediction, None)``; a metric that requires
    ``pred_name`` and ``pred_trace`` (GEPA's form) gets ``None`` for both, and a
    two-argument metric gets ``(example, prediction)``.

    Example:
        >>> import dspy
        >>> from afnio_langchain.dspy import call_metric
        >>> def exact(gold, pred, trace=None):
        ...     return gold.answer == pred.answer
        >>> gold = dspy.Example(question="2+2?", answer="4").with_inputs("question")
        >>> call_metric(exact, gold, dspy.Prediction(answer="5")).score
        0.0
    """
    return as_metric_result(metric(*_arguments(metric, example, prediction)))


def check_metric(metric: Metric) -> None:
    """Check, without calling it, that ``metric`` takes one of the accepted forms.

    Raises:
        TypeError: It is not callable, or accepts none of the forms.
    """
    if not callable(metric):
        raise TypeError(f"metric must be callable, got {type(metric).__name__}")
    _arguments(metric, None, None)


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


__all__ = ["Metric", "MetricResult", "call_metric", "check_metric"]
