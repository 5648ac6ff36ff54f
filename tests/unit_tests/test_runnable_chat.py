"""ChatCompletionRunnable: inputs and message forms, schemas, streaming, batching,
retries, configurable fields, tracing structure and usage counting."""

from __future__ import annotations

import pytest
from _gauge import Gauge
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import ConfigurableField, RunnableLambda
from langchain_core.tracers.context import collect_runs

from afnio_langchain import (
    ChatCompletionRunnable,
    Variable,
    set_backward_model,
    track_usage,
)
from afnio_langchain.runnables import TextFunction, VariableStrOutputParser
from afnio_langchain.testing import ScriptedChatModel


def system_prompt(text: str = "Answer briefly.") -> Variable:
    return Variable(text, role="system prompt", requires_grad=True)


def step_for(model, system: Variable | None = None, **kwargs) -> ChatCompletionRunnable:
    return ChatCompletionRunnable(
        model=model, messages=[("system", system or system_prompt()), ("user", "{question}")], **kwargs
    )


class FailsFirst(BaseChatModel):
    """Fails its first ``failures`` calls with a non-transient error, then answers."""

    failures: int = 1
    seen: int = 0

    @property
    def _llm_type(self) -> str:
        return "fails-first"

    def _generate(self, messages, stop=None, run_manager=None, **kw):
        self.seen += 1
        if self.seen <= self.failures:
            raise ValueError("model refused")
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="fine"))])


# --------------------------------------------------------------------------- inputs


def test_string_inputs_are_wrapped_and_output_is_attached_to_the_graph():
    model = ScriptedChatModel(forward="Paris", feedback="be precise")
    set_backward_model(model)
    system = system_prompt()
    out = step_for(model, system).invoke({"question": "Capital of France?"})
    assert isinstance(out, Variable)
    assert out.data == "Paris" and out.grad_fn is not None
    assert model.calls[0].messages[1].content == "Capital of France?"
    out.backward("wrong")
    assert [g.data for g in system.grad] == ["be precise"]


def test_variable_inputs_that_require_grad_receive_feedback():
    model = ScriptedChatModel(forward="ok", feedback="fix")
    set_backward_model(model)
    question = Variable("Q?", role="question", requires_grad=True)
    out = step_for(model).invoke({"question": question})
    out.backward("bad")
    assert [g.data for g in question.grad] == ["fix"]


def test_a_single_value_fills_the_only_field():
    model = ScriptedChatModel(forward="ok")
    assert step_for(model).invoke("just the question").data == "ok"
    assert model.calls[0].messages[1].content == "just the question"


def test_bad_inputs_raise_clear_errors():
    step = step_for(ScriptedChatModel(forward="ok"))
    with pytest.raises(TypeError, match="must be a Variable, a str"):
        step.invoke({"question": {"nested": 1}})
    with pytest.raises(KeyError, match="missing input"):
        step.invoke({"other": "x"})
    with pytest.raises(TypeError, match="takes a dict"):
        step.invoke(42)
    with pytest.raises(TypeError, match="needs model"):
        ChatCompletionRunnable(messages=[("user", "hi")])
    with pytest.raises(TypeError, match="needs messages"):
        ChatCompletionRunnable(model=ScriptedChatModel(forward="x"))


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": ["SYS"]}, {"role": "user", "content": [Variable("{q}")]}],
        [("system", "SYS"), ("human", "{q}")],
        [SystemMessage(content="SYS"), ("user", Variable("{q}", role="user template"))],
    ],
    ids=["seed", "tuples", "message-objects"],
)
def test_message_forms_render_the_same(messages):
    model = ScriptedChatModel(forward="ok")
    ChatCompletionRunnable(model=model, messages=messages).invoke({"q": "hello"})
    sent = model.calls[0].messages
    assert [m.type for m in sent] == ["system", "human"]
    assert [m.content for m in sent] == ["SYS", "hello"]


def test_message_objects_are_literal_text():
    model = ScriptedChatModel(forward="ok")
    step = ChatCompletionRunnable(
        model=model, messages=[SystemMessage(content="Reply {as_json}"), HumanMessage(content="hi")]
    )
    assert step.input_keys == []
    step.invoke({})
    assert model.calls[0].messages[0].content == "Reply {as_json}"


