"""Chains written as LangChain's documentation writes them, made trainable as they are:
string ``PromptTemplate`` prompts piped into a chat model, and routing between
sub-chains, both with a routing function (the docs' recommended way) and with a
``RunnableBranch``.

The routing app is adapted from LangChain's how-to guide "How to route between
sub-chains" (python.langchain.com/docs/how_to/routing, MIT licence): its classifier,
its three sub-chains and both of its routers, with a scripted model in place of
Anthropic's.
"""

from __future__ import annotations

import asyncio
import warnings

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnableBranch, RunnableLambda

from afnio_langchain import make_trainable
from afnio_langchain.runnables import UntrainedRouteWarning
from afnio_langchain.testing import ScriptedChatModel

CLASSIFY = """Given the user question below, classify it as either being about `LangChain`, `Anthropic`, or `Other`.

Do not respond with more than one word.

<question>
{question}
</question>

Classification:"""


def test_a_string_prompt_template_is_trained_whole_and_exported_as_one():
    model = ScriptedChatModel(forward="Paris", feedback="Ask for the country too.")
    prompt = PromptTemplate.from_template("Answer in one word. {question}")
    chain = make_trainable(prompt | model | StrOutputParser(), backward_model=model)

    (variable,) = chain.parameters()
    assert variable.data == "Answer in one word. {question}"
    assert variable.role == "prompt (a template: keep {question} as written)"
    answer = chain.invoke({"question": "Capital of France?"})
    assert answer.data == "Paris"
    # A chat model receives a string prompt as one human message: so does the step.
    sent = model.calls[-1].messages
    assert [(m.type, m.content) for m in sent] == [("human", "Answer in one word. Capital of France?")]

    answer.backward("Too terse.")
    assert [g.data for g in variable.grad] == ["Ask for the country too."]

    variable.data = "Answer with the city and its country {as JSON}. {question}"
    exported = chain.to_langchain()
    assert isinstance(exported.first, PromptTemplate)
    assert exported.first.template == "Answer with the city and its country {{as JSON}}. {question}"
    assert exported.invoke({"question": "Capital of Italy?"}) == "Paris"
    assert model.calls[-1].messages[0].content == (
        "Answer with the city and its country {as JSON}. Capital of Italy?"
    )
    assert prompt.template == "Answer in one word. {question}"  # the original is unchanged


def test_a_string_prompt_keeps_its_partial_variables_and_refuses_other_roles():
    model = ScriptedChatModel(forward="ok")
    prompt = PromptTemplate.from_template("Reply in {language}: {question}").partial(language="Italian")
    chain = make_trainable(prompt | model)
    chain.invoke({"question": "hello?"})
    assert model.calls[-1].messages[0].content == "Reply in Italian: hello?"
    assert chain.to_langchain().invoke({"question": "hi?"}).content == "ok"
    assert model.calls[-1].messages[0].content == "Reply in Italian: hi?"
    with pytest.raises(ValueError, match="none has a message of roles"):
        make_trainable(prompt | model, roles=("assistant",))


def _routing_app():
    """The guide's classifier and sub-chains; the classifier answers from the question."""

    def classify(request) -> str:
        text = str(request).split("<question>")[1]
        return "Anthropic" if "Anthropic" in text else "LangChain" if "LangChain" in text else "Other"

    classifier_model = ScriptedChatModel(forward=classify)
    model = ScriptedChatModel(
        forward=lambda request: "answer to: " + str(request).rsplit("Question: ", 1)[-1],
        feedback="Be more specific.",
    )
    chain = PromptTemplate.from_template(CLASSIFY) | classifier_model | StrOutputParser()
    langchain_chain = PromptTemplate.from_template(
        "You are an expert in langchain. Always answer questions starting with \"As Harrison "
        "Chase told me\". Respond to the following question:\n\nQuestion: {question}\nAnswer:"
    ) | model
    anthropic_chain = PromptTemplate.from_template(
        "You are an expert in anthropic. Always answer questions starting with \"As Dario "
        "Amodei told me\". Respond to the following question:\n\nQuestion: {question}\nAnswer:"
    ) | model
    general_chain = PromptTemplate.from_template(
        "Respond to the following question:\n\nQuestion: {question}\nAnswer:"
    ) | model
    return chain, (anthropic_chain, langchain_chain, general_chain), model


def _with_route_function():
    chain, (anthropic_chain, langchain_chain, general_chain), model = _routing_app()

    def route(info):
        if "anthropic" in info["topic"].lower():
            return anthropic_chain
        elif "langchain" in info["topic"].lower():
            return langchain_chain
        else:
            return general_chain

    return {"topic": chain, "question": lambda x: x["question"]} | RunnableLambda(route), model


