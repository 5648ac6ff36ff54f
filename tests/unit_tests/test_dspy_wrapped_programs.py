"""DSPy programs that copy, wrap or thread what they run, offline: ``dspy.BestOfN`` and
``dspy.Refine`` (a deep copy of the module per attempt), the deep copy every compile
makes of an LM set with ``set_lm``, and DSPy's worker threads under the package's
usage and concurrency scopes."""

from __future__ import annotations

import copy
import logging

import pytest

dspy = pytest.importorskip("dspy")

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.rate_limiters import InMemoryRateLimiter  # noqa: E402

from afnio_langchain import Variable, track_usage  # noqa: E402
from afnio_langchain.dspy import (  # noqa: E402
    TextualGradientDescent,
    as_dspy_lm,
    build_graph,
    carry_scopes,
    chat_adapter_reply,
)
from afnio_langchain.dspy._lm import bridged_client  # noqa: E402
from afnio_langchain.loop import (  # noqa: E402
    FeedbackPolicy,
    GatePolicy,
    MetricResult,
    ScoredItem,
    training_step,
)
from afnio_langchain.models import concurrency_limit, get_usage  # noqa: E402
from afnio_langchain.optim import TGD  # noqa: E402
from afnio_langchain.testing import ScriptedChatModel  # noqa: E402

QUESTION = "Capital of France?"
REWRITE = "NEW: answer with the capital city."


def answer(text: str) -> str:
    return "Paris" if "NEW" in text else "Lyon"


def program_model(**kwargs) -> ScriptedChatModel:
    fields = {"answer": answer, "reasoning": "r", "discussion": "d", "advice": '{"predict": "x"}'}
    return ScriptedChatModel(forward=chat_adapter_reply(fields), **kwargs)


def coach() -> ScriptedChatModel:
    return ScriptedChatModel(feedback="Name the capital city.", optimizer=REWRITE)


def feedback_metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
    right = gold.answer == pred.answer
    return dspy.Prediction(score=float(right), feedback="" if right else f"Expected {gold.answer}.")


def trainset(n: int = 1) -> list:
    return [dspy.Example(question=QUESTION, answer="Paris").with_inputs("question")] * n


def reward(args, pred) -> float:
    return 1.0 if pred.answer == "Paris" else 0.0


# ---------------------------------------------------------------- BestOfN / Refine


@pytest.mark.parametrize("wrapper", [dspy.BestOfN, dspy.Refine])
def test_best_of_n_and_refine_programs_are_trained(wrapper):
    student = wrapper(dspy.ChainOfThought("question -> answer"), N=2, reward_fn=reward, threshold=1.0)
    before = student.module.predict.signature.instructions
    model, teacher = program_model(), coach()
    optimizer = TextualGradientDescent(feedback_metric, backward_model=teacher, num_threads=1)
    with dspy.context(lm=as_dspy_lm(model)):
        optimized = optimizer.compile(student, trainset=trainset())
        step = optimizer.last_report.steps[0]
        assert (step.with_feedback, step.updated, step.accepted) == (1, ["module.predict"], True)
        assert len(teacher.calls_of("backward")) == 1 and len(teacher.calls_of("optimizer")) == 1
        # the rewrite is on the predictor the wrapper copies at its next call
        assert optimized.module.predict.signature.instructions == REWRITE
        assert optimized(question=QUESTION).answer == "Paris"
    assert student.module.predict.signature.instructions == before


def test_build_graph_maps_a_traced_copy_to_the_predictor_it_copies():
    qa = dspy.Predict("question -> answer")
    instructions = Variable(qa.signature.instructions, role="instructions", requires_grad=True)
    with dspy.context(lm=as_dspy_lm(program_model()), trace=[]):
        prediction = qa.deepcopy()(question=QUESTION)
        trace = list(dspy.settings.trace)
    args = (trace, prediction, {id(qa): instructions}, {id(qa): "qa"})
    assert build_graph(*args).roots == []  # matched by id only: a constant
    graph = build_graph(*args, predictors=[qa])
    assert [call.name for call in graph.calls] == ["qa"] and len(graph.roots) == 1
    assert graph.roots[0].grad_fn is not None and graph.ambiguous == []


class Twice(dspy.Module):
    """Two predictors with equal signatures: a copy of either cannot be told apart."""

    def __init__(self) -> None:
        super().__init__()
        self.first = dspy.Predict("question -> answer")
        self.second = dspy.Predict("question -> answer")

    def forward(self, question):
        self.first(question=question)
        return self.second(question=question)


def test_an_ambiguous_copy_stays_constant_warns_once_and_says_no_prompt_was_reached(caplog):
    student = dspy.BestOfN(Twice(), N=1, reward_fn=reward, threshold=1.0)
    teacher = coach()
    optimizer = TextualGradientDescent(feedback_metric, backward_model=teacher, num_threads=1, batch_size=2)
    with caplog.at_level(logging.WARNING), dspy.context(lm=as_dspy_lm(program_model())):
        optimizer.compile(student, trainset=trainset(2))
    step = optimizer.last_report.steps[0]
    assert step.note == "no feedback: the items to learn from reached no trainable prompt"
    assert teacher.calls == []
    warned = [r for r in caplog.records if "not known which one it copies" in r.getMessage()]
    assert len(warned) == 1 and "module.first, module.second" in warned[0].getMessage()


