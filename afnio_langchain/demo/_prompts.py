"""The demo's texts: the starting system prompt, the user template and the rules the
optimizer must follow."""

INITIAL_SYSTEM_PROMPT = "You are a helpful assistant."
"""Deliberately vague: the model answers in sentences, the metric wants one word."""

USER_TEMPLATE = "Review: {review}\nIs this review positive or negative?"

SYSTEM_PROMPT_ROLE = "system prompt of a product-review sentiment classifier"
OUTPUT_ROLE = "sentiment label"

CONSTRAINTS = (
    "Keep it a system prompt for classifying the sentiment of product reviews.",
    "Keep it under 60 words.",
)

LABELS = ("positive", "negative")

FEEDBACK_FORMAT = (
    "The label is right, but the reply must be only the word {label!r}, not {output!r}."
)
FEEDBACK_WRONG = "The correct label is {label!r}, but the reply was {output!r}."
"""Feedback the demo metric writes (it becomes the gradient of the reply)."""
