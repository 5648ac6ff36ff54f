"""A model that can never answer (its key rejected, the model unknown, DSPy's LM not
configured) stops training at the first step it fails, instead of failing every step
while the forward calls are still paid for; the error raised is the model's own, as
DSPy's optimizers let it through (COPRO raises the prompt model's ``LMAuthError``).
Transient failures still fail only their step."""

from __future__ import annotations

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from afnio_langchain.autodiff import BackwardError, MinibatchError
from afnio_langchain.models import is_transient, is_unrecoverable
from afnio_langchain.testing import ScriptedChatModel
from afnio_langchain.train import TrainingError, fit


class AuthenticationError(Exception):
    """Shaped like openai's: an HTTP status on the error."""

    status_code = 401


class InternalServerError(Exception):
    status_code = 500


def _rejects(error: Exception):
    def feedback(request):
        raise error

    return feedback


DATA = [{"question": f"Capital of country {i}?", "answer": "Paris"} for i in range(4)]


def _chain(model):
    prompt = ChatPromptTemplate.from_messages([("system", "Answer."), ("human", "{question}")])
    return prompt | model | StrOutputParser()


def test_errors_no_retry_can_get_past_are_told_apart_from_transient_ones():
    auth = AuthenticationError("Incorrect API key provided")
    wrapped = BackwardError("ChatCompletionBackward0", auth)
    wrapped.__cause__ = auth
    batch = MinibatchError("ChatCompletion backward", ["ok", None], {1: auth})
    assert is_unrecoverable(auth) and is_unrecoverable(wrapped) and is_unrecoverable(batch)
    assert not is_transient(auth)
    server = InternalServerError("try again")
    assert not is_unrecoverable(server) and is_transient(server)
    assert not is_unrecoverable(BackwardError("ChatCompletionBackward0", server))


def test_fit_stops_at_the_first_step_whose_backward_model_rejects_its_key():
    forward = ScriptedChatModel(forward="Rome")
    coach = ScriptedChatModel(feedback=_rejects(AuthenticationError("Incorrect API key provided")))
    with pytest.raises(TrainingError, match=r"cannot be used: .*Incorrect API key.*API key, its name"):
        fit(_chain(forward), DATA, DATA[:1], metric=lambda e, p: 0.0, backward_model=coach,
            optimizer_model=coach, epochs=2, batch_size=2, progress=False)
    # The baseline (1 + 4 examples) and one minibatch of 2: not the other 3 steps.
    assert len(forward.calls_of("forward")) == 1 + 4 + 2


def test_a_step_whose_backward_model_fails_transiently_fails_only_that_step():
    forward = ScriptedChatModel(forward="Rome")
    coach = ScriptedChatModel(feedback=_rejects(InternalServerError("overloaded")))
    with pytest.raises(TrainingError, match=r"3 steps in a row failed"):
        fit(_chain(forward), DATA * 2, DATA[:1], metric=lambda e, p: 0.0, backward_model=coach,
            optimizer_model=coach, epochs=1, batch_size=2, progress=False)


def test_a_dspy_compile_raises_the_feedback_models_own_error_at_its_first_step():
    dspy = pytest.importorskip("dspy")
    from afnio_langchain.dspy import TextualGradientDescent, as_dspy_lm, chat_adapter_reply

    program = ScriptedChatModel(forward=chat_adapter_reply({"answer": "Rome"}))
    coach = ScriptedChatModel(feedback=_rejects(AuthenticationError("Incorrect API key provided")))
    train = [dspy.Example(question=q["question"], answer="Paris").with_inputs("question") for q in DATA]
    optimizer = TextualGradientDescent(lambda gold, pred, trace=None: gold.answer == pred.answer,
                                       backward_model=coach, batch_size=2, num_epochs=2, num_threads=1)
    with dspy.context(lm=as_dspy_lm(program)), pytest.raises(AuthenticationError):
        optimizer.compile(dspy.Predict("question -> answer"), trainset=train)
    assert len(program.calls) == 4 + 2  # the evaluation of the 4 examples, then one step