def _with_branch():
    chain, (anthropic_chain, langchain_chain, general_chain), model = _routing_app()
    branch = RunnableBranch(
        (lambda x: "anthropic" in x["topic"].lower(), anthropic_chain),
        (lambda x: "langchain" in x["topic"].lower(), langchain_chain),
        general_chain,
    )
    return {"topic": chain, "question": lambda x: x["question"]} | branch, model


@pytest.mark.parametrize("build", [_with_route_function, _with_branch], ids=["function", "branch"])
def test_routed_sub_chains_train_the_prompt_that_answered(build):
    original, model = build()
    chain = make_trainable(original, backward_model=model)
    prompts = chain.parameters()
    assert len(prompts) == 4  # the classifier and the three sub-chains
    classifier, anthropic, langchain, general = prompts

    answer = chain.invoke({"question": "how do I use Anthropic?"})
    assert answer.data == "answer to: how do I use Anthropic?\nAnswer:"
    assert "As Dario Amodei told me" in str(model.calls[-1].messages[0].content)
    answer.backward("Name the API.")
    assert [g.data for g in anthropic.grad] == ["Be more specific."]
    assert not langchain.grad and not general.grad
    assert not classifier.grad  # the route taken is a choice, not text the answer used

    other = asyncio.run(chain.ainvoke({"question": "what is LangChain?"}))
    assert "As Harrison Chase told me" in str(model.calls[-1].messages[0].content)
    assert other.data.startswith("answer to: what is LangChain?")


@pytest.mark.parametrize("build", [_with_route_function, _with_branch], ids=["function", "branch"])
def test_routed_sub_chains_export_with_their_learned_prompts(build):
    original, model = build()
    chain = make_trainable(original)
    _, anthropic, _, _ = chain.parameters()
    anthropic.data = "Answer as an Anthropic expert, in one line: {question}"

    served = chain.to_langchain()
    reply = served.invoke({"question": "how do I use Anthropic?"})
    assert reply.content.startswith("answer to: ")
    assert model.calls[-1].messages[0].content == (
        "Answer as an Anthropic expert, in one line: how do I use Anthropic?"
    )
    # The original chain still routes to the original prompt.
    original.invoke({"question": "how do I use Anthropic?"})
    assert "As Dario Amodei told me" in str(model.calls[-1].messages[0].content)


def test_a_routing_function_that_returns_text_is_left_as_it_is():
    model = ScriptedChatModel(forward="42")
    maths = PromptTemplate.from_template("Solve: {q}") | model

    def route(info):
        return maths if info["q"].endswith("?") else "no question"

    chain = make_trainable(RunnableLambda(route))
    assert chain.invoke({"q": "6 x 7?"}).data == "42"
    assert chain.invoke({"q": "hello"}) == "no question"
    assert chain.to_langchain().invoke({"q": "hello"}) == "no question"


@pytest.mark.parametrize("run", ["sync", "async"])
def test_a_routing_function_that_invokes_its_chain_says_that_chain_does_not_train(run):
    chain, (anthropic_chain, _, general_chain), model = _routing_app()

    def route(info):  # invokes the chain instead of returning it
        picked = anthropic_chain if "anthropic" in info["topic"].lower() else general_chain
        return picked.invoke({"question": info["question"]})

    trainable = make_trainable(
        {"topic": chain, "question": lambda x: x["question"]} | RunnableLambda(route)
    )
    with pytest.warns(UntrainedRouteWarning, match=r"'route' ran a chat model itself.*Return the chain"):
        if run == "sync":
            trainable.invoke({"question": "how do I use Anthropic?"})
        else:
            asyncio.run(trainable.ainvoke({"question": "how do I use Anthropic?"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per function, not once per call
        trainable.invoke({"question": "how do I use Anthropic?"})
        asyncio.run(trainable.ainvoke({"question": "what is LangChain?"}))


@pytest.mark.parametrize("run", ["sync", "async"])
def test_a_routing_function_that_returns_its_chain_gives_no_warning(run):
    original, _ = _with_route_function()
    chain = make_trainable(original)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedRouteWarning)
        if run == "sync":
            chain.invoke({"question": "how do I use Anthropic?"})
        else:
            asyncio.run(chain.ainvoke({"question": "how do I use Anthropic?"}))
        chain.to_langchain().invoke({"question": "what is LangChain?"})
