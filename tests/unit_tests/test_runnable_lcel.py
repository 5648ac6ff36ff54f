"""Gradient flow through LCEL compositions (sequences, parallels, assigns, dict coercion,
itemgetter, lambdas) and the differentiable glue (TextFunction, parsers on Variables)."""

from __future__ import annotations

import asyncio
from operator import itemgetter

import pytest
from langchain_core.output_parsers import (
    CommaSeparatedListOutputParser,
    JsonOutputParser,
    StrOutputParser,
)
from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough

from afnio_langchain import ChatCompletionRunnable, Variable, parameters, set_backward_model
from afnio_langchain.runnables import (
    TextFunction,
    VariableJsonOutputParser,
    VariableStrOutputParser,
    as_differentiable,
)
from afnio_langchain.testing import ScriptedChatModel


def prompt(name: str) -> Variable:
    return Variable(f"You are the {name}.", role=f"{name} system prompt", requires_grad=True)


def llm(model, system: Variable, template: str) -> ChatCompletionRunnable:
    return ChatCompletionRunnable(model=model, messages=[("system", system), ("user", template)])


def feedback_naming_the_prompt(request: str) -> str:
    """Feedback that says which system prompt it was written for (read from the request)."""
    for name in ("drafter", "critic", "finalizer", "summarizer", "unused", "left", "right"):
        if f"You are the {name}." in request:
            return f"feedback for {name}"
    return "feedback"


def three_step_pipeline(model, extra: dict | None = None):
    drafter, critic, finalizer = prompt("drafter"), prompt("critic"), prompt("finalizer")
    retrieve = RunnableLambda(lambda q: f"Notes about {q}")
    chain = (
        {"question": RunnablePassthrough(), "context": retrieve}
        | RunnablePassthrough.assign(
            draft=llm(model, drafter, "{question}\n{context}"), **(extra or {})
        )
        | RunnablePassthrough.assign(critique=llm(model, critic, "{question}\n{draft}"))
        | RunnablePassthrough.assign(
            answer=llm(model, finalizer, "{question}\n{draft}\n{critique}")
        )
        | itemgetter("answer")
    )
    return chain, (drafter, critic, finalizer)


# --------------------------------------------------------------------------- gradient flow


def test_one_backward_reaches_every_system_prompt_of_a_three_step_pipeline():
    model = ScriptedChatModel(forward="text", feedback=feedback_naming_the_prompt)
    set_backward_model(model)
    chain, (drafter, critic, finalizer) = three_step_pipeline(model)
    answer = chain.invoke("What is the capital of France?")
    assert isinstance(answer, Variable) and answer.grad_fn is not None
    answer.backward("The answer misses the country.")
    assert [g.data for g in finalizer.grad] == ["feedback for finalizer"]
    assert [g.data for g in critic.grad] == ["feedback for critic"]
    assert drafter.grad and all(g.data == "feedback for drafter" for g in drafter.grad)
    assert parameters(chain) == [drafter, critic, finalizer]


def test_branches_that_did_not_influence_the_output_get_no_gradient():
    model = ScriptedChatModel(forward="text", feedback=feedback_naming_the_prompt)
    set_backward_model(model)
    unused = prompt("unused")
    chain, prompts = three_step_pipeline(model, extra={"side": llm(model, unused, "{question}")})
    chain.invoke("q").backward("bad")
    assert unused.grad == []
    assert all(p.grad for p in prompts)
    assert not any("You are the unused." in c.text for c in model.calls_of("backward"))


def test_parallel_branches_both_get_gradient_when_both_feed_the_output():
    model = ScriptedChatModel(forward="x", feedback=feedback_naming_the_prompt)
    set_backward_model(model)
    left, right, finalizer = prompt("left"), prompt("right"), prompt("finalizer")
    chain = (
        RunnableParallel(a=llm(model, left, "{q}"), b=llm(model, right, "{q}"))
        | llm(model, finalizer, "{a} / {b}")
    )
    chain.invoke({"q": "hi"}).backward("bad")
    assert [g.data for g in left.grad] == ["feedback for left"]
    assert [g.data for g in right.grad] == ["feedback for right"]
    assert [g.data for g in finalizer.grad] == ["feedback for finalizer"]


def test_lambdas_combining_variables_with_plus_keep_the_graph():
    model = ScriptedChatModel(forward="x", feedback=feedback_naming_the_prompt)
    set_backward_model(model)
    left, right = prompt("left"), prompt("right")
    combine = RunnableLambda(lambda d: d["a"] + "\n---\n" + d["b"])
    chain = RunnableParallel(a=llm(model, left, "{q}"), b=llm(model, right, "{q}")) | combine
    out = chain.invoke({"q": "hi"})
    assert out.data == "x\n---\nx"
    out.backward("bad")
    assert left.grad and right.grad


