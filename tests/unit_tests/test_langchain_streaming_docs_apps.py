"""Streaming apps as LangChain's guides write them, trainable: the streaming guide's
``prompt | model | parser`` with the JSON-parser guide's ``JsonOutputParser`` (partial
dicts as the reply streams), and the routing guide's custom function
``{"topic": classifier, "question": ...} | RunnableLambda(route)`` (the returned chain's
chunks as they arrive). Each trainable chain streams what the original streams before
its last chunk, ends with what ``invoke`` returns, and still trains after streaming.
"""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import JsonOutputParser, StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

from afnio_langchain import Variable, make_trainable
from afnio_langchain.testing import ScriptedChatModel

JSON_REPLY = '{"answer": "Paris", "country": "France", "population": "2 million"}'
ROUTE_REPLY = "the answer is forty two"


def _data(value):
    if isinstance(value, dict):
        return {k: _data(v) for k, v in value.items()}
    return value.data if isinstance(value, Variable) else value


def _json_chain():
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer in JSON with keys answer, country, population."), ("human", "{question}")]
    )
    model = GenericFakeChatModel(messages=iter([AIMessage(content=JSON_REPLY)] * 3))
    return prompt | model | JsonOutputParser()


def _routing_chain():
    classify = (
        ChatPromptTemplate.from_messages([("system", "Classify as math or other."), ("human", "{question}")])
        | FakeListChatModel(responses=["math"])
        | StrOutputParser()
    )
    math_chain = (
        ChatPromptTemplate.from_messages([("system", "You are a math expert."), ("human", "{question}")])
        | GenericFakeChatModel(messages=iter([AIMessage(content=ROUTE_REPLY)] * 3))
        | StrOutputParser()
    )
    general = (
        ChatPromptTemplate.from_messages([("system", "Answer."), ("human", "{question}")])
        | GenericFakeChatModel(messages=iter([AIMessage(content="no idea")] * 3))
        | StrOutputParser()
    )

    def route(info):
        return math_chain if "math" in info["topic"].lower() else general

    return {"topic": classify, "question": lambda x: x["question"]} | RunnableLambda(route)


def _trainable(chain):
    return make_trainable(chain, backward_model=ScriptedChatModel(feedback="Be more precise."))


def _collect(chain, inputs, mode):
    if mode == "stream":
        return list(chain.stream(inputs))

    async def gather():
        return [chunk async for chunk in chain.astream(inputs)]

    return asyncio.run(gather())


def _graded(trainable, prompt_text):
    return [p for p in trainable.parameters() if prompt_text in p.data and p.grad]


@pytest.mark.parametrize("mode", ["stream", "astream"])
def test_json_parser_chain_streams_partial_dicts_like_the_original(mode):
    question = {"question": "Capital of France?"}
    original = _collect(_json_chain(), question, mode)
    trainable = _trainable(_json_chain())
    chunks = _collect(trainable, question, mode)

    assert len(original) > 2  # the original streams partial dicts
    assert chunks[:-1] == original  # the same partial dicts, plain dicts of str
    assert all(not isinstance(v, Variable) for c in chunks[:-1] for v in c.values())
    final = chunks[-1]
    assert all(isinstance(v, Variable) for v in final.values())
    assert _data(final) == original[-1] == _data(trainable.invoke(question))

    final["answer"].backward("Also name the river.")
    assert _graded(trainable, "Answer in JSON")


def test_json_parser_chain_has_parser_stream_events():
    async def events(chain):
        return [
            e async for e in chain.astream_events({"question": "Capital?"}, version="v2")
            if e["event"] == "on_parser_stream"
        ]

    original = asyncio.run(events(_json_chain()))
    trainable = asyncio.run(events(make_trainable(_json_chain())))
    assert len(original) > 2
    assert [e["data"]["chunk"] for e in trainable[:-1]] == [e["data"]["chunk"] for e in original]


@pytest.mark.parametrize("mode", ["stream", "astream"])
def test_routing_function_streams_the_returned_chain(mode):
    question = {"question": "What is 2 * 21?"}
    original = _collect(_routing_chain(), question, mode)
    trainable = _trainable(_routing_chain())
    chunks = _collect(trainable, question, mode)

    assert len(original) > 2  # the original streams the math chain's text chunks
    assert chunks[:-1] == original  # the same text chunks as they arrive, then the Variable
    final = chunks[-1]
    assert isinstance(final, Variable)
    assert final.data == "".join(original) == trainable.invoke(question).data

    final.backward("Show the working.")
    assert _graded(trainable, "You are a math expert.")
