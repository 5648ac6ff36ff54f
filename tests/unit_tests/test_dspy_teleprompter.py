"""TextualGradientDescent (a DSPy Teleprompter) and the predictor-call graph, offline:
DSPy's DummyLM or a scripted chat model runs the program, ScriptedChatModel writes the
gradients and the rewrites."""

from __future__ import annotations

import importlib
import sys

import pytest

dspy = pytest.importorskip("dspy")

from dspy.utils import DummyLM  # noqa: E402

from afnio_langchain import Variable, set_backward_model  # noqa: E402
from afnio_langchain.dspy import (  # noqa: E402
    TextualGradientDescent,
    as_dspy_lm,
    chat_adapter_reply,  # noqa: E402
)
from afnio_langchain.dspy._graph import PredictorCall, build_graph, outputs_feedback  # noqa: E402
from afnio_langchain.dspy._metric import MetricResult, call_metric
from afnio_langchain.loop import as_metric_result as to_metric_result  # noqa: E402
from afnio_langchain.testing import ScriptedChatModel  # noqa: E402

QUESTIONS = {"What is the capital of France?": "Paris", "What is 2+2?": "4"}


class TwoStep(dspy.Module):
    """A draft predictor feeding an answer predictor."""

    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict("question -> draft")
        self.answer = dspy.Predict("question, draft -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        draft = self.draft(question=question).draft
        return self.answer(question=question, draft=draft)


def trainset() -> list:
    return [
        dspy.Example(question=q, answer=a).with_inputs("question") for q, a in QUESTIONS.items()
    ]


def dummy_two_step() -> DummyLM:
    """Drafts DRAFT-A/DRAFT-B; the France answer is wrong, the 2+2 answer right. Keys are
    matched against the last message: the draft values pick the answer predictor."""
    return DummyLM(
        {
            "DRAFT-A": {"answer": "Lyon"},
            "DRAFT-B": {"answer": "4"},
            "capital of France": {"draft": "DRAFT-A"},
            "2+2": {"draft": "DRAFT-B"},
        }
    )


def two_step_lm():
    """The two-step program on a scripted model (through the DSPy bridge) whose answer
    predictor gets France right only once its instructions were rewritten: drafts
    DRAFT-A (France) / DRAFT-B (2+2); answers 4 to DRAFT-B, and Lyon to DRAFT-A unless
    the instructions say "NEW answer instructions." (then Paris)."""

    def draft(text: str) -> str:
        return "DRAFT-A" if "capital of France" in text else "DRAFT-B"

    def answer(text: str) -> str:
        if "DRAFT-B" in text:
            return "4"
        return "Paris" if "NEW answer instructions." in text else "Lyon"

    return as_dspy_lm(ScriptedChatModel(forward=chat_adapter_reply({"draft": draft, "answer": answer})))


def feedback_metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
    correct = gold.answer == pred.answer
    feedback = (
        "Correct." if correct else f"METRIC-FEEDBACK: expected {gold.answer}, got {pred.answer}."
    )
    return dspy.Prediction(score=float(correct), feedback=feedback)


def exact(gold, pred, trace=None):
    return gold.answer == pred.answer


def rewrite(text: str) -> str:
    """Optimizer script: a new instruction naming the predictor the request is about."""
    return "NEW draft instructions." if "predictor 'draft'" in text else "NEW answer instructions."


def coach(**kwargs) -> ScriptedChatModel:
    kwargs.setdefault("feedback", "Be precise about the requested fact.")
    kwargs.setdefault("optimizer", rewrite)
    return ScriptedChatModel(**kwargs)


# ---------------------------------------------------------------- compile


def test_compile_updates_both_predictors_of_a_two_predictor_program_offline():
    student = TwoStep()
    model = coach()
    optimizer = TextualGradientDescent(feedback_metric, backward_model=model, num_threads=1)
    with dspy.context(lm=two_step_lm()):
        optimized = optimizer.compile(student, trainset=trainset())
    assert optimized is not student and optimized._compiled
    assert optimized.draft.signature.instructions == "NEW draft instructions."
    assert optimized.answer.signature.instructions == "NEW answer instructions."
    # the student is left as it was
    assert (
        student.draft.signature.instructions
        == "Given the fields `question`, produce the fields `draft`."
    )
    report = optimizer.last_report
    step = report.steps[0]
    assert (step.with_feedback, step.updated, step.accepted) == (1, ["draft", "answer"], True)
    assert (report.initial_score, step.val_score, report.best_score) == (0.5, 1.0, 1.0)
    assert report.instructions == {
        "draft": "NEW draft instructions.",
        "answer": "NEW answer instructions.",
    }
    # one failing example, two predictor calls: two backward calls; one rewrite per predictor
    by_purpose = report.usage["by_purpose"]
    assert by_purpose["backward"]["calls"] == 2 and by_purpose["optimizer"]["calls"] == 2
    assert len(model.calls_of("backward")) == 2 and len(model.calls_of("optimizer")) == 2
    # initial validation (2 examples x 2 calls), the minibatch, the validation of the rewrite
    assert report.program_calls == 12


def test_metric_feedback_reaches_the_backward_prompts_of_every_predictor():
    model = coach()
    optimizer = TextualGradientDescent(feedback_metric, backward_model=model, num_threads=1)
    with dspy.context(lm=two_step_lm()):
        optimizer.compile(TwoStep(), trainset=trainset())
    backward = [call.text for call in model.calls_of("backward")]
    (answer_request,) = [t for t in backward if "outputs of the DSPy predictor 'answer'" in t]
    (draft_request,) = [t for t in backward if "outputs of the DSPy predictor 'draft'" in t]
    assert "METRIC-FEEDBACK: expected Paris, got Lyon." in answer_request
    # the answer call is asked about its instructions and about the draft it received
    assert "instructions of the DSPy predictor 'answer'" in answer_request
    assert "'draft' output of the DSPy predictor 'draft'" in answer_request
    # the draft call gets the feedback the answer call's backward wrote on the draft
    assert "Be precise about the requested fact." in draft_request
    assert "instructions of the DSPy predictor 'draft'" in draft_request
    # the optimizer saw that feedback for each predictor
    optimizer_requests = [call.text for call in model.calls_of("optimizer")]
    assert all("Be precise about the requested fact." in t for t in optimizer_requests)


def test_score_only_metric_feedback_shows_the_score_and_the_expected_output():
    model = coach()
    optimizer = TextualGradientDescent(exact, backward_model=model, num_threads=1)
    with dspy.context(lm=dummy_two_step()):
        optimizer.compile(TwoStep(), trainset=trainset())
    first = model.calls_of("backward")[0].text
    # the one feedback wording of fit and the teleprompter (loop.feedback_text)
    assert "This output scored 0.00 out of 1 on the metric exact." in first
    assert "The expected output was 'Paris'." in first

    model = coach()
    optimizer = TextualGradientDescent(
        exact, backward_model=model, num_threads=1, show_labels=False
    )
    with dspy.context(lm=dummy_two_step()):
        optimizer.compile(TwoStep(), trainset=trainset())
    assert "The expected output" not in model.calls_of("backward")[0].text


def test_correct_examples_are_skipped_and_a_batch_without_feedback_makes_no_calls():
    model = coach()
    optimizer = TextualGradientDescent(exact, backward_model=model, num_threads=1)
    lm = DummyLM({"DRAFT": {"answer": "4"}, "2+2": {"draft": "DRAFT"}})
    data = [dspy.Example(question="What is 2+2?", answer="4").with_inputs("question")]
    with dspy.context(lm=lm):
        optimized = optimizer.compile(TwoStep(), trainset=data)
    assert model.calls == []
    assert optimizer.last_report.steps[0].note == "no feedback: every item already correct"
    assert optimized.answer.signature.instructions == TwoStep().answer.signature.instructions

    # skip_correct=False sends feedback for correct examples too
    model = coach()
    optimizer = TextualGradientDescent(
        exact, backward_model=model, num_threads=1, skip_correct=False
    )
    with dspy.context(lm=DummyLM({"DRAFT": {"answer": "4"}, "2+2": {"draft": "DRAFT"}})):
        optimizer.compile(TwoStep(), trainset=data)
    assert len(model.calls_of("backward")) == 2


def instruction_sensitive_lm(bad_word: str = "BAD"):
    """A program LM (through the bridge) that answers right unless its instructions
    contain ``bad_word``."""

    def answer(text: str) -> str:
        objective = text.split("your objective is:", 1)[-1].split("[[ ## ", 1)[0]
        if bad_word in objective:
            return "wrong"
        return "Paris" if "France" in text else "4"

    return as_dspy_lm(ScriptedChatModel(forward=chat_adapter_reply({"answer": answer})))


def test_validation_gate_undoes_a_rewrite_that_lowers_the_score():
    data = [
        dspy.Example(question=q, answer=a).with_inputs("question") for q, a in QUESTIONS.items()
    ]
    val = list(data)
    train = [
        dspy.Example(question="What is the capital of France?", answer="Lyon").with_inputs(
            "question"
        )
    ]
    model = coach(optimizer="BAD instructions.")
    optimizer = TextualGradientDescent(exact, backward_model=model, num_threads=2)
    student = dspy.Predict("question -> answer")
    with dspy.context(lm=instruction_sensitive_lm()):
        optimized = optimizer.compile(student, trainset=train, valset=val)
    step = optimizer.last_report.steps[0]
    assert step.updated == ["self"] and step.val_score == 0.0 and step.accepted is False
    assert optimizer.last_report.initial_score == optimizer.last_report.best_score == 1.0
    assert optimized.signature.instructions == student.signature.instructions

    assert step.note == "rolled back: validation 0.000 <= 1.000"

    # without validation the rewrite is kept
    optimizer = TextualGradientDescent(
        exact, backward_model=coach(optimizer="BAD instructions."), num_threads=1, gate="off"
    )
    with dspy.context(lm=instruction_sensitive_lm()):
        optimized = optimizer.compile(student, trainset=train)
    assert optimized.signature.instructions == "BAD instructions."
    assert optimizer.last_report.best_score is None

    # the default gate keeps no tie; "no_worse" keeps a tie above zero
    for gate, kept in (("improve", False), ("no_worse", True)):
        optimizer = TextualGradientDescent(
            exact, backward_model=coach(optimizer="Fine instructions."), num_threads=1, gate=gate
        )
        with dspy.context(lm=instruction_sensitive_lm()):
            optimized = optimizer.compile(student, trainset=train, valset=val)
        step = optimizer.last_report.steps[0]
        assert (step.val_score, step.accepted) == (1.0, kept)
        expected = "Fine instructions." if kept else student.signature.instructions
        assert optimized.signature.instructions == expected


def test_min_improvement_asks_more_than_a_rise():
    data = [
        dspy.Example(question="What is the capital of France?", answer="Paris").with_inputs(
            "question"
        ),
        dspy.Example(question="What is 2+2?", answer="5").with_inputs("question"),
    ]
    # the rewrite mentions GOOD: 2+2 is answered 5, validation goes from 0.5 to 1.0
    def answer(text: str) -> str:
        if "France" in text:
            return "Paris"
        return "5" if "GOOD" in text else "4"

    lm = as_dspy_lm(ScriptedChatModel(forward=chat_adapter_reply({"answer": answer})))
    for min_improvement, kept in ((0.5, True), (0.6, False)):
        optimizer = TextualGradientDescent(
            exact,
            backward_model=coach(optimizer="GOOD instructions."),
            num_threads=1,
            min_improvement=min_improvement,
        )
        with dspy.context(lm=lm):
            optimizer.compile(dspy.Predict("question -> answer"), trainset=data)
        step = optimizer.last_report.steps[0]
        assert (step.val_score, step.accepted) == (1.0, kept)
    assert step.note == "rolled back: validation 1.000 < 0.500 + min_improvement 0.6"


def test_minibatches_epochs_and_max_steps():
    data = trainset() * 3  # 6 examples
    optimizer = TextualGradientDescent(
        exact, backward_model=coach(), batch_size=4, num_epochs=2, num_threads=1, gate="off"
    )
    with dspy.context(lm=dummy_two_step()):
        optimizer.compile(TwoStep(), trainset=data)
    steps = optimizer.last_report.steps
    assert [(s.epoch, s.batch_size) for s in steps] == [(1, 4), (1, 2), (2, 4), (2, 2)]
    optimizer = TextualGradientDescent(
        exact, backward_model=coach(), batch_size=2, max_steps=1, num_threads=1, gate="off"
    )
    with dspy.context(lm=dummy_two_step()):
        optimizer.compile(TwoStep(), trainset=data)
    assert len(optimizer.last_report.steps) == 1


def test_constraints_and_momentum_pass_through_to_tgd():
    model = coach()
    optimizer = TextualGradientDescent(
        feedback_metric,
        backward_model=model,
        num_threads=1,
        constraints=["Stay under 20 words."],
        momentum=2,
        gate="off",
    )
    with dspy.context(lm=dummy_two_step()):
        optimizer.compile(TwoStep(), trainset=trainset())
    assert all("Stay under 20 words." in call.text for call in model.calls_of("optimizer"))


def test_chain_of_thought_outputs_get_the_metric_feedback_once():
    class CoT(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.solve = dspy.ChainOfThought("question -> answer")

        def forward(self, question):
            return self.solve(question=question)

    model = coach()
    optimizer = TextualGradientDescent(
        feedback_metric, backward_model=model, num_threads=1, gate="off"
    )
    lm = DummyLM({"France": {"reasoning": "It is Lyon.", "answer": "Lyon"}})
    data = [
        dspy.Example(question="What is the capital of France?", answer="Paris").with_inputs(
            "question"
        )
    ]
    with dspy.context(lm=lm):
        optimized = optimizer.compile(CoT(), trainset=data)
    (request,) = [c.text for c in model.calls_of("backward")]
    assert "Feedback on the output field(s) 'reasoning', 'answer':" in request
    assert request.count("METRIC-FEEDBACK") == 1
    assert optimized.solve.predict.signature.instructions == "NEW answer instructions."


def test_backward_model_defaults_to_the_process_default_then_dspy_lm():
    model = coach()
    set_backward_model(model)
    optimizer = TextualGradientDescent(exact, num_threads=1, gate="off")
    with dspy.context(lm=dummy_two_step()):
        optimizer.compile(TwoStep(), trainset=trainset())
    assert len(model.calls_of("backward")) == 2
    set_backward_model(None)
    with dspy.context(lm=None):
        with pytest.raises(RuntimeError, match="needs a model to write feedback"):
            TextualGradientDescent(exact).compile(TwoStep(), trainset=trainset())


def test_separate_optimizer_model():
    backward, rewriter = coach(), coach()
    optimizer = TextualGradientDescent(
        exact, backward_model=backward, optimizer_model=rewriter, num_threads=1, gate="off"
    )
    with dspy.context(lm=dummy_two_step()):
        optimizer.compile(TwoStep(), trainset=trainset())
    assert backward.calls_of("optimizer") == [] and len(rewriter.calls_of("optimizer")) == 2


def test_usage_counts_the_program_calls_made_through_the_bridge():
    optimizer = TextualGradientDescent(exact, backward_model=coach(), num_threads=2)
    train = [
        dspy.Example(question="What is the capital of France?", answer="Lyon").with_inputs(
            "question"
        )
    ]
    with dspy.context(lm=instruction_sensitive_lm()):
        optimizer.compile(dspy.Predict("question -> answer"), trainset=train, valset=train)
    report = optimizer.last_report
    assert report.usage["by_purpose"]["forward"]["calls"] == report.program_calls == 3
    assert report.to_dict()["steps"][0]["with_feedback"] == 1


def test_failing_examples_score_zero_are_counted_and_the_compile_goes_on():
    def flaky(gold, pred, trace=None):
        if "France" in gold.question:
            raise ValueError("metric bug")
        return exact(gold, pred)

    optimizer = TextualGradientDescent(flaky, backward_model=coach(), num_threads=1, gate="off")
    with dspy.context(lm=dummy_two_step()):
        optimizer.compile(TwoStep(), trainset=trainset())
    step = optimizer.last_report.steps[0]
    assert (step.train_score, step.errors) == (0.5, 1)

    def broken(gold, pred, trace=None):
        raise ValueError("metric bug")

    model = coach()
    optimizer = TextualGradientDescent(broken, backward_model=model, num_threads=1)
    with dspy.context(lm=dummy_two_step()):
        optimized = optimizer.compile(TwoStep(), trainset=trainset())
    report = optimizer.last_report
    assert report.initial_score == 0.0 and report.initial_errors == 2
    (step,) = report.steps
    assert step.errors == 2 and step.accepted is None
    assert step.note == "failed: every example of the minibatch failed: ValueError: metric bug"
    assert report.failed_examples == 4 and model.calls == []  # nothing to learn from
    assert optimized.answer.signature.instructions == TwoStep().answer.signature.instructions


def test_argument_checks():
    with pytest.raises(TypeError, match="metric must be callable"):
        TextualGradientDescent("exact")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TextualGradientDescent(exact, batch_size=0)
    with pytest.raises(TypeError, match="num_threads must be an int"):
        TextualGradientDescent(exact, num_threads=1.5)
    with pytest.raises(ValueError, match="gate must be one of"):
        TextualGradientDescent(exact, gate="yes")
    with pytest.raises(ValueError, match="min_improvement must be >= 0"):
        TextualGradientDescent(exact, min_improvement=-1)
    optimizer = TextualGradientDescent(exact, backward_model=coach())
    with pytest.raises(TypeError, match="student must be a dspy.Module"):
        optimizer.compile("program", trainset=trainset())
    with pytest.raises(ValueError, match="trainset must be a non-empty list"):
        optimizer.compile(TwoStep(), trainset=[])
    with pytest.raises(TypeError, match=r"trainset\[0\] must be a dspy.Example"):
        optimizer.compile(TwoStep(), trainset=[{"question": "q"}])
    with pytest.raises(TypeError, match="unknown argument 'breadth'"):
        optimizer.compile(TwoStep(), trainset=trainset(), breadth=3)

    class NoPredictors(dspy.Module):
        def forward(self, question):
            return dspy.Prediction(answer=question)

    with pytest.raises(ValueError, match="no predictors"):
        optimizer.compile(NoPredictors(), trainset=trainset())


# ---------------------------------------------------------------- the graph


def run_traced(program, lm, **inputs):
    with dspy.context(lm=lm, trace=[]):
        prediction = program(**inputs)
        return prediction, list(dspy.settings.trace)


def test_each_predictor_call_is_a_node_wired_by_the_values_passed_between_predictors():
    program = TwoStep()
    prediction, trace = run_traced(
        program, dummy_two_step(), question="What is the capital of France?"
    )
    names = {id(p): n for n, p in program.named_predictors()}
    params = {
        id(p): Variable(p.signature.instructions, role=f"instructions of {n}", requires_grad=True)
        for n, p in program.named_predictors()
    }
    model = coach()
    graph = build_graph(trace, prediction, params, names, backward_model=model)
    assert [c.name for c in graph.calls] == ["draft", "answer"]
    (draft_out,), (answer_out,) = graph.outputs
    assert (draft_out.data, answer_out.data) == ("DRAFT-A", "Lyon")
    assert graph.roots == [answer_out]
    answer_node = answer_out.grad_fn
    assert answer_node.name() == "PredictorCallBackward0"
    # edges: the answer's instructions, then its draft input (the draft call's node)
    assert answer_node.next_functions[1][0] is draft_out.grad_fn
    answer_out.backward("The answer is wrong.")
    draft_params, answer_params = params.values()
    assert [g.data for g in answer_params.grad] == ["Be precise about the requested fact."]
    assert [g.data for g in draft_params.grad] == ["Be precise about the requested fact."]
    assert answer_params.grad[0].role == "feedback to instructions of answer"


def test_outputs_not_found_in_the_prediction_fall_back_to_the_last_call():
    class PostProcessed(TwoStep):
        def forward(self, question):
            return dspy.Prediction(answer=super().forward(question).answer.upper())

    program = PostProcessed()
    prediction, trace = run_traced(
        program, dummy_two_step(), question="What is the capital of France?"
    )
    names = {id(p): n for n, p in program.named_predictors()}
    params = {id(p): Variable("x", requires_grad=True) for _, p in program.named_predictors()}
    graph = build_graph(trace, prediction, params, names)
    assert graph.roots == list(graph.outputs[-1])


def test_untrained_predictors_still_pass_feedback_through():
    program = TwoStep()
    prediction, trace = run_traced(
        program, dummy_two_step(), question="What is the capital of France?"
    )
    names = {id(p): n for n, p in program.named_predictors()}
    draft_only = {id(program.draft): Variable("draft instr", requires_grad=True)}
    graph = build_graph(trace, prediction, draft_only, names, backward_model=coach())
    graph.roots[0].backward("Wrong.")
    assert len(draft_only[id(program.draft)].grad) == 1


def test_outputs_feedback_groups_fields_with_the_same_text():
    a, b, c = Variable("same"), Variable("same"), Variable("other")
    text = outputs_feedback(["reasoning", "answer", "extra"], [a, b, c])
    assert text == (
        "Feedback on the output field(s) 'reasoning', 'answer':\nsame\n\n"
        "Feedback on the output field(s) 'extra':\nother"
    )
    assert outputs_feedback(["x"], [None]) == ""


def test_predictor_call_checks_its_arguments():
    with pytest.raises(TypeError, match="instructions must be a Variable"):
        PredictorCall.apply("text", {}, None)


# ---------------------------------------------------------------- metrics


def test_metric_results_in_every_accepted_shape():
    from dspy.teleprompt.gepa.gepa_utils import ScoreWithFeedback

    assert to_metric_result(True) == MetricResult(1.0)
    assert to_metric_result(0.25) == MetricResult(0.25)
    assert to_metric_result({"score": 1, "feedback": "ok"}) == MetricResult(1.0, "ok")
    assert to_metric_result(dspy.Prediction(score=0, feedback="  ")) == MetricResult(0.0)
    assert to_metric_result(ScoreWithFeedback(score=0.5, feedback="half")) == MetricResult(
        0.5, "half"
    )
    with pytest.raises(TypeError, match="expected a number, a bool"):
        to_metric_result("yes")
    with pytest.raises(TypeError, match="without 'score'"):
        to_metric_result({"feedback": "x"})
    with pytest.raises(TypeError, match="score must be a number"):
        to_metric_result(dspy.Prediction(score="high"))


def test_metrics_of_every_signature_are_called_in_scoring_mode():
    gold, pred = trainset()[0], dspy.Prediction(answer="Paris")
    seen = []

    def gepa_required(gold, pred, trace, pred_name, pred_trace):
        seen.append((trace, pred_name, pred_trace))
        return 1

    def two(gold, pred):
        return 1

    assert call_metric(gepa_required, gold, pred).score == 1.0 and seen == [(None, None, None)]
    assert call_metric(two, gold, pred).score == 1.0
    assert call_metric(lambda *args: len(args), gold, pred).score == 3.0
    with pytest.raises(TypeError, match="must accept"):
        call_metric(lambda gold: 1, gold, pred)


# ---------------------------------------------------------------- surface


def test_public_names():
    import afnio_langchain.dspy as face

    for name in face.__all__:
        assert getattr(face, name) is not None
    with pytest.raises(AttributeError):
        face.NoSuchThing  # noqa: B018


def test_missing_dspy_gives_a_clear_import_error(monkeypatch):
    import afnio_langchain

    monkeypatch.setattr(afnio_langchain, "dspy", afnio_langchain.dspy)  # restored afterwards
    for name in [m for m in sys.modules if m == "dspy" or m.startswith("dspy.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in [m for m in sys.modules if m.startswith("afnio_langchain.dspy")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "afnio_langchain.models._dspy_adapter", raising=False)
    monkeypatch.setitem(sys.modules, "dspy", None)  # what an absent package looks like

    face = importlib.import_module("afnio_langchain.dspy")  # importing the package is fine
    with pytest.raises(ImportError, match=r"pip install 'afnio-langchain\[dspy\]'"):
        face.TextualGradientDescent  # noqa: B018
    with pytest.raises(ImportError, match=r"pip install 'afnio-langchain\[dspy\]'"):
        importlib.import_module("afnio_langchain.dspy._lm")
    with pytest.raises(ImportError, match=r"pip install 'afnio-langchain\[dspy\]'"):
        importlib.import_module("afnio_langchain.models._dspy_adapter")
