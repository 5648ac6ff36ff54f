"""The training loop's shared parts, used by ``fit``/``Trainer``, the DSPy teleprompter
and the agents' metrics: the one verdict type (:class:`MetricResult`), the one
normaliser of what metrics return (:func:`as_metric_result`), the built-in text
metrics, and the one validation-gated training step (:func:`training_step`, with its
:class:`FeedbackPolicy` and :class:`GatePolicy`).

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
    GraphState,
    Metric,
    MetricResult,
    acall_metric,
    as_metric_result,
    ascore,
    contains,
    default_feedback,
    exact_match,
    expected_text,
    feedback_text,
    find_target,
    is_async_metric,
    is_langgraph_graph,
    metric_name,
    normalize_text,
    optional_reference,
    prediction_text,
    structured_text,
)
from afnio_langchain.loop._step import (
    GATES,
    FeedbackPolicy,
    GateDecision,
    GatePolicy,
    ScoredItem,
    StepOutcome,
    Validation,
    training_step,
)

__all__ = [
    "GATES",
    "TARGET_KEYS",
    "Contains",
    "Example",
    "ExactMatch",
    "FeedbackPolicy",
    "GateDecision",
    "GraphState",
    "GatePolicy",
    "Metric",
    "MetricResult",
    "ScoredItem",
    "StepOutcome",
    "Validation",
    "acall_metric",
    "as_metric_result",
    "ascore",
    "contains",
    "default_feedback",
    "exact_match",
    "expected_text",
    "feedback_text",
    "find_target",
    "is_async_metric",
    "is_langgraph_graph",
    "metric_name",
    "normalize_text",
    "optional_reference",
    "prediction_text",
    "structured_text",
    "training_step",
]
