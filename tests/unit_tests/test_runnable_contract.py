"""LangChain's Runnable contract, held by the differentiable steps and trainable chains.

Each case runs the same chain with a plain LangChain chat model and with the trainable
step (or after ``make_trainable``), and expects what LangChain's own tests expect of
the plain one (langchain-core ``tests/unit_tests/runnables/test_runnable.py``): a
stream adds up (``+``, ``AddableDict``) to what ``invoke`` returns, every step of a
streamed chain reads its whole input, a parallel's output schema is a JSON schema,
closing a stream early stops the model call, and a chain shows its configurable
fields and its graph. Found by an audit that wrote these chains from LangChain's docs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import (
    ConfigurableField,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
)

from afnio_langchain import ChatCompletionRunnable, Variable, make_trainable, set_backward_model
from afnio_langchain.testing import ScriptedChatModel


@pytest.fixture(autouse=True)
def _coach() -> None:
    set_backward_model(ScriptedChatModel(feedback="Be more precise."))


def _prompt(human: str = "{question}") -> ChatPromptTemplate:
    return ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", human)])


def _chain(reply: Any = "plain answer") -> Any:
    return _prompt() | ScriptedChatModel(forward=reply) | StrOutputParser()


def _step(reply: Any = "Paris is nice") -> ChatCompletionRunnable:
    system = Variable("Be brief.", role="system prompt", requires_grad=True)
    return ChatCompletionRunnable(
        model=ScriptedChatModel(forward=reply), messages=[("system", system), ("user", "{question}")]
    )


def _text(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _text(v) for k, v in value.items()}
    return getattr(value, "data", value)


def _last_of_stream(runnable: Any, value: Any) -> Any:
    return list(runnable.stream(value))[-1]


def _last_of_astream(runnable: Any, value: Any) -> Any:
    async def run() -> Any:
        return [chunk async for chunk in runnable.astream(value)][-1]

    return asyncio.run(run())


def _added_up(runnable: Any, value: Any) -> Any:
    """The stream added up as LangChain adds up chunks (``Runnable.transform``)."""
    whole = None
    for chunk in runnable.stream(value):
        whole = chunk if whole is None else whole + chunk
    return whole


_COLLECT = RunnableLambda(lambda d: {k: str(_text(v)) for k, v in d.items()})

_PARALLELS = {
    "parallel of a step and a chain": lambda: RunnableParallel(a=_step(), b=_chain()),
    "parallel of a step and a function": lambda: RunnableParallel(
        a=_step(), q=lambda d: d["question"]
    ),
    "assign of a step": lambda: RunnablePassthrough.assign(answer=_step()),
    "make_trainable of a parallel": lambda: make_trainable(RunnableParallel(a=_chain(), b=_chain())),
    "make_trainable of an assign": lambda: make_trainable(RunnablePassthrough.assign(answer=_chain())),
}


@pytest.mark.parametrize("build", _PARALLELS.values(), ids=_PARALLELS.keys())
@pytest.mark.parametrize("read", [_last_of_stream, _last_of_astream], ids=["stream", "astream"])
def test_a_parallel_streams_into_the_next_step_what_invoke_returns(build: Any, read: Any) -> None:
    # A step streams text chunks, then its Variable: the next step must get every key,
    # whole (it used to get the last chunk alone: keys lost, text cut).
    expected = (build() | _COLLECT).invoke({"question": "q"})
    assert read(build() | _COLLECT, {"question": "q"}) == expected
    assert sorted(expected) != [] and all(expected.values())


def test_a_streamed_parallel_adds_up_to_the_variables_of_its_steps() -> None:
    chain = make_trainable(RunnablePassthrough.assign(answer=_chain("Lyon")))
    whole = _added_up(chain, {"question": "Capital of France?"})
    assert whole["question"] == "Capital of France?"
    assert isinstance(whole["answer"], Variable) and whole["answer"].data == "Lyon"
    whole["answer"].backward("The capital is Paris.")  # the stream's result is in the graph
    assert [g.data for g in chain.parameters()[0].grad] == ["Be more precise."]


def test_a_step_stream_adds_up_to_its_variable_and_its_chunks_are_text() -> None:
    chunks = list(_step("Paris is nice").stream({"question": "q"}))
    assert all(isinstance(c, str) for c in chunks[:-1]) and len(chunks) > 2
    assert "".join(chunks[:-1]) == "Paris is nice"
    whole = _added_up(_step("Paris is nice"), {"question": "q"})
    assert isinstance(whole, Variable) and whole.data == "Paris is nice"
    assert whole.grad_fn is not None


@pytest.mark.parametrize("mode", ["invoke", "stream", "astream"])
def test_a_step_fed_by_a_streamed_dict_reads_each_key_whole(mode: str) -> None:
    seen: list[str] = []

    def echo(request: str) -> str:
        seen.append(request)
        return "ok"

    draft = RunnablePassthrough.assign(draft=_chain("one two three four"))
    final = _prompt("DRAFT=<{draft}> Q=<{question}>")
    for chain in (
        draft | ChatCompletionRunnable(
            model=ScriptedChatModel(forward=echo),
            messages=[("system", "Be brief."), ("user", "DRAFT=<{draft}> Q=<{question}>")],
        ),
        make_trainable(draft | final | ScriptedChatModel(forward=echo) | StrOutputParser()),
    ):
        seen.clear()
        if mode == "invoke":
            chain.invoke({"question": "Q1"})
        elif mode == "stream":
            list(chain.stream({"question": "Q1"}))
        else:
            _last_of_astream(chain, {"question": "Q1"})
        assert [s.endswith("DRAFT=<one two three four> Q=<Q1>") for s in seen] == [True], seen


def test_output_schemas_of_a_parallel_and_an_assign_of_steps_are_json_schemas() -> None:
    text = {"type": "string", "description": "text held in a Variable of the graph"}
    parallel = RunnableParallel(a=_step())
    assert parallel.get_output_jsonschema()["properties"]["a"] == {"title": "A", **text}
    assigned = make_trainable(RunnablePassthrough.assign(a=_chain()))
    assert assigned.get_output_jsonschema()["properties"]["a"] == {"title": "A", **text}
    assert RunnablePassthrough.assign(a=_step()).get_output_jsonschema()["required"] == [
        "question", "a"
    ]


class _Slow(GenericFakeChatModel):
    """LangChain's fake chat model, one token every 20 ms."""

    def _stream(self, *args: Any, **kwargs: Any) -> Any:
        for chunk in super()._stream(*args, **kwargs):
            time.sleep(0.02)
            yield chunk

    async def _astream(self, *args: Any, **kwargs: Any) -> Any:
        async for chunk in super()._astream(*args, **kwargs):
            await asyncio.sleep(0.02)
            yield chunk


