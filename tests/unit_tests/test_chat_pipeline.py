"""``step | step`` of LLM steps is a ``ChatPipeline``: on a list input its items flow
through the stages one by one (``runnables/_pipeline.py``, ``autodiff/_forward_streams.py``),
and everything a user reads is what LangChain's stage-by-stage ``RunnableSequence`` of
the same steps gives: values, graph, gradients, callbacks' runs and errors.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _paced_model import Paced as _Paced
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.runnables import RunnableLambda, RunnableSequence

from afnio_langchain import ChatCompletionRunnable, Variable
from afnio_langchain.autodiff import MinibatchError
from afnio_langchain.runnables import ChatPipeline
from afnio_langchain.testing import ScriptedChatModel

SIZE = 5


def Paced(**options: Any) -> _Paced:  # noqa: N802 - the model class, forward calls paced
    return _Paced("forward", **options)


def _steps(model: ScriptedChatModel, depth: int = 3, **options: Any):
    prompts = [
        Variable(f"You are stage {k + 1}.", role=f"stage {k + 1} prompt", requires_grad=True)
        for k in range(depth)
    ]
    steps = [
        ChatCompletionRunnable(
            model=model,
            messages=[("system", prompts[k]), ("user", "{question}" if k == 0 else "{draft}")],
            backward_model=model,
            output_role=f"stage {k + 1} answer",
            **options,
        )
        for k in range(depth)
    ]
    return prompts, steps


def _pipeline(steps: list[Any]) -> Any:
    chain = steps[0]
    for step in steps[1:]:
        chain = chain | step
    return chain


QUESTIONS = {"question": [f"q{i}" for i in range(SIZE)]}


def test_llm_steps_compose_into_a_pipeline_and_anything_else_into_a_sequence():
    _, (a, b, c) = _steps(ScriptedChatModel(forward="x"))
    chain = a | b | c
    assert isinstance(chain, ChatPipeline) and isinstance(chain, RunnableSequence)
    assert chain.steps == [a, b, c]
    assert isinstance((a | b) | (b | c), ChatPipeline)
    mixed = a | RunnableLambda(lambda v: v)
    assert type(mixed) is RunnableSequence


def _run(chain: Any, inputs: Any, **config: Any) -> Any:
    return asyncio.run(chain.ainvoke(inputs, config=config or None))


def test_values_graph_and_gradients_are_those_of_the_stage_by_stage_sequence():
    results = []
    for build in (_pipeline, lambda steps: RunnableSequence(*steps)):
        model = Paced()
        prompts, steps = _steps(model)
        output = _run(build(steps), QUESTIONS)
        names = []
        node = output.grad_fn
        while node is not None:  # down the chain: each stage's node feeds the next
            names.append((node.name(), len(node.next_functions)))
            node = node.next_functions[1][0] if len(node.next_functions) > 1 else None
        output.backward([f"wrong {i}" for i in range(SIZE)])
        results.append((output.data, names, [sorted(g.data for g in p.grad) for p in prompts]))
    assert results[0] == results[1]
    assert results[0][0] == [f"s3-i{i}" for i in range(SIZE)]
    assert len(results[0][1]) == 3


def test_a_stage_asks_for_an_item_as_soon_as_the_stage_before_has_it():
    # item 0 of stage 1 is held until every other item is through stage 3 (or for
    # HOLD_LIMIT seconds, if the stages wait for each other and it never is)
    model = Paced(hold={(1, 0): lambda spans: all((3, i) in spans for i in range(1, SIZE))})
    _, steps = _steps(model)
    _run(_pipeline(steps), QUESTIONS)
    slow_end = model.spans[(1, 0)][1]
    assert all(model.spans[(3, i)][1] < slow_end for i in range(1, SIZE))
    assert model.spans[(2, 0)][0] >= slow_end


class _Runs(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.chains: dict[Any, tuple[str, Any, tuple[str, ...]]] = {}
        self.models: list[Any] = []

    async def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, tags=None,
                             **kwargs) -> None:
        self.chains[run_id] = (kwargs.get("name") or "", parent_run_id, tuple(sorted(tags or ())))

    async def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None,
                                  **kwargs) -> None:
        self.models.append(parent_run_id)

    def tree(self) -> list[tuple]:
        def path(run_id: Any) -> tuple:
            name, parent, tags = self.chains[run_id]
            return (*(path(parent) if parent in self.chains else ()), (name, tags))

        return sorted([path(r) for r in self.chains] + [("model", path(p)) for p in self.models],
                      key=repr)


def test_callbacks_see_the_same_runs_nested_the_same_way():
    trees = []
    for build in (_pipeline, lambda steps: RunnableSequence(*steps)):
        runs = _Runs()
        _, steps = _steps(Paced())
        _run(build(steps), QUESTIONS, callbacks=[runs], tags=["mine"])
        trees.append(runs.tree())
    assert trees[0] == trees[1]
    assert sum(1 for t in trees[0] if t[0] == "model") == 3 * SIZE


def test_a_failing_item_raises_the_stage_error_a_sequence_raises():
    errors = []
    for build in (_pipeline, lambda steps: RunnableSequence(*steps)):
        _, steps = _steps(Paced(fail=frozenset({(1, 3)})))
        with pytest.raises(MinibatchError) as raised:
            _run(build(steps), QUESTIONS)
        errors.append((raised.value.where, raised.value.failed_items, str(raised.value)))
    assert errors[0] == errors[1]
    assert errors[0][1] == [3]


def test_placeholders_for_failed_items_flow_on_as_in_a_sequence():
    outputs = []
    for build in (_pipeline, lambda steps: RunnableSequence(*steps)):
        _, steps = _steps(
            Paced(fail=frozenset({(1, 3)})), on_item_error="placeholder", item_placeholder="n/a"
        )
        with pytest.warns(Warning):
            outputs.append(_run(build(steps), QUESTIONS).data)
    assert outputs[0] == outputs[1]


def test_a_single_input_and_sync_calls_run_as_a_sequence():
    model = Paced()
    _, steps = _steps(model)
    chain = _pipeline(steps)
    assert _run(chain, {"question": "q7"}).data == "s3-i7"
    assert chain.invoke(QUESTIONS).data == [f"s3-i{i}" for i in range(SIZE)]


def test_a_streamed_stage_output_is_freed_with_its_graph():
    import gc
    import weakref

    from afnio_langchain.autodiff import _forward_streams

    _, steps = _steps(Paced())
    output = _run(_pipeline(steps), QUESTIONS)
    middle = weakref.ref(output.grad_fn.next_functions[1][0].ctx.conversation.slots[1].variable)
    assert middle() is not None and middle() not in _forward_streams._PENDING
    output.backward("too vague")
    del output
    gc.collect()
    assert middle() is None


def test_a_chain_rebuilt_around_new_llm_steps_keeps_streaming():
    from afnio_langchain.runnables._children import replace_children

    _, (a, b, c) = _steps(ScriptedChatModel(forward="x"))
    rebuilt = replace_children(a | b, lambda step: c if step is b else step)
    assert isinstance(rebuilt, ChatPipeline) and rebuilt.steps == [a, c]
    plain = replace_children(a | b, lambda step: RunnableLambda(lambda v: v) if step is b else step)
    assert type(plain) is RunnableSequence


def test_stages_after_a_failed_one_stop_making_calls():
    """Item 3 fails at once in stage 1 while the others are slow: stage 1 raises, and
    the later stages, started for the items already through, make no further calls."""
    model = Paced(
        delay=lambda stage, item: 0.0 if stage > 1 else (0.0 if item == 0 else 0.3),
        fail=frozenset({(1, 3)}),
    )
    _, steps = _steps(model)
    with pytest.raises(MinibatchError) as raised:
        _run(_pipeline(steps), QUESTIONS)
    assert raised.value.failed_items == [3]
    later = [key for key in model.spans if key[0] > 1]
    assert all(item == 0 for _, item in later)  # only item 0 got through before the failure
