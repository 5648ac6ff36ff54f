"""Every text the DSPy face puts in front of a model, as data.

The backward request itself is the autodiff layer's chat backward prompt
(:func:`afnio_langchain.autodiff._prompts.chat_backward_messages`): a predictor call is
shown as the conversation DSPy's adapter sent and the outputs it parsed. The texts
here name what the variables are and word the feedback that enters the graph.
"""

from __future__ import annotations

INSTRUCTIONS_ROLE = "instructions of the DSPy predictor '{predictor}'"
"""Role of a predictor's ``signature.instructions`` Variable."""

OUTPUT_ROLE = "'{field}' output of the DSPy predictor '{predictor}'"
"""Role of one output field of one predictor call."""

RESPONSE_ROLE = "outputs of the DSPy predictor '{predictor}'"
"""Role of a predictor call's response, shown to the backward model."""

FIELD_FEEDBACK = "Feedback on the output field(s) {fields}:\n{feedback}"
"""One block of the feedback a predictor call's outputs received."""

METRIC_FEEDBACK = (
    "The program's final output for this example scored {score} on the metric "
    "(a correct output scores at least {threshold}). The metric's feedback:\n{feedback}"
)
"""The gradient on the program's final outputs when the metric returned feedback text."""

SCORE_FEEDBACK = (
    "The program's final output for this example scored {score} on the metric "
    "(a correct output scores at least {threshold}), so it is wrong or incomplete."
)
"""The gradient on the program's final outputs when the metric returned a score only."""

EXPECTED_OUTPUT = "The expected output was:\n{labels}"
"""Appended to :data:`SCORE_FEEDBACK` when the example has labels (``show_labels``)."""

UNNAMED_PREDICTOR = "unnamed predictor {index}"
"""Name given to a traced predictor that is not one of the program's own predictors."""


__all__ = [
    "EXPECTED_OUTPUT",
    "FIELD_FEEDBACK",
    "INSTRUCTIONS_ROLE",
    "METRIC_FEEDBACK",
    "OUTPUT_ROLE",
    "RESPONSE_ROLE",
    "SCORE_FEEDBACK",
    "UNNAMED_PREDICTOR",
]
