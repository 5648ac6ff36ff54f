"""The demo's metric: the label, with partial credit for a right label in a sentence."""

from __future__ import annotations

import re
from typing import Any

from afnio_langchain.demo import _prompts as prompts
from afnio_langchain.loop import MetricResult, normalize_text, prediction_text


def label_metric(example: dict[str, Any], prediction: Any) -> MetricResult:
    """1.0 when the reply is exactly the label; 0.5 when it names the right label (and
    not the other one) inside a longer reply; else 0.0. Feedback says what to change.

    Example:
        >>> from afnio_langchain.demo import label_metric
        >>> label_metric({"label": "positive"}, "Positive.").score
        1.0
        >>> label_metric({"label": "negative"}, "This review is negative.").score
        0.5
        >>> label_metric({"label": "negative"}, "This review is positive.").feedback
        "The correct label is 'negative', but the reply was 'This review is positive.'."
    """
    label = normalize_text(str(example["label"]))
    output = prediction_text(prediction)
    words = set(re.findall(r"[a-z]+", output.casefold()))
    shown = output if len(output) <= 300 else output[:300] + "..."
    if normalize_text(output) == label:
        return MetricResult(1.0)
    others = set(prompts.LABELS) - {label}
    if label in words and not (words & others):
        return MetricResult(0.5, prompts.FEEDBACK_FORMAT.format(label=label, output=shown))
    return MetricResult(0.0, prompts.FEEDBACK_WRONG.format(label=label, output=shown))
