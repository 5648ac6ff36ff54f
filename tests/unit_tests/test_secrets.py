"""Secrets: an API key never appears in a log line, a repr, a trace, a report, a saved
state or an exception message, even when the provider echoes it back in an error.

Each test runs a real pipeline (forward, backward, optimizer step) through the real
clients against the loopback server, collects every artifact it produced, and
searches all of them for the key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from langchain_core.tracers.context import collect_runs
from langchain_openai import ChatOpenAI

from afnio_langchain import Variable, get_usage, track_usage
from afnio_langchain.autodiff import BackwardError, ChatCompletion, MinibatchError
from afnio_langchain.models import (
    LangChainChatModelClient,
    OpenAIClient,
    RetryPolicy,
    as_model_client,
    redact,
)
from afnio_langchain.models._secrets import REDACTED, redact_exception, register_secret
from afnio_langchain.optim import TGD, OptimizerStepError
from afnio_langchain.testing import Fault, OpenAICompatServer

KEY = "sk-proj-SECRETKEY-4f9a1c2e7b3d5a6f8e0c"
ENV_KEY = "sk-env-ENVSECRET-1b2c3d4e5f6a7b8c9d0e"
FAST = RetryPolicy(max_attempts=3, initial_wait=0.01, max_wait=0.1)


def echoing_401(key: str) -> Fault:
    """An authentication error whose body repeats the key, as some proxies do."""
    body = {
        "error": {
            "message": f"Incorrect API key provided: {key}. You can find your API key at ...",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
            "key": key,
        }
    }
    return Fault.http(401, body=json.dumps(body))


class Artifacts:
    """Everything a run left behind that a user could print, log, save or send."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, what: str, value: Any) -> None:
        if isinstance(value, BaseException):
            self.texts.append((f"{what} str", str(value)))
            self.texts.append((f"{what} repr", repr(value)))
            self.texts.append((f"{what} traceback", "".join(traceback.format_exception(value))))
            for attr in ("message", "body"):
                if hasattr(value, attr):
                    self.texts.append((f"{what}.{attr}", repr(getattr(value, attr))))
        elif isinstance(value, str):
            self.texts.append((what, value))
        else:
            self.texts.append((what, repr(value)))

    def leaks(self, secret: str) -> list[str]:
        return [what for what, text in self.texts if secret in text]


@pytest.fixture
def logs(caplog) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)  # every logger: openai, httpx, langchain, ours
    for name in ("openai", "httpx", "httpcore", "langchain", "afnio_langchain", "dspy", "LiteLLM"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield caplog


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    lines = []
    for record in caplog.records:
        lines.append(record.getMessage())
        lines.append(repr(record.args))
        lines.append(repr(getattr(record, "__dict__", {})))
    return "\n".join(lines)


def run_pipeline(
    model: Any,
    server: OpenAICompatServer,
    artifacts: Artifacts,
    auth_error: type[BaseException] = openai.AuthenticationError,
) -> None:
    """Forward, backward and an optimizer step with transient faults on the way, then
    the same with the provider rejecting the key (and echoing it) in every phase."""
    system = Variable("Answer briefly.", role="system prompt", requires_grad=True)
    optimizer = TGD([system], model=model)
    messages = [{"role": "system", "content": [system]}, {"role": "user", "content": "{q}"}]
    with track_usage() as usage:
        server.inject(Fault.rate_limit(retry_after=0.01))
        server.inject(Fault.http(503))
        out = ChatCompletion.apply(model, messages, inputs={"q": "hi"}, backward_model=model)
        out.backward("too short")
        optimizer.step()
        artifacts.add("output", out)
        artifacts.add("gradients", system.grad)
        artifacts.add("optimizer repr", optimizer)
        artifacts.add("optimizer state", json.dumps(optimizer.state_dict()))
        artifacts.add("step report", json.dumps(optimizer.last_step.to_dict()))

        # the provider now rejects the key, echoing it: in forward, backward and step
        server.inject(echoing_401(KEY), times=100)
        with pytest.raises(auth_error) as forward_error:
            ChatCompletion.apply(model, messages, inputs={"q": "hi"})
        artifacts.add("forward error", forward_error.value)
        with pytest.raises(MinibatchError) as batch_error:
            ChatCompletion.apply(model, messages, inputs={"q": ["a", "b"]})
        artifacts.add("minibatch error", batch_error.value)
        server.reset()
        out = ChatCompletion.apply(model, messages, inputs={"q": ["a", "b"]}, backward_model=model)
        server.inject(echoing_401(KEY), times=100)
        with pytest.raises(BackwardError) as backward_error:
            out.backward("bad", retain_graph=True)
        artifacts.add("backward error", backward_error.value)
        report = out.backward("bad", best_effort=True)
        artifacts.add("best-effort report", json.dumps(report.to_dict()))
        artifacts.add("best-effort failures", [str(f) for f in report.failures])
        with pytest.raises(OptimizerStepError) as step_error:
            optimizer.step()
        assert isinstance(step_error.value.__cause__, auth_error)
        artifacts.add("step error", step_error.value)
        artifacts.add("step error cause", step_error.value.__cause__)
        server.reset()
    artifacts.add("usage", json.dumps(usage.as_dict()))
    artifacts.add("usage repr", usage)
    artifacts.add("global usage", json.dumps(get_usage().as_dict()))
    artifacts.add("model repr", model)
    artifacts.add("model str", str(model))


def test_openai_client_run_leaks_the_key_nowhere(openai_server, logs):
    raw = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key=KEY)
    model = OpenAIClient(raw, model="fake-model", retry=FAST)
    artifacts = Artifacts()
    run_pipeline(model, openai_server, artifacts)
    artifacts.add("logs", log_text(logs))
    assert artifacts.leaks(KEY) == []
    # the error still says what went wrong, with the key masked
    forward_error = next(text for what, text in artifacts.texts if what == "forward error str")
    assert f"Incorrect API key provided: {REDACTED}" in forward_error
    assert logs.records, "the run should have logged something at DEBUG"


