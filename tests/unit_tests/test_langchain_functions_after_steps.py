"""make_trainable: the functions, parsers and generators after an LLM step get what they
get in the original chain, with chains written as LangChain's guides write them (LCEL:
``prompt | model | RunnableLambda(f)``; streaming: a generator function after the
parser; fallbacks and retries: ``(prompt | model).with_fallbacks([...])``). Each chain
is compared with the original and with ``to_langchain()``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableGenerator, RunnableLambda

from afnio_langchain import Variable, make_trainable, set_backward_model
from afnio_langchain.testing import ScriptedChatModel

QUESTION = {"question": "Capital of France?"}


@pytest.fixture(autouse=True)
def _backward_model():
    set_backward_model(ScriptedChatModel(feedback="Name the country too."))
    yield
    set_backward_model(None)


def prompt() -> ChatPromptTemplate:
    return ChatPromptTemplate.from_messages(
        [("system", "You are a helpful assistant."), ("human", "{question}")]
    )


def fake(text: str = "Paris is the capital") -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(content=text)] * 10))


def value(out):
    return out.data if isinstance(out, Variable) else out


def texts(chunks) -> list[str]:
    return [str(c) for c in chunks if not isinstance(c, Variable)]


# ------------------------------------------------- a function right after the chat model


def test_function_right_after_the_chat_model_gets_its_message():
    given = []

    def shout(msg):
        given.append(msg)
        return msg.content.upper()

    def build():
        return prompt() | fake() | RunnableLambda(shout)

    original, chain = build(), make_trainable(build())
    expected = original.invoke(QUESTION)
    out = chain.invoke(QUESTION)
    assert expected == out.data == chain.to_langchain().invoke(QUESTION) == "PARIS IS THE CAPITAL"
    assert [type(m) for m in given] == [AIMessage, AIMessage, AIMessage]
    assert [value(c) for c in chain.stream(QUESTION)] == list(build().stream(QUESTION))

    (system,) = chain.parameters()
    out.backward("Answer in one word.")
    assert system.grad  # the text derived from .content is linked to the step


def test_a_function_returning_the_message_returns_the_step_reply():
    chain = make_trainable(prompt() | fake("Paris") | RunnableLambda(lambda msg: msg))
    out = chain.invoke(QUESTION)
    assert isinstance(out, Variable) and out.data == "Paris"
    out.backward("Name the country too.")
    assert chain.parameters()[0].grad


def test_functions_after_a_parser_still_get_text():
    def build():
        return prompt() | fake("Paris") | StrOutputParser() | RunnableLambda(lambda s: s.upper())

    assert make_trainable(build()).invoke(QUESTION).data == build().invoke(QUESTION) == "PARIS"


# ------------------------------------------------- a parser after a wrapped pair


WRAPPED = {
    "with_retry": lambda pair: pair.with_retry(),
    "with_config": lambda pair: pair.with_config(run_name="joke"),
    "with_fallbacks": lambda pair: pair.with_fallbacks([prompt() | fake("Backup")]),
}


@pytest.mark.parametrize("wrap", WRAPPED.values(), ids=WRAPPED.keys())
def test_parser_after_a_wrapped_pair_runs_on_the_step_reply(wrap):
    def build():
        return wrap(prompt() | fake()) | StrOutputParser()

    original, chain = build(), make_trainable(build())
    out = chain.invoke(QUESTION)
    assert out.data == original.invoke(QUESTION) == chain.to_langchain().invoke(QUESTION)
    assert texts(chain.stream(QUESTION)) == list(build().stream(QUESTION))
    out.backward("Answer in one word.")
    assert chain.parameters()[0].grad


@pytest.mark.parametrize("wrap", WRAPPED.values(), ids=WRAPPED.keys())
def test_functions_after_a_wrapped_pair_get_text_or_the_message(wrap):
    def after_parser():
        return wrap(prompt() | fake("Paris")) | StrOutputParser() | (lambda s: s.upper())

    def after_model():
        return wrap(prompt() | fake("Paris")) | (lambda msg: msg.content.upper())

    for build in (after_parser, after_model):
        chain = make_trainable(build())
        out = chain.invoke(QUESTION)
        assert out.data == build().invoke(QUESTION) == chain.to_langchain().invoke(QUESTION)
        out.backward("Name the country too.")
        assert chain.parameters()[0].grad


# ------------------------------------------------- a generator function after the parser


def split_into_list(input: Iterator[str]) -> Iterator[list[str]]:
    # LangChain's streaming guide, "Generator Functions".
    buffer = ""
    for chunk in input:
        buffer += chunk
        while "," in buffer:
            comma_index = buffer.index(",")
            yield [buffer[:comma_index].strip()]
            buffer = buffer[comma_index + 1 :]
    yield [buffer.strip()]


def test_generator_after_the_parser_gets_str_chunks_and_streams_like_the_original():
    def build():
        return prompt() | fake("lion, tiger, wolf, gorilla, panda") | StrOutputParser() | split_into_list

    chain = make_trainable(build())
    expected = ["lion", "tiger", "wolf", "gorilla", "panda"]
    assert chain.invoke(QUESTION) == build().invoke(QUESTION) == expected
    assert chain.to_langchain().invoke(QUESTION) == expected
    streamed = list(chain.stream(QUESTION))
    assert streamed == list(build().stream(QUESTION)) == [[w] for w in expected]
    assert list(chain.to_langchain().stream(QUESTION)) == streamed


def test_generator_right_after_the_chat_model_gets_message_chunks():
    def contents(chunks: Iterator[AIMessageChunk]) -> Iterator[str]:
        for chunk in chunks:
            yield chunk.content.upper()

    def build():
        return prompt() | fake("Paris is nice") | RunnableGenerator(contents)

    chain = make_trainable(build())
    assert chain.invoke(QUESTION) == build().invoke(QUESTION) == "PARIS IS NICE"
    assert "".join(chain.stream(QUESTION)) == "".join(build().stream(QUESTION))
