"""Every text the DSPy face puts in front of a model, as data.

The backward request itself is the autodiff layer's chat backward prompt
(:func:`afnio_langchain.autodiff._prompts.chat_backward_messages`): a predictor call is
shown as the conversation DSPy's adapter sent and the outputs it parsed. The texts
here name what the variables are and word the feedback between predictors; the feedback
that enters the graph from the metric is worded by the one feedback policy of
:mod:`afnio_langchain.loop` (the same as ``fit``'s).
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

REQUEST_FIELD = "request"
REQUEST_DESCRIPTION = "What is asked, with everything needed to answer it"
"""The one input field of the DSPy signature a structured request (a gradient, a
proposal) becomes when a ``dspy.LM`` answers it (:mod:`afnio_langchain.dspy._protocol`)."""

UNNAMED_PREDICTOR = "unnamed predictor {index}"
"""Name given to a traced predictor that is not one of the program's own predictors."""


__all__ = [
    "FIELD_FEEDBACK",
    "INSTRUCTIONS_ROLE",
    "OUTPUT_ROLE",
    "REQUEST_DESCRIPTION",
    "REQUEST_FIELD",
    "RESPONSE_ROLE",
    "UNNAMED_PREDICTOR",
]
