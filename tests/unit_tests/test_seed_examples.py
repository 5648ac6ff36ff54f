"""The examples of the seed's ``ChatCompletion`` reference doc, run as written.

The seed shows ``ChatCompletion.apply(model_client, messages, inputs=inputs,
temperature=0.7)`` with scalar and batched inputs, ``response.backward(feedback)`` and
``system.grad[0].data``. ``model_client`` here is a ``ScriptedChatModel`` (or a plain
LangChain chat model for forward, with a ScriptedChatModel as backward model).
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel, FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from afnio_langchain import Variable, set_backward_model
from afnio_langchain.autodiff import ChatCompletion
from afnio_langchain.testing import ScriptedChatModel

SEED_GRADIENT = "The system instruction should enforce the use of capital letters only."


def translate(text: str) -> str:
    if "Italian" in text:
        return "Ciao"
    if "Spanish" in text:
        return "Hola"
    return "?"


class TranslatorChatModel(BaseChatModel):
    """A plain LangChain chat model (no afnio protocol): answers by language asked."""

    @property
    def _llm_type(self) -> str:
        return "test-translator"

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kw: Any):
        text = "\n".join(str(m.content) for m in messages)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=translate(text)))])


def seed_messages():
    system = Variable(
        "You are a helpful assistant.",
        role="system instruction",
        requires_grad=True,
    )
    user = Variable("Translate 'Hello' to {language}.", role="user query")
    messages = [
        {"role": "system", "content": [system]},
        {"role": "user", "content": [user]},
    ]
    return system, messages


def test_scripted_model_accepts_a_plain_function():
    """DESIGN: each ScriptedChatModel script may be "a callable taking the request's text"."""
    model = ScriptedChatModel(forward=translate)
    assert model.invoke("Translate to Italian").content == "Ciao"


def test_scalar_example_as_written():
    model_client = ScriptedChatModel(forward=translate, feedback=SEED_GRADIENT)
    set_backward_model(model_client)

    system, messages = seed_messages()
    inputs = {"language": Variable("Italian", role="language")}
    response = ChatCompletion.apply(
        model_client,
        messages,
        inputs=inputs,
        temperature=0.7,
    )
    assert response.data == "Ciao"
    assert response.grad_fn.name() == "ChatCompletionBackward0"

    forward_calls = model_client.calls_of("forward")
    assert len(forward_calls) == 1
    assert forward_calls[0].kwargs.get("temperature") == 0.7
    assert "Translate 'Hello' to Italian." in forward_calls[0].text
    assert "{language}" not in forward_calls[0].text

    feedback = Variable("Use only capital letters.", role="feedback")
    response.backward(feedback)
    assert system.grad[0].data == SEED_GRADIENT
    assert len(system.grad) == 1
    assert system.grad[0].role == "feedback to system instruction"

    backward_calls = model_client.calls_of("backward")
    assert len(backward_calls) == 1
    # the backward request shows the conversation, the response and the feedback
    assert "Use only capital letters." in backward_calls[0].text
    assert "Ciao" in backward_calls[0].text
    assert "You are a helpful assistant." in backward_calls[0].text


def test_batched_example_as_written():
    model_client = ScriptedChatModel(forward=translate, feedback=SEED_GRADIENT)
    set_backward_model(model_client)

    system, messages = seed_messages()
    inputs = {
        "language": [
            Variable("Italian", role="language"),
            Variable("Spanish", role="language"),
        ]
    }
    response = ChatCompletion.apply(
        model_client,
        messages,
        inputs=inputs,
        temperature=0.7,
    )
    assert response.data == ["Ciao", "Hola"]
    forward_calls = model_client.calls_of("forward")
    assert len(forward_calls) == 2
    assert all(c.kwargs.get("temperature") == 0.7 for c in forward_calls)

    feedback = Variable("Use only capital letters.", role="feedback")
    response.backward(feedback)

    backward_calls = model_client.calls_of("backward")
    assert len(backward_calls) == 2  # one per output item
    texts = sorted(c.text for c in backward_calls)
    assert any("Ciao" in t and "Italian" in t for t in texts)
    assert any("Hola" in t and "Spanish" in t for t in texts)
    # the shared system prompt gets one gradient per item
    assert [g.data for g in system.grad] == [SEED_GRADIENT, SEED_GRADIENT]
    assert all(g.role == "feedback to system instruction" for g in system.grad)


def test_batched_order_follows_items_even_with_uneven_latency():
    """Replies come back in item order even when later items answer first."""
    import asyncio

    class SlowFirst(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "slow-first"

        def _generate(self, messages, stop=None, run_manager=None, **kw):  # pragma: no cover
            raise NotImplementedError

        async def _agenerate(self, messages, stop=None, run_manager=None, **kw):
            text = "\n".join(str(m.content) for m in messages)
            await asyncio.sleep(0.15 if "Italian" in text else 0.0)
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content=translate(text)))])

    _, messages = seed_messages()
    response = ChatCompletion.apply(
        SlowFirst(), messages, inputs={"language": ["Italian", "Spanish"]}
    )
    assert response.data == ["Ciao", "Hola"]


def test_scalar_example_with_plain_langchain_forward_model():
    backward = ScriptedChatModel(feedback=SEED_GRADIENT)
    set_backward_model(backward)
    model_client = FakeListChatModel(responses=["Ciao"])

    system, messages = seed_messages()
    inputs = {"language": Variable("Italian", role="language")}
    response = ChatCompletion.apply(model_client, messages, inputs=inputs, temperature=0.7)
    assert response.data == "Ciao"

    response.backward(Variable("Use only capital letters.", role="feedback"))
    assert system.grad[0].data == SEED_GRADIENT
    assert system.grad[0].role == "feedback to system instruction"
    assert [c.kind for c in backward.calls] == ["backward"]


def test_batched_example_with_plain_langchain_forward_model():
    backward = ScriptedChatModel(feedback=SEED_GRADIENT)
    set_backward_model(backward)
    model_client = TranslatorChatModel()

    system, messages = seed_messages()
    inputs = {
        "language": [
            Variable("Italian", role="language"),
            Variable("Spanish", role="language"),
        ]
    }
    response = ChatCompletion.apply(model_client, messages, inputs=inputs, temperature=0.7)
    assert response.data == ["Ciao", "Hola"]

    response.backward(Variable("Use only capital letters.", role="feedback"))
    assert [c.kind for c in backward.calls] == ["backward", "backward"]
    assert [g.data for g in system.grad] == [SEED_GRADIENT, SEED_GRADIENT]


def test_response_is_a_non_leaf_with_the_output_role():
    model_client = ScriptedChatModel(forward="Ciao")
    system, messages = seed_messages()
    response = ChatCompletion.apply(
        model_client, messages, inputs={"language": Variable("Italian", role="language")}
    )
    assert response.requires_grad
    assert not response.is_leaf
    assert system.is_leaf
    # only the system prompt needs grad: one AccumulateGrad edge, None for the others
    edges = response.grad_fn.next_functions
    assert edges[0][0].name() == "AccumulateGrad"
    assert edges[0][0].variable is system
    assert all(node is None for node, _ in edges[1:])
