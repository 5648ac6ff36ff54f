"""Partial failure: one failing minibatch item never loses the others' results, the error
names the item and the cause, and best-effort backward commits exactly what succeeded."""

from __future__ import annotations

import warnings

import pytest

from afnio_langchain import ChatCompletionRunnable, Variable, track_usage
from afnio_langchain.autodiff import (
    BackwardError,
    BackwardReport,
    ChatCompletion,
    Function,
    ItemFailureWarning,
    MinibatchError,
    Sum,
    failed_items,
)
from afnio_langchain.testing import ScriptedChatModel


def answer_unless(*bad: str):
    """A forward script that fails for requests containing any of ``bad``."""

    def answer(text: str) -> str:
        for word in bad:
            if word in text:
                raise ValueError(f"the model choked on {word}")
        return "answer to " + text.rsplit("\n", 1)[-1]

    return answer


def minibatch(model, questions, **kwargs):
    system = Variable("Answer briefly.", role="system prompt", requires_grad=True)
    items = [Variable(q, role="question", requires_grad=True) for q in questions]
    out = ChatCompletion.apply(
        model,
        [{"role": "system", "content": [system]}, {"role": "user", "content": "{q}"}],
        inputs={"q": items},
        **kwargs,
    )
    return system, items, out


# -- forward, default policy: raise, naming the item, keeping the rest -------------------


def test_failing_item_raises_minibatch_error_naming_item_and_cause():
    model = ScriptedChatModel(forward=answer_unless("q1"))
    with track_usage() as usage, pytest.raises(MinibatchError) as info:
        minibatch(model, ["q0", "q1", "q2"])
    error = info.value
    assert str(error) == (
        "ChatCompletion forward: 1 of 3 minibatch items failed: "
        "item 1: ValueError: the model choked on q1"
    )
    assert error.failed_items == [1]
    assert isinstance(error.errors[1], ValueError)
    assert error.results == ["answer to q0", None, "answer to q2"]  # nothing lost
    assert len(model.calls_of("forward")) == 3  # the others were not cancelled
    assert usage.by_purpose()["forward"].calls == 2
    assert usage.by_purpose()["forward"].failures == 1


def test_several_failures_are_all_listed_in_order():
    model = ScriptedChatModel(forward=answer_unless("q3", "q1"))
    with pytest.raises(MinibatchError, match=r"2 of 4 .* item 1: .*q1; item 3: .*q3") as info:
        minibatch(model, ["q0", "q1", "q2", "q3"])
    assert info.value.failed_items == [1, 3]
    assert info.value.results[0::2] == ["answer to q0", "answer to q2"]


def test_long_failure_lists_are_capped():
    model = ScriptedChatModel(forward=answer_unless("q"))
    with pytest.raises(MinibatchError, match="8 of 8 .*; and 3 more$") as info:
        minibatch(model, [f"q{i}" for i in range(8)])
    assert info.value.failed_items == list(range(8))


def test_a_single_call_raises_its_own_error_unchanged():
    model = ScriptedChatModel(forward=answer_unless("boom"))
    with pytest.raises(ValueError, match="choked on boom"):
        ChatCompletion.apply(model, [{"role": "user", "content": "boom"}])


def test_unknown_policy_is_refused_before_any_call():
    model = ScriptedChatModel(forward="x")
    with pytest.raises(ValueError, match="on_item_error must be one of"):
        minibatch(model, ["a"], on_item_error="skip")
    with pytest.raises(TypeError, match="item_placeholder must be a str"):
        minibatch(model, ["a"], on_item_error="placeholder", item_placeholder=None)
    assert model.calls == []


# -- forward, alternative policy: placeholder ---------------------------------------------


def test_placeholder_policy_keeps_going_records_and_warns():
    model = ScriptedChatModel(forward=answer_unless("q1"), feedback="be shorter")
    with pytest.warns(ItemFailureWarning, match=r"1 of 3 items failed .*item 1: ValueError"):
        system, items, out = minibatch(
            model, ["q0", "q1", "q2"], on_item_error="placeholder", backward_model=model
        )
    assert out.data == ["answer to q0", "", "answer to q2"]
    assert failed_items(out) == {1: "ValueError: the model choked on q1"}
    assert failed_items(system) == {}

    out.backward("too long")
    backward_texts = [c.text for c in model.calls_of("backward")]
    assert len(backward_texts) == 2  # no feedback is asked for the failed item
    assert not any("q1" in t for t in backward_texts)
    assert [g.data for g in system.grad] == ["be shorter", "be shorter"]
    assert [len(v.grad) for v in items] == [1, 0, 1]


