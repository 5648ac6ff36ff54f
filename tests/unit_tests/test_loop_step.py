"""The one validation-gated training step (loop.training_step) and its gate and
feedback policies, on their own: what fit and the DSPy teleprompter both rely on."""

from __future__ import annotations

import pytest

from afnio_langchain import Variable
from afnio_langchain.autodiff import ChatCompletion
from afnio_langchain.loop import (
    GATES,
    FeedbackPolicy,
    GatePolicy,
    MetricResult,
    ScoredItem,
    Validation,
    feedback_text,
    training_step,
)
from afnio_langchain.optim import TGD
from afnio_langchain.testing import ScriptedChatModel


@pytest.mark.parametrize(
    ("rule", "candidate", "current", "keep"),
    [
        ("improve", 0.75, 0.5, True),
        ("improve", 0.5, 0.5, False),
        ("improve", 0.0, 0.0, False),
        ("improve", 0.25, 0.5, False),
        ("no_worse", 0.75, 0.5, True),
        ("no_worse", 0.5, 0.5, True),
        ("no_worse", 0.0, 0.0, False),  # a tie at zero says nothing about the rewrite
        ("no_worse", 0.25, 0.5, False),
        ("off", 0.0, 1.0, True),
        ("improve", 0.0, None, True),  # nothing measured before
    ],
)
def test_gate_rules(rule, candidate, current, keep):
    assert GatePolicy(rule).decide(candidate, current).keep is keep


def test_gate_min_improvement_and_option_checks():
    gate = GatePolicy("improve", min_improvement=0.25)
    assert gate.decide(0.75, 0.5).keep and not gate.decide(0.7, 0.5).keep
    assert gate.decide(0.7, 0.5).reason == "rolled back: validation 0.700 < 0.500 + min_improvement 0.25"
    assert GATES == ("improve", "no_worse", "off")
    with pytest.raises(ValueError, match="gate must be one of"):
        GatePolicy("sometimes")
    with pytest.raises(ValueError, match="applies to gate='improve'"):
        GatePolicy("no_worse", min_improvement=0.1)
    with pytest.raises(ValueError, match=">= 0"):
        GatePolicy(min_improvement=-1)


def test_feedback_policy_and_wording():
    policy = FeedbackPolicy(metric="exact_match", success_threshold=0.5)
    assert not policy.needs_feedback(ScoredItem(MetricResult(0.5)))
    assert policy.needs_feedback(ScoredItem(MetricResult(0.25)))
    assert not policy.needs_feedback(ScoredItem(MetricResult(0.0), error="TimeoutError"))
    assert FeedbackPolicy(skip_correct=False).needs_feedback(ScoredItem(MetricResult(1.0)))
    assert policy.text(ScoredItem(MetricResult(0.0, "Be exact."))) == "Be exact."
    assert feedback_text(MetricResult(0.5), "m") == "This output scored 0.50 out of 1 on the metric m."


class Setup:
    """One system prompt, a chat step answering "4" only when it asks for digits."""

    def __init__(self, **scripts):
        scripts.setdefault("forward", lambda t: "4" if "digits" in t else "four")
        scripts.setdefault("feedback", "Ask for digits.")
        scripts.setdefault("optimizer", "Answer with digits.")
        self.model = ScriptedChatModel(**scripts)
        self.system = Variable("Answer.", role="system prompt", requires_grad=True)
        self.optimizer = TGD([self.system], model=self.model)

    def ask(self):
        messages = [{"role": "system", "content": [self.system]},
                    {"role": "user", "content": [Variable("2+2?")]}]
        return ChatCompletion.apply(self.model, messages, backward_model=self.model)

    def minibatch(self, error=None):
        def run():
            answer = self.ask()
            return [ScoredItem(MetricResult(float(answer.data == "4")), answer, "4", error)]

        return run

    def validate(self):
        return Validation(float(self.ask().data == "4"))

    def step(self, gate="improve", current=0.0, error=None, validate=True):
        return training_step(
            self.optimizer, self.minibatch(error), lambda item: [item.prediction],
            feedback=FeedbackPolicy(), gate=GatePolicy(gate),
            validate=self.validate if validate else None, current=current,
        )


def test_a_step_that_validation_says_is_better_is_kept():
    setup = Setup()
    outcome = setup.step()
    assert (outcome.status, outcome.kept, outcome.decision) == ("accepted", True, "accepted")
    assert (outcome.train_score, outcome.feedback_items, outcome.updated) == (0.0, 1, [0])
    assert setup.system.data == "Answer with digits." and setup.system.grad == []


def test_a_step_that_is_not_better_rolls_the_parameters_back():
    setup = Setup(optimizer="Reply.")
    outcome = setup.step(current=0.0)
    assert (outcome.status, outcome.kept) == ("rolled_back", False)
    assert outcome.decision == "rolled back: validation 0.000 <= 0.000"
    assert setup.system.data == "Answer." and outcome.validation == Validation(0.0)


def test_without_validation_every_rewrite_is_kept():
    for options in ({"validate": False}, {"gate": "off"}):
        setup = Setup(optimizer="Reply.")
        assert setup.step(**options).status == "accepted" and setup.system.data == "Reply."


def test_failed_steps_write_nothing():
    setup = Setup()
    outcome = setup.step(error="TimeoutError: slow")
    assert outcome.failed and outcome.decision == "failed: every example of the minibatch failed: TimeoutError: slow"

    setup = Setup(feedback=lambda text: (_ for _ in ()).throw(RuntimeError("backward down")))
    outcome = setup.step()
    assert outcome.failed and outcome.decision.startswith("failed: every backward pass failed:")
    assert setup.system.data == "Answer." and setup.system.grad == []

    setup = Setup(optimizer=lambda text: (_ for _ in ()).throw(RuntimeError("optimizer down")))
    outcome = setup.step()
    assert outcome.failed and "the optimizer step failed" in outcome.decision
    assert setup.system.data == "Answer." and setup.system.grad == []


def test_correct_items_get_no_feedback_and_no_calls():
    setup = Setup(forward="4")
    outcome = setup.step()
    assert (outcome.status, outcome.decision) == ("no_feedback", "no feedback: every item already correct")
    assert setup.model.calls_of("backward") == [] and setup.model.calls_of("optimizer") == []
