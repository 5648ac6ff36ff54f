"""The backward engine as a concurrent scheduler: independent nodes at once, a node only
after all its gradients are in, concurrency caps, and atomic commits on failure."""

from __future__ import annotations

import pytest
from _gauge import Gauge

from afnio_langchain import Variable, concurrency_limit, set_backward_model
from afnio_langchain.autodiff import BackwardError, ChatCompletion, Sum
from afnio_langchain.testing import ScriptedChatModel


def branch(model, tag: str, backward_model=None):
    """One ChatCompletion with its own trainable system prompt."""
    system = Variable(f"system {tag}", role=f"instruction {tag}", requires_grad=True)
    messages = [
        {"role": "system", "content": [system]},
        {"role": "user", "content": [Variable(f"question {tag}", role="question")]},
    ]
    kwargs = {} if backward_model is None else {"backward_model": backward_model}
    return system, ChatCompletion.apply(model, messages, **kwargs)


def test_independent_nodes_run_concurrently():
    forward = ScriptedChatModel(forward="answer")
    slow_feedback = ScriptedChatModel(feedback="be better", latency=0.3)
    set_backward_model(slow_feedback)
    systems, outputs = zip(*(branch(forward, str(k)) for k in range(4)))
    total = Sum.apply(list(outputs))

    total.backward("the combined answer is weak")

    assert len(slow_feedback.calls_of("backward")) == 4
    assert all([g.data for g in s.grad] == ["be better"] for s in systems)
    assert slow_feedback.max_concurrent_calls == 4, "the 4 backward calls did not overlap"


def test_minibatch_items_backward_concurrently():
    forward = ScriptedChatModel(forward="answer")
    slow_feedback = ScriptedChatModel(feedback="fix", latency=0.3)
    system = Variable("sys", role="instruction", requires_grad=True)
    messages = [{"role": "system", "content": [system]}, {"role": "user", "content": ["{q}"]}]
    out = ChatCompletion.apply(
        forward, messages, inputs={"q": [f"q{i}" for i in range(8)]}, backward_model=slow_feedback
    )
    out.backward("wrong")
    assert len(slow_feedback.calls_of("backward")) == 8
    assert len(system.grad) == 8
    assert slow_feedback.max_concurrent_calls == 8, "the 8 item calls did not overlap"


def test_minibatch_forward_runs_concurrently():
    forward = ScriptedChatModel(forward="answer", latency=0.3)
    messages = [{"role": "user", "content": ["{q}"]}]
    out = ChatCompletion.apply(forward, messages, inputs={"q": [f"q{i}" for i in range(8)]})
    assert out.data == ["answer"] * 8
    assert forward.max_concurrent_calls == 8, "the 8 forward calls did not overlap"


def test_diamond_node_waits_for_all_gradients_and_runs_once():
    """A -> (B, C) -> Add: A's backward runs once, after B and C, with both feedbacks."""
    forward = ScriptedChatModel(forward="text")
    model_a = ScriptedChatModel(feedback="feedback for the root prompt")
    model_b = ScriptedChatModel(feedback="FROM-B: A is too vague", latency=0.25)
    model_c = ScriptedChatModel(feedback="FROM-C: A is too long")

    system, a = branch(forward, "A", backward_model=model_a)
    b = ChatCompletion.apply(
        forward,
        [{"role": "user", "content": [Variable("B reads {x}", role="b prompt")]}],
        inputs={"x": a},
        backward_model=model_b,
    )
    c = ChatCompletion.apply(
        forward,
        [{"role": "user", "content": [Variable("C reads {x}", role="c prompt")]}],
        inputs={"x": a},
        backward_model=model_c,
    )
    d = b + c
    d.backward("the final result is wrong")

    assert len(model_b.calls) == 1
    assert len(model_c.calls) == 1
    a_calls = model_a.calls_of("backward")
    assert len(a_calls) == 1, "the shared upstream node must run once"
    # it ran after both downstream nodes: its request holds both of their feedbacks
    assert "FROM-B: A is too vague" in a_calls[0].text
    assert "FROM-C: A is too long" in a_calls[0].text
    assert [g.data for g in system.grad] == ["feedback for the root prompt"]


