"""The seed's two examples, as written, against real clients talking HTTP to the
loopback OpenAI-compatible server: the ``openai`` clients (model named with
``model=``), LangChain's ``ChatOpenAI`` and a ``dspy.LM``."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from afnio_langchain import Variable, get_backward_model, set_backward_model
from afnio_langchain.autodiff import ChatCompletion
from afnio_langchain.models import as_model_client
from afnio_langchain.testing import OpenAICompatServer, default_responder, request_text

SEED_GRADIENT = "The system instruction should enforce the use of capital letters only."


def translator(body: dict[str, Any]) -> str:
    """Forward calls translate 'Hello'; backward calls get the seed's gradient."""
    reply = default_responder(body)
    if reply.startswith("{"):
        keys = json.loads(reply)
        return json.dumps({key: SEED_GRADIENT for key in keys})
    text = request_text(body)
    return "Ciao" if "Italian" in text else "Hola" if "Spanish" in text else "?"


@pytest.fixture
def server():
    with OpenAICompatServer(responder=translator) as running:
        yield running


def seed_messages() -> tuple[Variable, list[dict[str, Any]]]:
    system = Variable("You are a helpful assistant.", role="system instruction", requires_grad=True)
    user = Variable("Translate 'Hello' to {language}.", role="user query")
    return system, [
        {"role": "system", "content": [system]},
        {"role": "user", "content": [user]},
    ]


def run_scalar(model_client: Any, **model_args: Any) -> Variable:
    system, messages = seed_messages()
    inputs = {"language": Variable("Italian", role="language")}
    response = ChatCompletion.apply(
        model_client, messages, inputs=inputs, temperature=0.7, **model_args
    )
    assert response.data == "Ciao"
    feedback = Variable("Use only capital letters.", role="feedback")
    response.backward(feedback)
    assert system.grad[0].data == SEED_GRADIENT
    return system


def run_batched(model_client: Any, **model_args: Any) -> Variable:
    system, messages = seed_messages()
    inputs = {
        "language": [Variable("Italian", role="language"), Variable("Spanish", role="language")]
    }
    response = ChatCompletion.apply(
        model_client, messages, inputs=inputs, temperature=0.7, **model_args
    )
    assert response.data == ["Ciao", "Hola"]
    response.backward("Use only capital letters.")
    assert [g.data for g in system.grad] == [SEED_GRADIENT, SEED_GRADIENT]
    return system


@pytest.mark.parametrize("client_class", [openai.OpenAI, openai.AsyncOpenAI])
def test_seed_examples_with_an_openai_client_named_by_model(server, client_class):
    client = client_class(base_url=server.base_url, api_key="sk-test")
    set_backward_model(client, model_name="fake-model")
    run_scalar(client, model="fake-model")
    run_batched(client, model="fake-model")
    forward = [b for b in server.requests if "response_format" not in b]
    assert {b["model"] for b in server.requests} == {"fake-model"}
    assert all(b.get("temperature") == 0.7 for b in forward)
    assert len(server.requests) == 6  # 1 + 2 forward, 1 + 2 backward (one per item)


def test_openai_client_as_backward_model_takes_the_forward_model_name(server):
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test")
    system, messages = seed_messages()
    response = ChatCompletion.apply(
        client, messages, inputs={"language": "Italian"}, model="fake-model", backward_model=client
    )
    response.backward("Use only capital letters.")
    assert system.grad[0].data == SEED_GRADIENT
    assert get_backward_model() is None


def test_openai_client_without_model_name_is_a_clear_type_error(server):
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
    _, messages = seed_messages()
    with pytest.raises(TypeError, match="model="):
        ChatCompletion.apply(client, messages, inputs={"language": "Italian"})
    assert server.requests == []


def test_seed_examples_with_chat_openai(server):
    chat_openai = pytest.importorskip("langchain_openai").ChatOpenAI
    model = chat_openai(model="fake-model", base_url=server.base_url, api_key="sk-test")
    set_backward_model(model)
    run_scalar(model)
    run_batched(model)
    assert len(server.requests) == 6


def test_seed_examples_with_a_dspy_lm(server, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    dspy = pytest.importorskip("dspy")
    lm = dspy.LM(
        "openai/fake-model", api_base=server.base_url, api_key="sk-test", cache=False, num_retries=0
    )
    set_backward_model(lm)
    run_scalar(lm)
    run_batched(lm)
    assert as_model_client(lm).model_name.endswith("fake-model")
    assert len(server.requests) == 6