def test_custom_placeholder_text():
    model = ScriptedChatModel(forward=answer_unless("q0"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ItemFailureWarning)
        _, _, out = minibatch(
            model, ["q0", "q1"], on_item_error="placeholder", item_placeholder="[no answer]"
        )
    assert out.data == ["[no answer]", "answer to q1"]


def test_placeholder_policy_through_the_runnable():
    model = ScriptedChatModel(forward=answer_unless("bad"))
    step = ChatCompletionRunnable(
        model=model, messages=[("user", "{q}")], on_item_error="placeholder"
    )
    with pytest.warns(ItemFailureWarning):
        out = step.invoke({"q": ["good", "bad"]})
    assert out.data == ["answer to good", ""]
    assert list(failed_items(out)) == [1]


def test_failed_items_rejects_non_variables():
    with pytest.raises(TypeError, match="takes a Variable"):
        failed_items("text")  # type: ignore[arg-type]


# -- backward: all or nothing by default ----------------------------------------------------


def feedback_unless(bad: str):
    def feedback(text: str) -> str:
        if bad in text:
            raise ValueError(f"feedback failed for {bad}")
        return "fix it"

    return feedback


def test_failing_backward_item_commits_nothing_and_names_the_item():
    model = ScriptedChatModel(forward=answer_unless(), feedback=feedback_unless("q1"))
    system, items, out = minibatch(model, ["q0", "q1", "q2"], backward_model=model)
    with pytest.raises(BackwardError) as info:
        out.backward("wrong")
    assert info.value.node == "ChatCompletionBackward0"
    assert info.value.items == [1]
    assert "item 1: ValueError: feedback failed for q1" in str(info.value)
    assert len(model.calls_of("backward")) == 3  # the others ran to completion
    for leaf in (system, *items):
        assert leaf.grad == []


# -- backward: best effort ------------------------------------------------------------------


def test_best_effort_commits_the_other_items_and_reports_the_failed_one():
    model = ScriptedChatModel(forward=answer_unless(), feedback=feedback_unless("q1"))
    system, items, out = minibatch(model, ["q0", "q1", "q2"], backward_model=model)
    report = out.backward("wrong", best_effort=True)
    assert isinstance(report, BackwardReport)
    assert not report.ok
    (failure,) = report.failures
    assert (failure.node, failure.item) == ("ChatCompletionBackward0", 1)
    assert failure.reason == "ValueError: feedback failed for q1"
    assert str(failure) == "ChatCompletionBackward0 item 1: ValueError: feedback failed for q1"
    assert [g.data for g in system.grad] == ["fix it", "fix it"]  # items 0 and 2
    assert [len(v.grad) for v in items] == [1, 0, 1]
    assert report.gradients == 4
    assert report.to_dict()["failures"] == [
        {"node": "ChatCompletionBackward0", "item": 1, "error": failure.reason}
    ]
    with pytest.raises(RuntimeError, match="second time"):  # the graph was released
        out.backward("again")


def test_best_effort_batched_variable_gets_empty_text_for_the_failed_item():
    model = ScriptedChatModel(forward=answer_unless(), feedback=feedback_unless("q1"))
    questions = Variable(["q0", "q1", "q2"], role="questions", requires_grad=True)
    out = ChatCompletion.apply(
        model, [{"role": "user", "content": [questions]}], backward_model=model
    )
    report = out.backward("wrong", best_effort=True)
    assert [(f.node, f.item) for f in report.failures] == [("ChatCompletionBackward0", 1)]
    (grad,) = questions.grad
    assert grad.data == ["fix it", "", "fix it"]


class Explodes(Function):
    @staticmethod
    def forward(ctx, x):
        return Variable("y", role="exploded")

    @staticmethod
    def backward(ctx, grad_output):
        raise KeyError("no such thing")


def test_best_effort_whole_node_failure_spares_the_other_branches():
    model = ScriptedChatModel(forward="answer", feedback="fix it")
    system = Variable("sys", role="system prompt", requires_grad=True)
    good = ChatCompletion.apply(
        model, [{"role": "system", "content": [system]}, {"role": "user", "content": "hi"}],
        backward_model=model,
    )
    doomed = Variable("x", role="doomed input", requires_grad=True)
    prefix = Variable("Total: ", role="prefix", requires_grad=True)
    total = prefix + Sum.apply([good, Explodes.apply(doomed)])

    with pytest.raises(BackwardError, match="ExplodesBackward0"):
        total.backward("weak", retain_graph=True)
    assert (system.grad, doomed.grad, prefix.grad) == ([], [], [])

    report = total.backward("weak", best_effort=True)
    (failure,) = report.failures
    assert (failure.node, failure.item) == ("ExplodesBackward0", None)
    assert isinstance(failure.error, KeyError)
    assert [g.data for g in system.grad] == ["fix it"]
    assert len(prefix.grad) == 1
    assert doomed.grad == []


def test_best_effort_without_failures_reports_ok_and_default_returns_none():
    model = ScriptedChatModel(forward="answer", feedback="fix it")
    system, _, out = minibatch(model, ["a", "b"], backward_model=model)
    report = out.backward("wrong", best_effort=True, retain_graph=True)
    assert report.ok and report.failures == ()
    assert report.gradients == 4
    assert out.backward("wrong") is None
    assert len(system.grad) == 4


async def test_async_best_effort_backward():
    model = ScriptedChatModel(forward=answer_unless(), feedback=feedback_unless("q0"))
    system, items, out = minibatch(model, ["q0", "q1"], backward_model=model)
    report = await out.abackward("wrong", best_effort=True)
    assert [f.item for f in report.failures] == [0]
    assert len(system.grad) == 1


def test_a_failing_judge_item_keeps_the_other_verdicts_and_names_the_item():
    from afnio_langchain.autodiff import LMJudgeEvaluator

    def verdict(text: str) -> str:
        if "BROKEN" in text:
            raise ConnectionError("judge endpoint dropped the connection")
        return '{"score": 1, "explanation": "Fine."}'

    judge = ScriptedChatModel(judge=verdict)
    answers = Variable(["ok one", "BROKEN", "ok two"], role="answer", requires_grad=True)
    messages = [{"role": "user", "content": ["Rate this: {prediction}"]}]
    with pytest.raises(MinibatchError) as caught:
        LMJudgeEvaluator.apply(judge, messages, inputs={"prediction": answers})
    error = caught.value
    assert error.failed_items == [1]
    assert "item 1: ConnectionError: judge endpoint dropped the connection" in str(error)
    assert error.results[0]["explanation"] == "Fine." and error.results[2]["score"] == "1"
    texts = [call.text for call in judge.calls_of("judge")]
    assert sum("ok one" in t for t in texts) == sum("ok two" in t for t in texts) == 1
    assert sum("BROKEN" in t for t in texts) > 1  # a dropped connection is retried first