def test_backward_call_order_follows_the_graph():
    """Calls recorded by one shared backward model: the two downstream nodes first, the
    upstream node last."""
    forward = ScriptedChatModel(forward="text")
    order: list[str] = []

    def feedback(text: str) -> str:
        for tag in ("B reads", "C reads", "system A"):
            if tag in text and f"<VARIABLE key=\"var_1\" role=\"{_role_for(tag)}\"" in text:
                order.append(tag)
                return f"feedback via {tag}"
        order.append("?")
        return "feedback"

    set_backward_model(ScriptedChatModel(feedback=feedback))
    system, a = branch(forward, "A")
    b = ChatCompletion.apply(
        forward, [{"role": "user", "content": [Variable("B reads {x}")]}], inputs={"x": a}
    )
    c = ChatCompletion.apply(
        forward, [{"role": "user", "content": [Variable("C reads {x}")]}], inputs={"x": a}
    )
    (b + c).backward("wrong")
    assert sorted(order[:2]) == ["B reads", "C reads"]
    assert order[2:] == ["system A"]
    assert len(system.grad) == 1


def _role_for(tag: str) -> str:
    return "instruction A" if tag == "system A" else "assistant response"


def test_max_concurrency_one_serialises_backward_calls():
    forward = ScriptedChatModel(forward="answer")
    gauge = Gauge(latency=0.15, reply='{"var_1": "ok"}')  # a gradient is JSON under its key
    set_backward_model(gauge)
    systems, outputs = zip(*(branch(forward, str(k)) for k in range(4)))
    total = Sum.apply(list(outputs))

    total.backward("weak", max_concurrency=1)

    assert gauge.total == 4
    assert gauge.peak == 1
    assert all(len(s.grad) == 1 for s in systems)


def test_max_concurrency_caps_calls_in_flight():
    forward = ScriptedChatModel(forward="answer")
    gauge = Gauge(latency=0.05, reply='{"var_1": "ok"}')
    set_backward_model(gauge)
    _, outputs = zip(*(branch(forward, str(k)) for k in range(6)))
    Sum.apply(list(outputs)).backward("weak", max_concurrency=2)
    assert gauge.total == 6
    assert gauge.peak == 2


def test_failing_node_raises_backward_error_and_commits_nothing():
    forward = ScriptedChatModel(forward="answer")
    good = ScriptedChatModel(feedback="fine feedback")
    attempts = {"n": 0}

    def flaky(text: str) -> str:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise ValueError("the feedback model broke")
        return "late feedback"

    bad = ScriptedChatModel(feedback=flaky, latency=0.2)  # fails after others finish
    s1, o1 = branch(forward, "1", backward_model=good)
    s2, o2 = branch(forward, "2", backward_model=bad)
    s3, o3 = branch(forward, "3", backward_model=good)
    prefix = Variable("Combined: ", role="prefix", requires_grad=True)
    total = prefix + Sum.apply([o1, o2, o3])

    with pytest.raises(BackwardError) as info:
        total.backward("weak")
    assert info.value.node == "ChatCompletionBackward0"
    assert "ChatCompletionBackward0" in str(info.value)
    assert "the feedback model broke" in str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert len(good.calls) == 2  # the other nodes did run...
    for leaf in (s1, s2, s3, prefix):  # ...but nothing was committed
        assert leaf.grad == []

    # the graph is not freed by a failed pass: once the model works, backward succeeds
    total.backward("weak")
    assert [g.data for g in s2.grad] == ["late feedback"]
    for leaf in (s1, s3, prefix):
        assert len(leaf.grad) == 1


def test_failing_custom_node_is_named():
    from afnio_langchain.autodiff import Function

    class Explodes(Function):
        @staticmethod
        def forward(ctx, x):
            return Variable("y")

        @staticmethod
        def backward(ctx, grad_output):
            raise KeyError("no such thing")

    x = Variable("x", requires_grad=True)
    with pytest.raises(BackwardError, match="ExplodesBackward0"):
        (Explodes.apply(x) + "!").backward("f")
    assert x.grad == []


def test_concurrency_limit_caps_forward_minibatch_calls():
    gauge = Gauge(latency=0.05)
    messages = [{"role": "user", "content": ["{q}"]}]
    with concurrency_limit(2):
        out = ChatCompletion.apply(gauge, messages, inputs={"q": [str(i) for i in range(6)]})
    assert out.data == ["ok"] * 6
    assert gauge.peak == 2

    unlimited = Gauge(latency=0.05)
    ChatCompletion.apply(unlimited, messages, inputs={"q": [str(i) for i in range(6)]})
    assert unlimited.peak == 6


def test_concurrency_limit_one_serialises_a_scripted_model():
    model = ScriptedChatModel(forward="x", latency=0.05)
    messages = [{"role": "user", "content": ["{q}"]}]
    with concurrency_limit(1):
        out = ChatCompletion.apply(model, messages, inputs={"q": ["a", "b", "c", "d"]})
    assert out.data == ["x"] * 4
    assert len(model.calls) == 4 and model.max_concurrent_calls == 1


def test_concurrency_limit_rejects_bad_values():
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError):
            with concurrency_limit(bad):
                pass