def test_declared_input_variables_keep_other_braces_literal():
    model = ScriptedChatModel(forward="ok")
    system = Variable("Use {tone}. Learned: {unknown} and {\"a\": 1}", requires_grad=True)
    step = ChatCompletionRunnable(
        model=model, messages=[("system", system), ("user", "{q}")], input_variables=["tone", "q"]
    )
    assert step.input_keys == ["tone", "q"]
    step.invoke({"tone": "calm", "q": "hi"})
    assert model.calls[0].messages[0].content == 'Use calm. Learned: {unknown} and {"a": 1}'


def test_coerce_inputs_formats_values_like_a_prompt_template():
    model = ScriptedChatModel(forward="ok")
    step = ChatCompletionRunnable(model=model, messages=[("user", "{items}")], coerce_inputs=True)
    step.invoke({"items": ["a", "b"]})
    assert model.calls[0].messages[0].content == "['a', 'b']"


def test_default_inputs_and_completion_args():
    model = ScriptedChatModel(forward="ok")
    step = ChatCompletionRunnable(
        model=model, messages=[("user", "{a} {b}")], inputs={"a": "A"}, temperature=0.3
    )
    assert step.input_keys == ["b"]
    step.invoke({"b": "B"})
    assert model.calls[0].messages[0].content == "A B"
    assert model.calls[0].kwargs.get("temperature") == 0.3


# --------------------------------------------------------------------------- schemas


def test_input_and_output_schemas():
    step = step_for(ScriptedChatModel(forward="ok"))
    assert step.get_input_jsonschema()["required"] == ["question"]
    assert step.get_output_jsonschema()["type"] == "string"
    assert step.OutputType is Variable


# --------------------------------------------------------------------------- streaming


def test_stream_yields_text_chunks_then_one_variable():
    model = ScriptedChatModel(forward="The capital is Paris", feedback="f")
    set_backward_model(model)
    system = system_prompt()
    chunks = list(step_for(model, system).stream({"question": "q"}))
    *texts, out = chunks
    assert all(isinstance(c, str) for c in texts) and len(texts) > 1
    assert "".join(texts) == out.data == "The capital is Paris"
    assert out.grad_fn is not None
    out.backward("x")
    assert len(system.grad) == 1


async def test_astream_and_streaming_through_a_sequence():
    model = ScriptedChatModel(forward="one two three")
    chain = step_for(model) | VariableStrOutputParser() | TextFunction(str.upper)
    chunks = [c async for c in step_for(model).astream({"question": "q"})]
    assert "".join(chunks[:-1]) == "one two three" and isinstance(chunks[-1], Variable)
    streamed = list(chain.stream({"question": "q"}))
    assert isinstance(streamed[-1], Variable) and streamed[-1].data == "ONE TWO THREE"
    astreamed = [c async for c in chain.astream({"question": "q"})]
    assert astreamed[-1].data == "ONE TWO THREE"


def test_stream_surfaces_model_errors():
    step = step_for(FailsFirst(failures=5))
    with pytest.raises(ValueError, match="model refused"):
        list(step.stream({"question": "q"}))


# --------------------------------------------------------------------------- batching


def test_batch_runs_concurrently_and_honours_max_concurrency():
    model = Gauge(latency=0.3)
    step = step_for(model)
    outs = step.batch([{"question": str(i)} for i in range(8)])
    assert [o.data for o in outs] == ["ok"] * 8
    assert model.peak == 8
    model.peak = 0
    step.batch([{"question": str(i)} for i in range(6)], config={"max_concurrency": 2})
    assert model.peak == 2


async def test_abatch_runs_concurrently_and_honours_max_concurrency():
    model = Gauge(latency=0.3)
    step = step_for(model)
    outs = await step.abatch([{"question": str(i)} for i in range(8)])
    assert [o.data for o in outs] == ["ok"] * 8
    assert model.peak == 8
    model.peak = 0
    await step.abatch([{"question": str(i)} for i in range(6)], config={"max_concurrency": 3})
    assert model.peak == 3