class _Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens = 0
        self.errors = 0

    def on_llm_new_token(self, *args: Any, **kwargs: Any) -> None:
        self.tokens += 1

    def on_llm_error(self, *args: Any, **kwargs: Any) -> None:
        self.errors += 1


@pytest.mark.parametrize("kind", ["plain", "step"])
def test_closing_a_stream_early_stops_the_model_call(kind: str) -> None:
    reply = AIMessage(content=" ".join(f"w{i}" for i in range(60)))
    model = _Slow(messages=iter([reply]))
    system = Variable("Be brief.", role="system prompt", requires_grad=True)
    runnable = (
        _prompt() | model
        if kind == "plain"
        else ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{question}")])
    )
    handler = _Tokens()
    stream = runnable.stream({"question": "q"}, {"callbacks": [handler]})
    for index, _chunk in enumerate(stream):
        if index == 2:
            break
    stream.close()
    at_close = handler.tokens
    time.sleep(0.3)  # 15 more tokens' time, had the call gone on
    assert handler.tokens - at_close <= 1
    assert handler.errors == 1  # the model's run ends as cancelled, as LangChain's does


def test_a_trainable_chain_shows_its_configurable_fields_and_its_graph() -> None:
    model = ScriptedChatModel(forward="default").configurable_alternatives(
        ConfigurableField(id="llm"), other=ScriptedChatModel(forward="other")
    )
    original = _prompt() | model | StrOutputParser()
    chain = make_trainable(original)
    assert [s.id for s in chain.config_specs] == [s.id for s in original.config_specs] == ["llm"]
    assert "configurable" in chain.get_config_jsonschema()["properties"]
    assert chain.invoke({"question": "q"}, {"configurable": {"llm": "other"}}).data == "other"
    nodes = [n.name for n in chain.get_graph().nodes.values()]
    assert "ChatCompletionRunnable" in nodes and len(nodes) > 3, nodes
    assert chain.InputType == original.InputType


@pytest.mark.parametrize("read", [_last_of_stream, _last_of_astream], ids=["stream", "astream"])
def test_a_json_parser_streaming_running_totals_feeds_a_step_the_last_total(read: Any) -> None:
    # JsonOutputParser streams plain dicts, each the whole object so far: LangChain's
    # next step keeps the last one (plain dicts do not add up), so must ours.
    from langchain_core.output_parsers import JsonOutputParser

    replies = iter([AIMessage('{"city": "Paris France"}')] * 2)
    upstream = GenericFakeChatModel(messages=replies) | JsonOutputParser()
    system = Variable("Be brief.", role="system prompt", requires_grad=True)
    chain = upstream | ChatCompletionRunnable(
        model=ScriptedChatModel(forward=lambda request: request),
        messages=[("system", system), ("user", "City: {city}")],
    )
    assert chain.invoke("hi").data.endswith("City: Paris France")
    assert read(chain, "hi").data.endswith("City: Paris France")


def test_a_variable_in_a_pydantic_model_or_tool_is_text_in_json() -> None:
    from langchain_core.tools import tool
    from pydantic import BaseModel

    class Holder(BaseModel):
        text: Variable

    held = Holder(text=Variable("Paris", role="answer"))
    assert held.model_dump_json() == '{"text":"Paris"}'
    assert held.model_dump()["text"] is held.text
    assert Holder(text="Lyon").text.data == "Lyon"  # the schema says string: a string is taken
    with pytest.raises(ValueError):
        Holder(text=3)

    @tool
    def shout(text: Variable) -> str:
        """Shout the text."""
        return text.data.upper()

    assert shout.args["text"]["type"] == "string"
    assert shout.invoke({"text": "hi"}) == "HI"
