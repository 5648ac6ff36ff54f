"""DSPy's own optimizer tests, adapted to ``TextualGradientDescent``.

Source: stanfordnlp/dspy (MIT License, Copyright (c) 2023 Stanford Future Data
Systems), at the 3.3.1 release commit 4ed377ee9:

- ``tests/teleprompt/test_copro_optimizer.py``: the six COPRO tests below, one for one,
  under the same names. Kept as written: the metric, the trainset, ``SimpleModule``
  (a ``ChainOfThought`` program), ``dspy.configure(lm=DummyLM(...))`` as the only model
  (so the DummyLM is also this optimizer's backward and optimizer model), the
  ``compile`` calls with ``eval_kwargs``, and every assertion. Changed, and said so at
  each test: ``COPRO(breadth, depth, init_temperature)`` becomes this optimizer's
  counterparts (``batch_size``, ``num_epochs``, the optimizer model's
  ``temperature``); and assertions were added on what this optimizer
  must do with such a DummyLM (its replies answer another signature, so they are no
  gradient and no instruction: the instructions stay as they were, and the unparseable
  examples score 0, are counted, and the compile goes on).
- ``tests/teleprompt/test_teleprompt.py``: ``test_get_params``.
- The ``clear_settings`` fixture is the one of DSPy's ``tests/conftest.py``.
"""

from __future__ import annotations

import copy

import pytest

dspy = pytest.importorskip("dspy")

from dspy import Example  # noqa: E402
from dspy.utils.dummies import DummyLM  # noqa: E402

from afnio_langchain.dspy import TextualGradientDescent  # noqa: E402


@pytest.fixture(autouse=True)
def clear_settings():
    """From DSPy's tests/conftest.py: every test gets fresh DSPy settings."""
    yield
    from dspy.dsp.utils.settings import DEFAULT_CONFIG

    dspy.configure(**copy.deepcopy(DEFAULT_CONFIG), inherit_config=False)


# Define a simple metric function for testing
def simple_metric(example, prediction):
    # Simplified metric for testing: true if prediction matches expected output
    return example.output == prediction.output


# Example training and validation sets
trainset = [
    Example(input="Question: What is the color of the sky?", output="blue").with_inputs("input"),
    Example(input="Question: What does the fox say?", output="Ring-ding-ding-ding-dingeringeding!").with_inputs(
        "input"
    ),
]

COPRO_PROPOSAL = {
    "proposed_instruction": "Optimized instruction 1",
    "proposed_prefix_for_output_field": "Optimized instruction 2",
}
"""COPRO's DummyLM script: a reply to COPRO's own proposal signature."""

DEFAULT_INSTRUCTIONS = "Given the fields `input`, produce the fields `output`."


def test_signature_optimizer_initialization():
    # COPRO(metric=..., breadth=2, depth=1, init_temperature=1.4): this optimizer's
    # counterparts are the minibatch size, the passes, and the rewriting temperature.
    optimizer = TextualGradientDescent(metric=simple_metric, batch_size=2, num_epochs=1, temperature=1.4)
    assert optimizer.metric == simple_metric, "Metric not correctly initialized"
    assert optimizer.batch_size == 2, "Batch size not correctly initialized"
    assert optimizer.num_epochs == 1, "Epochs not correctly initialized"
    assert optimizer.optimizer_args == {"temperature": 1.4}, "Temperature not correctly initialized"


class SimpleModule(dspy.Module):
    def __init__(self, signature):
        super().__init__()
        # COPRO doesn't work with dspy.Predict
        self.predictor = dspy.ChainOfThought(signature)

    def forward(self, **kwargs):
        return self.predictor(**kwargs)


def test_signature_optimizer_optimization_process():
    optimizer = TextualGradientDescent(metric=simple_metric, batch_size=2, num_epochs=1)
    dspy.configure(lm=DummyLM([COPRO_PROPOSAL]))

    student = SimpleModule("input -> output")

    # Assuming the compile method of COPRO requires a student module, a development set, and evaluation kwargs
    optimized_student = optimizer.compile(
        student, trainset=trainset, eval_kwargs={"num_threads": 1, "display_progress": False}
    )

    # Check that the optimized student has been modified from the original
    # This check can be more specific based on how the optimization modifies the student
    assert optimized_student is not student, "Optimization did not modify the student"

    # Added: the DummyLM answers no example (its one reply is COPRO's proposal), so every
    # example scores 0, is counted, and the compile goes on; and no reply becomes an
    # instruction.
    report = optimizer.last_report
    assert report.initial_score == 0.0 and report.initial_errors == 2
    assert report.steps[0].errors == 2 and report.steps[0].note.startswith("failed:")
    assert optimized_student.predictor.predict.signature.instructions == DEFAULT_INSTRUCTIONS