def test_chat_openai_run_leaks_the_key_nowhere_including_traces(openai_server, logs):
    chat = ChatOpenAI(
        base_url=openai_server.base_url, api_key=KEY, model="fake-model", max_retries=0
    )
    model = as_model_client(chat)
    assert isinstance(model, LangChainChatModelClient)
    model.retry = FAST
    artifacts = Artifacts()
    with collect_runs() as collector:
        run_pipeline(model, openai_server, artifacts)
    assert collector.traced_runs
    for run in collector.traced_runs:
        artifacts.add(f"trace {run.name}", run.model_dump_json())
    artifacts.add("chat model repr", chat)
    artifacts.add("logs", log_text(logs))
    assert artifacts.leaks(KEY) == []


def test_key_from_the_environment_is_masked_too(openai_server, monkeypatch, logs):
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    chat = ChatOpenAI(base_url=openai_server.base_url, model="fake-model", max_retries=0)
    model = as_model_client(chat)
    model.retry = FAST
    openai_server.inject(echoing_401(ENV_KEY), times=5)
    system = Variable("sys", role="system prompt", requires_grad=True)
    with pytest.raises(openai.AuthenticationError) as info:
        ChatCompletion.apply(model, [{"role": "system", "content": [system]}])
    artifacts = Artifacts()
    artifacts.add("error", info.value)
    artifacts.add("logs", log_text(logs))
    assert artifacts.leaks(ENV_KEY) == []


def test_dspy_lm_run_leaks_the_key_nowhere(openai_server, monkeypatch, logs):
    dspy = pytest.importorskip("dspy")  # the dspy extra
    from dspy.clients.cache import Cache
    from dspy.utils.exceptions import LMAuthError

    monkeypatch.setitem(vars(dspy), "cache", Cache(False, True, None))
    lm = dspy.LM("openai/fake-model", api_base=openai_server.base_url, api_key=KEY, cache=False)
    model = as_model_client(lm)
    model.retry = FAST
    artifacts = Artifacts()
    run_pipeline(model, openai_server, artifacts, auth_error=LMAuthError)
    artifacts.add("lm repr", lm)
    artifacts.add("logs", log_text(logs))
    assert artifacts.leaks(KEY) == []


def test_reprs_of_clients_never_show_the_key():
    register_secret(KEY)
    clients = [
        OpenAIClient(openai.AsyncOpenAI(api_key=KEY), model="m"),
        OpenAIClient(openai.OpenAI(api_key=KEY), model="m"),
        LangChainChatModelClient(ChatOpenAI(api_key=KEY, model="m")),
    ]
    for client in clients:
        assert KEY not in repr(client) and KEY not in str(client)
    assert KEY not in repr(TGD([Variable("x", requires_grad=True)], model=clients[0]))


