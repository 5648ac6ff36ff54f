"""The scores ``fit`` and ``evaluate`` accept from a metric: numbers from 0 to 1.

Averages, the validation gate, the best step and the success threshold all read scores
on that scale, so a metric that returns anything else (3.0, -0.5, NaN, a string) stops
the run with :class:`MetricScoreError` instead of skewing them. A metric that *raises*
still fails only its own item.
"""

from __future__ import annotations

from typing import Any

from afnio_langchain.loop import Example, Metric, MetricResult, as_metric_result, metric_name
from afnio_langchain.train._text import clipped

_TOLERANCE = 1e-9
"""How far outside [0, 1] a score may stray by float rounding (a mean of fractions)."""


class MetricScoreError(ValueError):
    """A metric returned something other than a score from 0 to 1.

    Attributes:
        metric: The metric's name.
        value: What it returned.
        index: The item's position among the examples being scored.
        example: The example it was scoring.
    """

    def __init__(self, message: str, *, metric: str, value: Any, index: int, example: Any) -> None:
        super().__init__(message)
        self.metric = metric
        self.value = value
        self.index = index
        self.example = example


def checked_result(
    value: Any, metric: Metric, example: Example, index: int, *, numbered: bool = True
) -> MetricResult:
    """What ``metric`` returned for ``example``, normalised, once its score is known to be
    a number from 0 to 1 (a bool counts as 0 or 1).

    Args:
        value: What the metric returned.
        metric: The metric (for its name).
        example: The example scored.
        index: Its position among the examples being scored.
        numbered: Whether ``index`` means something to the user (the position in the
            set they passed), so that the message shows it.

    Raises:
        MetricScoreError: Not a score, or a score outside [0, 1]; the message names the
            metric, the value and the example.

    Example:
        >>> from afnio_langchain.train._scores import checked_result
        >>> checked_result((True, "Good."), lambda e, p: 1, {"q": "2+2?"}, 0)
        MetricResult(score=1.0, feedback='Good.')
        >>> checked_result(3.0, lambda e, p: 3.0, {"q": "2+2?"}, 0)
        Traceback (most recent call last):
        ...
        afnio_langchain.train._scores.MetricScoreError: the metric <lambda> returned 3.0 for example 0 ({'q': '2+2?'}): scores must be numbers from 0 to 1 (a bool counts as 0 or 1); make the metric return one (e.g. divide a count by its maximum)
    """
    try:
        result = as_metric_result(value)
    except TypeError:
        pass
    else:
        if -_TOLERANCE <= result.score <= 1 + _TOLERANCE:
            return MetricResult(min(1.0, max(0.0, result.score)), result.feedback)
    name = metric_name(metric)
    which = f"example {index}" if numbered else "an example"
    raise MetricScoreError(
        f"the metric {name} returned {_short(value)} for {which} ({_short(example)}): scores "
        "must be numbers from 0 to 1 (a bool counts as 0 or 1); make the metric return one "
        "(e.g. divide a count by its maximum)",
        metric=name, value=value, index=index, example=example,
    )


def _short(value: Any, limit: int = 160) -> str:
    return clipped(repr(value), limit)