def test_compile_without_eval_kwargs():
    # `eval_kwargs` is documented as optional, so compile() must run when it is omitted.
    # Regression test for #9080 (previously raised TypeError: missing keyword-only argument).
    optimizer = TextualGradientDescent(metric=simple_metric, batch_size=2, num_epochs=1)
    dspy.configure(lm=DummyLM([COPRO_PROPOSAL]))

    student = SimpleModule("input -> output")

    optimized_student = optimizer.compile(student, trainset=trainset)

    assert optimized_student is not student, "Optimization did not modify the student"


def test_signature_optimizer_statistics_tracking():
    optimizer = TextualGradientDescent(metric=simple_metric, batch_size=2, num_epochs=1)
    optimizer.track_stats = True  # Enable statistics tracking

    dspy.configure(lm=DummyLM([COPRO_PROPOSAL]))
    student = SimpleModule("input -> output")
    optimized_student = optimizer.compile(
        student, trainset=trainset, eval_kwargs={"num_threads": 1, "display_progress": False}
    )

    # Verify that statistics have been tracked and attached to the optimized student
    assert hasattr(optimized_student, "total_calls"), "Total calls statistic not tracked"
    assert hasattr(optimized_student, "results_best"), "Best results statistics not tracked"


# Assuming the setup_signature_optimizer fixture and simple_metric function are defined as before


def test_optimization_and_output_verification():
    lm = DummyLM(
        [
            {"proposed_instruction": "Optimized Prompt", "proposed_prefix_for_output_field": "Optimized Prefix"},
            {"reasoning": "france", "output": "Paris"},
            {"reasoning": "france", "output": "Paris"},
            {"reasoning": "france", "output": "Paris"},
            {"reasoning": "france", "output": "Paris"},
            {"reasoning": "france", "output": "Paris"},
            {"reasoning": "france", "output": "Paris"},
            {"reasoning": "france", "output": "Paris"},
        ]
    )
    dspy.configure(lm=lm)
    optimizer = TextualGradientDescent(metric=simple_metric, batch_size=2, num_epochs=1)

    student = SimpleModule("input -> output")

    # Compile the student with the optimizer
    optimized_student = optimizer.compile(
        student, trainset=trainset, eval_kwargs={"num_threads": 1, "display_progress": False}
    )

    # Simulate calling the optimized student with a new input
    test_input = "What is the capital of France?"
    prediction = optimized_student(input=test_input)

    print(lm.get_convo(-1))

    assert prediction.output == "Paris"

    # Added: the backward requests were answered with another signature's fields
    # ("[[ ## reasoning ## ]]"...), which is no gradient: nothing was rewritten.
    step = optimizer.last_report.steps[0]
    assert step.with_feedback == 2 and step.backward_errors == 2
    assert optimized_student.predictor.predict.signature.instructions == DEFAULT_INSTRUCTIONS


def test_statistics_tracking_during_optimization():
    dspy.configure(
        lm=DummyLM(
            [
                {"proposed_instruction": "Optimized Prompt", "proposed_prefix_for_output_field": "Optimized Prefix"},
            ]
        )
    )

    optimizer = TextualGradientDescent(metric=simple_metric, batch_size=2, num_epochs=1)
    optimizer.track_stats = True  # Enable statistics tracking

    student = SimpleModule("input -> output")
    optimized_student = optimizer.compile(
        student, trainset=trainset, eval_kwargs={"num_threads": 1, "display_progress": False}
    )

    # Verify that statistics have been tracked
    assert hasattr(optimized_student, "total_calls"), "Optimizer did not track total metric calls"
    assert optimized_student.total_calls > 0, "Optimizer reported no metric calls"

    # Check if the results_best and results_latest contain valid statistics
    assert "results_best" in optimized_student.__dict__, "Optimizer did not track the best results"
    assert "results_latest" in optimized_student.__dict__, "Optimizer did not track the latest results"
    assert len(optimized_student.results_best) > 0, "Optimizer did not properly populate the best results statistics"
    assert (
        len(optimized_student.results_latest) > 0
    ), "Optimizer did not properly populate the latest results statistics"

    # Additional detailed checks can be added here to verify the contents of the tracked statistics
    # Added: the baseline is the one candidate (nothing could be rewritten), scored like
    # dspy.Evaluate (percent), and the total counts the examples scored.
    assert [c["score"] for c in optimized_student.candidate_programs] == [0.0]
    assert optimized_student.results_best["predictor.predict"]["max"] == [0.0]
    assert optimized_student.total_calls == 4  # 2 validation + 2 minibatch examples


def test_get_params():
    # From tests/teleprompt/test_teleprompt.py (a DummyTeleprompter there): get_params
    # returns the constructor's settings.
    teleprompter = TextualGradientDescent(metric=simple_metric, batch_size=2)
    params = teleprompter.get_params()
    assert params["metric"] is simple_metric and params["batch_size"] == 2
    assert params["gate"] == "improve" and params["track_stats"] is False