def test_local_model_server_repr_holds_no_key():
    pytest.importorskip("llama_cpp")
    from afnio_langchain.models import LocalModelServer, local_model_available

    if not local_model_available():
        pytest.skip("the packaged GGUF model is not installed")
    server = LocalModelServer()
    assert "api_key" not in repr(server).lower()


# -- the redaction helpers --------------------------------------------------------------------


def test_redact_masks_registered_and_environment_secrets(monkeypatch):
    register_secret("sk-registered-0123456789")
    monkeypatch.setenv("SOME_PROVIDER_API_KEY", "env-secret-value-42")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false-but-long-value")  # not a secret name
    monkeypatch.setenv("MAX_TOKEN", "123456789")  # digits only: not a secret
    text = "a sk-registered-0123456789 b env-secret-value-42 c false-but-long-value 123456789"
    assert redact(text) == f"a {REDACTED} b {REDACTED} c false-but-long-value 123456789"


def test_short_values_are_never_treated_as_secrets():
    register_secret("abc")
    register_secret("")
    register_secret(None)
    assert redact("abc def") == "abc def"


def test_redact_exception_rewrites_the_chain_in_place_and_keeps_the_type():
    secret = "sk-chained-" + "secret-987654321"  # built at run time: not in the source
    register_secret(secret)
    try:
        try:
            raise KeyError(f"inner {secret}")
        except KeyError as inner:
            raise ValueError({"detail": ["outer", secret]}) from inner
    except ValueError as exc:
        assert redact_exception(exc) is exc
        text = "".join(traceback.format_exception(exc))
    assert secret not in text
    assert text.count(REDACTED) == 2


def test_backward_error_message_is_redacted_even_for_custom_errors():
    secret = "sk-custom-node-" + "secret-55555"
    register_secret(secret)
    from afnio_langchain.autodiff import Function

    class Leaky(Function):
        @staticmethod
        def forward(ctx, x):
            return Variable("y")

        @staticmethod
        def backward(ctx, grad_output):
            raise RuntimeError(f"used key {secret}")

    x = Variable("x", requires_grad=True)
    with pytest.raises(BackwardError) as info:
        Leaky.apply(x).backward("f")
    assert secret not in str(info.value)
    assert f"used key {REDACTED}" in str(info.value)


def test_optimizer_state_dict_masks_a_key_put_in_completion_args():
    from afnio_langchain.models._secrets import register_secret
    from afnio_langchain.optim import TGD
    from afnio_langchain.testing import ScriptedChatModel

    key = "sk-state-dict-secret-0123456789"
    register_secret(key)
    param = Variable("Be brief.", role="system prompt", requires_grad=True)
    optimizer = TGD(
        [param], model=ScriptedChatModel(), extra_headers={"Authorization": f"Bearer {key}"}
    )
    state = json.dumps(optimizer.state_dict())
    assert key not in state and "extra_headers" not in state  # options are never saved
    assert key not in repr(optimizer) and "'Authorization': '[REDACTED]'" in repr(optimizer)
    assert optimizer.param_groups[0]["completion_args"]["extra_headers"]["Authorization"].endswith(key)


def test_a_secret_inside_a_list_of_call_options_is_masked_in_traces(openai_server, logs):
    plugin_key = "plugin-token-0123456789abcdef-NOT-REGISTERED"
    chat = ChatOpenAI(
        base_url=openai_server.base_url, api_key=KEY, model="fake-model", max_retries=0,
        extra_body={"plugins": [{"name": "search", "api_key": plugin_key}]},
    )
    model = as_model_client(chat)
    model.retry = FAST
    with collect_runs() as collector:
        asyncio.run(model.acomplete([{"role": "user", "content": "hi"}]))
    traces = [run.model_dump_json() for run in collector.traced_runs]
    assert traces and not any(plugin_key in trace for trace in traces)


# -- a chat model's keys are registered again only when its fields change ---------------
# LangChain chat models get a fresh adapter per call; their keys are read again only when
# a field changed (models/_secrets.py). These tests hold that memo to what users do.