def test_variables_pass_through_parallel_assign_and_passthrough_untouched():
    v = Variable("kept", role="input", requires_grad=True)
    chain = (
        RunnablePassthrough()
        | RunnablePassthrough.assign(copy=itemgetter("x"))
        | RunnableParallel(x=itemgetter("x"), copy=itemgetter("copy"), same=RunnablePassthrough())
    )
    out = chain.invoke({"x": v})
    assert out["x"] is v and out["copy"] is v and out["same"]["x"] is v


async def test_async_pipeline_gets_the_same_gradients():
    model = ScriptedChatModel(forward="text", feedback=feedback_naming_the_prompt)
    set_backward_model(model)
    chain, prompts = three_step_pipeline(model)
    answer = await chain.ainvoke("q")
    await answer.abackward("bad")
    assert all(p.grad for p in prompts)


def test_pipeline_batch_is_concurrent_and_every_output_is_differentiable():
    model = ScriptedChatModel(forward="text", feedback="fb", latency=0.2)
    set_backward_model(model)
    chain, prompts = three_step_pipeline(model)
    outs = chain.batch([f"q{i}" for i in range(8)], config={"max_concurrency": 8})
    assert len(model.calls) == 8 * 3
    assert model.max_concurrent_calls == 8, "the 8 inputs did not run side by side"
    assert all(o.grad_fn is not None for o in outs)
    outs[3].backward("bad")
    assert all(len(p.grad) >= 1 for p in prompts)


async def test_pipeline_abatch_is_concurrent():
    model = ScriptedChatModel(forward="text", latency=0.2)
    chain, _ = three_step_pipeline(model)
    outs = await chain.abatch([f"q{i}" for i in range(8)])
    assert len(outs) == 8 and len(model.calls) == 8 * 3
    assert model.max_concurrent_calls == 8, "the 8 inputs did not run side by side"


# --------------------------------------------------------------------------- glue


def test_text_function_passes_feedback_to_its_input():
    model = ScriptedChatModel(forward="Answer: 42", feedback="fb")
    set_backward_model(model)
    system = prompt("drafter")
    extract = TextFunction(lambda t: t.split(":")[1].strip(), description="extract the answer")
    out = (llm(model, system, "{q}") | extract).invoke({"q": "?"})
    assert out.data == "42" and out.role.endswith("(after extract the answer)")
    out.backward("should be 43")
    assert system.grad[0].data == "fb"
    (backward_call,) = model.calls_of("backward")
    assert "extract the answer" in backward_call.text and "should be 43" in backward_call.text


def test_text_function_on_plain_text_and_errors():
    assert TextFunction(str.upper).invoke("abc").data == "ABC"
    assert TextFunction(str.upper).get_name() == "TextFunction<upper>"
    with pytest.raises(TypeError, match="callable"):
        TextFunction("not callable")
    with pytest.raises(TypeError, match="takes a Variable"):
        TextFunction(str.upper).invoke({"a": 1})
    with pytest.raises(TypeError, match="must return text"):
        TextFunction(lambda t: [t]).invoke("x")


async def test_text_function_async_and_minibatch():
    x = Variable(["a", "b"], role="items", requires_grad=True)
    out = await TextFunction(str.upper).ainvoke(x)
    assert out.data == ["A", "B"]


def test_str_parser_keeps_the_graph_and_json_parser_splits_fields():
    model = ScriptedChatModel(forward='{"answer": "Paris", "why": "capital"}', feedback="fb")
    set_backward_model(model)
    system = prompt("drafter")
    step = llm(model, system, "{q}")
    out = (step | VariableStrOutputParser()).invoke({"q": "?"})
    assert out.grad_fn is not None
    fields = (step | VariableJsonOutputParser()).invoke({"q": "?"})
    assert {k: v.data for k, v in fields.items()} == {"answer": "Paris", "why": "capital"}
    fields["answer"].backward("wrong city")
    assert system.grad[0].data == "fb"
    (call,) = model.calls_of("backward")
    assert 'Field "answer": wrong city' in call.text


def test_as_differentiable_maps_parsers_and_functions():
    assert isinstance(as_differentiable(StrOutputParser()), VariableStrOutputParser)
    assert isinstance(as_differentiable(JsonOutputParser()), VariableJsonOutputParser)
    assert isinstance(as_differentiable(str.strip), TextFunction)
    assert isinstance(as_differentiable(RunnableLambda(str.strip)), TextFunction)
    with pytest.raises(TypeError, match="does not return text"):
        as_differentiable(CommaSeparatedListOutputParser())
    with pytest.raises(TypeError, match="takes a function"):
        as_differentiable(42)


def test_str_parser_streams_text_then_the_variable():
    chunks = list(VariableStrOutputParser().transform(iter(["a ", "b", Variable("a b")])))
    assert chunks[:2] == ["a ", "b"] and chunks[-1].data == "a b"
    plain = list(VariableStrOutputParser().transform(iter(["a ", "b"])))
    assert plain[-1].data == "a b"

    async def agen():
        for c in ["x", Variable("x")]:
            yield c

    async def collect():
        return [c async for c in VariableStrOutputParser().atransform(agen())]

    assert asyncio.run(collect())[-1].data == "x"
