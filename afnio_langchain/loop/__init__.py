"""The training loop's shared parts, used by ``fit``/``Trainer``, the DSPy teleprompter
and the agents' metrics: the one verdict type (:class:`MetricResult`), the one
normaliser of what metrics return (:func:`as_metric_result`), and the built-in text
metrics.

Example:
    >>> from afnio_langchain.loop import exact_match
    >>> exact_match({"answer": "Paris"}, "paris").score
    1.0
"""

from afnio_langchain.loop._metrics import (
    TARGET_KEYS,
    Contains,
    ExactMatch,
    Example,
    Metric,
    MetricResult,
    as_metric_result,
    ascore,
    contains,
    default_feedback,
    exact_match,
    find_target,
    is_async_metric,
    metric_name,
    normalize_text,
    optional_reference,
    prediction_text,
)

__all__ = [
    "TARGET_KEYS",
    "Contains",
    "Example",
    "ExactMatch",
    "Metric",
    "MetricResult",
    "as_metric_result",
    "ascore",
    "contains",
    "default_feedback",
    "exact_match",
    "find_target",
    "is_async_metric",
    "metric_name",
    "normalize_text",
    "optional_reference",
    "prediction_text",
]