def test_a_step_whose_failing_items_reach_no_parameter_does_not_say_they_were_correct():
    prompt = Variable("Answer.", role="system prompt", requires_grad=True)
    items = [ScoredItem(MetricResult(0.0), expected="Paris"), ScoredItem(MetricResult(1.0))]
    outcome = training_step(
        TGD([prompt], model=coach()), lambda: items, lambda item: [],
        feedback=FeedbackPolicy(), gate=GatePolicy(),
    )
    assert (outcome.status, outcome.decision) == (
        "no_feedback",
        "no feedback: the items to learn from reached no trainable prompt",
    )


# ---------------------------------------------------------------- deep copies of the LM


class StartCounter(BaseCallbackHandler):
    def __init__(self) -> None:
        self.starts = 0

    def on_chat_model_start(self, *args, **kwargs) -> None:
        self.starts += 1


def test_the_optimized_program_calls_the_users_chat_model():
    handler = StartCounter()
    model = program_model(callbacks=[handler])
    lm = as_dspy_lm(model)
    student = dspy.Predict("question -> answer")
    student.set_lm(lm)
    optimizer = TextualGradientDescent(feedback_metric, backward_model=coach(), num_threads=1)
    optimized = optimizer.compile(student, trainset=trainset())
    compiled = optimizer.last_report.usage["by_purpose"]["forward"]["calls"]
    assert handler.starts == len(model.calls) == compiled
    assert bridged_client(optimized.lm) is bridged_client(lm)
    optimized(question=QUESTION)
    assert handler.starts == len(model.calls) == compiled + 1
    copied = copy.deepcopy(lm)
    assert copied is not lm and copied._engine_spec is lm._engine_spec
    assert copied._async_engine_spec is lm._async_engine_spec


def test_compile_logs_no_deep_copy_warning_for_a_model_that_cannot_be_deep_copied(caplog):
    limiter = InMemoryRateLimiter(requests_per_second=1000, max_bucket_size=1000)
    model = program_model(rate_limiter=limiter)
    with pytest.raises(TypeError):  # a lock inside
        copy.deepcopy(model)  # what DSPy's Module.deepcopy used to attempt, and warn about
    student = dspy.Predict("question -> answer")
    student.set_lm(as_dspy_lm(model))
    optimizer = TextualGradientDescent(feedback_metric, backward_model=coach(), num_threads=1)
    with caplog.at_level(logging.WARNING):
        optimized = optimizer.compile(student, trainset=trainset())
    assert not [r for r in caplog.records if "Failed to deep copy" in r.getMessage()]
    assert bridged_client(optimized.lm) is bridged_client(student.lm)
    assert optimizer.last_report.best_score == 1.0


# ---------------------------------------------------------------- DSPy's worker threads

EXAMPLES = [dspy.Example(question=f"Q{i}?", answer="Paris").with_inputs("question") for i in range(4)]


def exact(gold, pred, trace=None):
    return gold.answer == pred.answer


RUNS = {
    "Evaluate": lambda qa: dspy.Evaluate(devset=EXAMPLES, metric=exact, num_threads=4)(qa),
    "Evaluate default threads": lambda qa: dspy.Evaluate(devset=EXAMPLES, metric=exact)(qa),
    "batch": lambda qa: qa.batch(EXAMPLES, num_threads=4, disable_progress_bar=True),
    "Parallel": lambda qa: dspy.Parallel(num_threads=4, disable_progress_bar=True)(
        [(qa, ex) for ex in EXAMPLES]
    ),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_scopes_reach_dspy_worker_threads_only_under_carry_scopes(run):
    # as docs/dspy.md says: without carry_scopes, only the process-wide count sees them
    model = program_model(latency=0.05)
    qa = dspy.Predict("question -> answer")
    with dspy.context(lm=as_dspy_lm(model)):
        before = get_usage().total().calls
        with track_usage() as usage, concurrency_limit(1):
            RUNS[run](qa)
        assert usage.total().calls == 0 and get_usage().total().calls - before == 4
        assert model.max_concurrent_calls > 1

        model.reset()
        with track_usage() as usage, concurrency_limit(1), carry_scopes():
            RUNS[run](qa)
        assert usage.total().calls == 4 and usage.as_dict()["by_purpose"]["forward"]["calls"] == 4
        assert model.max_concurrent_calls == 1


def test_calls_in_the_calling_thread_are_counted_without_carry_scopes():
    qa = dspy.Predict("question -> answer")
    with dspy.context(lm=as_dspy_lm(program_model())), track_usage() as usage:
        dspy.Evaluate(devset=EXAMPLES, metric=exact, num_threads=1)(qa)
        qa(question=QUESTION)
    assert usage.total().calls == 5
