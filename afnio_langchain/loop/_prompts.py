"""The feedback the training step writes from metric results (it becomes the gradient
of a prediction): the built-in metrics' wording, and the default for a failed item
whose metric gave no feedback."""

EXACT_MATCH_FEEDBACK = "The expected output was exactly {target!r}, but the output was {output!r}."
CONTAINS_FEEDBACK = "The output should contain {target!r}, but it was {output!r}."
DEFAULT_FEEDBACK = "This output scored {score:.2f} out of 1 on the metric {metric}."
DEFAULT_FEEDBACK_TARGET = " The expected output was {target!r}."
"""Feedback for a failed item when the metric gave none (with the target, if known)."""