ROTATED_KEYS = [f"sk-proj-ROTATED{k}-{'0123456789abcdef' * 2}" for k in range(3)]


def test_a_key_rotated_twice_between_calls_is_masked_in_the_next_error(openai_server):
    from pydantic import SecretStr

    chat = ChatOpenAI(
        base_url=openai_server.base_url, api_key=ROTATED_KEYS[0], model="fake-model",
        max_retries=0,
    )
    messages = [{"role": "user", "content": "hi"}]
    ChatCompletion.apply(chat, messages)  # the first key is registered by this call
    chat.openai_api_key = SecretStr(ROTATED_KEYS[1])
    chat.openai_api_key = SecretStr(ROTATED_KEYS[2])
    openai_server.inject(echoing_401(ROTATED_KEYS[2]), times=5)
    with pytest.raises(openai.AuthenticationError) as error:
        ChatCompletion.apply(chat, messages)
    text = "".join(traceback.format_exception(error.value))
    assert ROTATED_KEYS[2] not in text
    assert REDACTED in str(error.value)


def test_a_key_object_replaced_twice_between_calls_is_never_taken_for_the_first():
    """A key replaced twice with no call between: the third object is often allocated
    where the first lived (same size), so it has the first one's id. The registry keeps
    the objects it saw alive, so that never happens there."""
    from pydantic import SecretStr

    from afnio_langchain.models._secrets import register_secrets_of

    class Client:
        api_key: Any = None

    client = Client()
    missed = []
    for k in range(50):
        client.api_key = SecretStr(f"sk-first-{k:04d}-{'x' * 30}")
        register_secrets_of(client)
        client.api_key = SecretStr(f"sk-second-{k:04d}-{'y' * 30}")
        client.api_key = SecretStr(f"sk-third-{k:04d}-{'z' * 30}")
        register_secrets_of(client)
        if redact(client.api_key.get_secret_value()) != REDACTED:
            missed.append(k)
    assert missed == []


def test_a_base_url_password_is_found_whatever_private_name_the_client_stores_it_under():
    """openai 3.x keeps the base URL as ``_configured_base_url`` (an ``httpx.URL``), 1.x
    and 2.x as ``_base_url``: the password in its userinfo is a key either way, and a
    URL replaced on the same object is read again."""
    import httpx

    from afnio_langchain.models._secrets import register_secrets_of, secrets_in

    client = openai.AsyncOpenAI(
        base_url="http://user:sk-inurl-0123456789abcdef@127.0.0.1:9/v1", api_key="sk-key-0123456789"
    )
    assert "sk-inurl-0123456789abcdef" in secrets_in(client)

    class Client:
        pass

    other = Client()
    for name in ("_base_url", "_configured_base_url", "openai_api_base"):
        setattr(other, name, httpx.URL(f"http://u:sk-{name}-0123456789@127.0.0.1/v1"))
        register_secrets_of(other)
        assert redact(f"echo sk-{name}-0123456789") == f"echo {REDACTED}"


def test_a_secret_header_added_in_place_is_masked(openai_server):
    header_key = "sk-header-INPLACE-0123456789abcdef"
    chat = ChatOpenAI(
        base_url=openai_server.base_url, api_key="sk-unused-0123456789", model="fake-model",
        default_headers={"x-team": "research"},
    )
    as_model_client(chat)
    assert redact(f"Bearer {header_key}") == f"Bearer {header_key}"  # not a key yet
    chat.default_headers["Authorization"] = f"Bearer {header_key}"  # the same dict
    as_model_client(chat)
    assert redact(f"echo: {header_key}") == f"echo: {REDACTED}"


def test_the_key_registry_keeps_no_chat_model_alive():
    import gc
    import weakref

    from langchain_core.callbacks import BaseCallbackHandler

    from afnio_langchain.models import _secrets

    class Holder(BaseCallbackHandler):  # a handler that refers back to its model
        model: Any = None

    handler = Holder()
    chat = ChatOpenAI(api_key="sk-alive-0123456789abcdef", model="fake-model",
                      callbacks=[handler])
    handler.model = chat
    as_model_client(chat)
    key, ref = id(chat), weakref.ref(chat)
    assert key in _secrets._REGISTERED
    del chat, handler
    gc.collect()
    assert ref() is None
    assert key not in _secrets._REGISTERED