def test_batch_return_exceptions():
    step = step_for(ScriptedChatModel(forward="ok"))
    outs = step.batch([{"question": "a"}, {"wrong": "b"}], return_exceptions=True)
    assert isinstance(outs[0], Variable) and isinstance(outs[1], KeyError)


# --------------------------------------------------------------------------- bindings


def test_with_retry_builds_the_graph_only_for_the_successful_attempt():
    model = FailsFirst(failures=1)
    set_backward_model(ScriptedChatModel(feedback="better"))
    system = system_prompt()
    step = step_for(model, system).with_retry(stop_after_attempt=2, wait_exponential_jitter=False)
    out = step.invoke({"question": "q"})
    assert model.seen == 2 and out.data == "fine"
    (edge,) = [e for e in out.grad_fn.next_functions if e[0] is not None]
    assert edge[0].variable is system
    out.backward("x")
    assert [g.data for g in system.grad] == ["better"]


def test_with_config_names_the_run():
    step = step_for(ScriptedChatModel(forward="ok")).with_config(run_name="drafter", tags=["t"])
    with collect_runs() as cb:
        step.invoke({"question": "q"})
    (run,) = cb.traced_runs
    assert run.name == "drafter" and "t" in run.tags


def test_configurable_model_field():
    system = system_prompt()
    step = step_for(ScriptedChatModel(forward="default"), system).configurable_fields(
        model=ConfigurableField(id="llm")
    )
    assert step.invoke({"question": "q"}).data == "default"
    other = step.with_config(configurable={"llm": ScriptedChatModel(forward="other")})
    out = other.invoke({"question": "q"})
    assert out.data == "other"
    assert out.grad_fn.next_functions[0][0].variable is system


# --------------------------------------------------------------------------- tracing and usage


def test_runs_nest_under_the_caller_and_the_model_run_under_ours():
    model = ScriptedChatModel(forward="ok")
    chain = RunnableLambda(lambda q: {"question": q}) | step_for(model)
    with collect_runs() as cb:
        chain.invoke("q")
    (root,) = cb.traced_runs
    assert root.name == "RunnableSequence"
    names = [child.name for child in root.child_runs]
    assert names[-1] == "ChatCompletionRunnable"
    ours = root.child_runs[-1]
    assert [(c.name, c.run_type) for c in ours.child_runs] == [("ScriptedChatModel", "llm")]
    assert ours.outputs["output"].data == "ok"


def test_batch_runs_are_traced_one_tree_per_input():
    model = ScriptedChatModel(forward="ok")
    with collect_runs() as cb:
        step_for(model).batch([{"question": "a"}, {"question": "b"}])
    assert len(cb.traced_runs) == 2
    for run in cb.traced_runs:
        assert run.name == "ChatCompletionRunnable"
        assert [c.run_type for c in run.child_runs] == ["llm"]


def test_streamed_run_is_traced_with_its_final_output():
    with collect_runs() as cb:
        list(step_for(ScriptedChatModel(forward="a b")).stream({"question": "q"}))
    (run,) = cb.traced_runs
    assert run.outputs["output"].data == "a b"
    assert [c.run_type for c in run.child_runs] == ["llm"]


def test_usage_is_counted_once_per_call():
    model = ScriptedChatModel(forward="one two")
    step = step_for(model)
    with track_usage() as usage:
        step.invoke({"question": "q"})
        step.batch([{"question": "a"}, {"question": "b"}])
    forward = usage.by_purpose()["forward"]
    assert forward.calls == 3 == len(model.calls)
    assert forward.output_tokens == 3 * 2  # the fake reports its reply's words
    with track_usage() as usage:
        list(step.stream({"question": "s"}))
    assert usage.by_purpose()["forward"].calls == 1
    assert len(model.calls) == 4


async def test_async_runs_nest_the_same_way():
    model = ScriptedChatModel(forward="ok")
    chain = RunnableLambda(lambda q: {"question": q}) | step_for(model)
    with collect_runs() as cb:
        await chain.ainvoke("q")
        await chain.abatch(["a", "b"])
    assert len(cb.traced_runs) == 3
    for root in cb.traced_runs:
        ours = root.child_runs[-1]
        assert ours.name == "ChatCompletionRunnable"
        assert [c.run_type for c in ours.child_runs] == ["llm"]
