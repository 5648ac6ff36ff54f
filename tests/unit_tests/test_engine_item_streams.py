"""A minibatch pipeline's backward flows item by item (``autodiff/_item_streams.py``):
a stage's backward call for item ``i`` starts as soon as the next stage's call for item
``i`` has written its feedback, and every gradient is the one the level-by-level pass
gives: routed to the same item, the same texts, the same failures and the same
all-or-nothing commit.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _paced_model import Paced as _Paced
from _paced_model import stage_and_item

from afnio_langchain import Variable
from afnio_langchain.autodiff import BackwardError, ChatCompletion
from afnio_langchain.testing import ScriptedChatModel

SIZE = 6


def Paced(**options: Any) -> _Paced:  # noqa: N802 - the model class, backward calls paced
    return _Paced("backward", **options)


def _stage(text: str) -> int:
    return stage_and_item(text)[0]


def _item(text: str) -> int:
    return stage_and_item(text)[1]


def _pipeline(model: ScriptedChatModel, depth: int = 3, retain: int | None = None):
    """``depth`` minibatch stages, each a ChatCompletion over the previous one's list."""
    prompts = [
        Variable(f"You are stage {k + 1}.", role=f"stage {k + 1} prompt", requires_grad=True)
        for k in range(depth)
    ]
    value: Any = [f"q{i}" for i in range(SIZE)]
    outputs = []
    for k, prompt in enumerate(prompts):
        field = "q" if k == 0 else "draft"
        user = "{q}" if k == 0 else "{draft}"
        value = ChatCompletion.apply(
            model,
            [{"role": "system", "content": [prompt]}, {"role": "user", "content": [user]}],
            inputs={field: value},
            backward_model=model,
            output_role=f"stage {k + 1} answer",
        )
        if k == retain:
            value.retain_grad()
        outputs.append(value)
    return prompts, outputs


def _grad_texts(variable: Variable) -> list[str]:
    return sorted(str(g.data) for g in variable.grad)


def test_each_stage_gets_each_items_own_feedback():
    model = Paced()
    prompts, outputs = _pipeline(model)
    assert outputs[-1].data == [f"s3-i{i}" for i in range(SIZE)]
    outputs[-1].backward([f"wrong answer {i}" for i in range(SIZE)])
    for k, prompt in enumerate(prompts):
        assert _grad_texts(prompt) == sorted(f"fb s{k + 1} i{i}" for i in range(SIZE))
    # stage 2's request for item i carries what stage 3 wrote for item i, and no other's
    for call in model.calls_of("backward"):
        text = "\n".join(str(m.content) for m in call.messages)
        stage, item = _stage(text), _item(text)
        if stage < 3:
            assert f"fb s{stage + 1} i{item}" in text
            assert not any(f"fb s{stage + 1} i{j}" in text for j in range(SIZE) if j != item)


def test_an_earlier_stage_starts_an_item_before_the_later_stage_has_finished():
    """Item 0 of stage 3 is slow; the other items go on through stages 2 and 1."""
    # item 0 of stage 3 is held until every other item has reached stage 1 (or for
    # HOLD_LIMIT seconds, if the stages wait for each other and it never does)
    model = Paced(hold={(3, 0): lambda spans: all((1, i) in spans for i in range(1, SIZE))})
    prompts, outputs = _pipeline(model)
    outputs[-1].backward("too vague")
    slow_end = model.spans[(3, 0)][1]
    assert all(model.spans[(2, i)][0] < slow_end for i in range(1, SIZE))
    assert all(model.spans[(1, i)][0] < slow_end for i in range(1, SIZE))
    assert model.spans[(2, 0)][0] >= slow_end  # item 0 waited for its own feedback
    assert _grad_texts(prompts[0]) == sorted(f"fb s1 i{i}" for i in range(SIZE))


def test_a_failed_item_stops_the_pass_and_commits_nothing_then_a_retry_works():
    model = Paced(fail=frozenset({(3, 2)}))
    prompts, outputs = _pipeline(model)
    with pytest.raises(BackwardError) as raised:
        outputs[-1].backward("too vague", retain_graph=True)
    assert raised.value.node == "ChatCompletionBackward0" and raised.value.items == [2]
    assert all(p.grad == [] for p in prompts)
    model._fail.clear()
    outputs[-1].backward("too vague")
    for k, prompt in enumerate(prompts):
        assert _grad_texts(prompt) == sorted(f"fb s{k + 1} i{i}" for i in range(SIZE))


def test_best_effort_drops_the_failed_item_downstream_and_keeps_the_rest():
    model = Paced(fail=frozenset({(3, 2)}))
    prompts, outputs = _pipeline(model)
    report = outputs[-1].backward("too vague", best_effort=True)
    assert [(f.node, f.item) for f in report.failures] == [("ChatCompletionBackward0", 2)]
    others = [i for i in range(SIZE) if i != 2]
    assert _grad_texts(prompts[2]) == sorted(f"fb s3 i{i}" for i in others)
    assert _grad_texts(prompts[1]) == sorted(f"fb s2 i{i}" for i in others)
    assert (2, 2) not in model.spans and (1, 2) not in model.spans  # no feedback, no call


def test_a_retained_intermediate_gradient_holds_every_items_feedback():
    model = Paced()
    prompts, outputs = _pipeline(model, retain=1)
    outputs[-1].backward("too vague")
    (retained,) = outputs[1].grad
    assert retained.data == [f"fb s3 i{i}" for i in range(SIZE)]
    assert _grad_texts(prompts[0]) == sorted(f"fb s1 i{i}" for i in range(SIZE))


def test_an_item_without_feedback_makes_no_call_in_any_earlier_stage():
    model = Paced()
    prompts, outputs = _pipeline(model)
    feedback = ["" if i == 4 else "too vague" for i in range(SIZE)]
    outputs[-1].backward(feedback)
    assert not any(item == 4 for (_, item) in model.spans)
    assert _grad_texts(prompts[0]) == sorted(f"fb s1 i{i}" for i in range(SIZE) if i != 4)


def test_feedback_a_consumer_never_published_reaches_the_producer_as_it_would_unstreamed():
    """A consumer that returns one gradient text for all items (without publishing
    item by item) still gives every item of the stage before that text."""
    from afnio_langchain.autodiff._item_streams import GradientStream

    stream = GradientStream(3)
    stream.finish(Variable("be concise", role="feedback"))
    many = GradientStream(2)
    many.put(0, "kept")
    many.finish([Variable(["a0", "a1"], role="f"), Variable(["", "b1"], role="f")])

    async def read(s: GradientStream) -> list[str]:
        return [await s.get(i) for i in range(s.size)]

    assert asyncio.run(read(stream)) == ["be concise"] * 3
    assert asyncio.run(read(many)) == ["kept", "a1\n\nb1"]
