"""A ``ChatOpenAI`` call of plain text messages that nothing observes sends the payload
langchain-openai builds, and reads the reply as langchain-openai reads it.

``models/_plain_chat_payload.py`` builds the payload without the messages' round trip
through LangChain objects, and ``models/_unobserved_call.complete_unobserved`` reads the
reply's text and counts from its body, building the reply message (``raw``) only when
read. These tests hold both to langchain-openai itself: the payload against
``_get_request_payload`` over random conversations, models and parameters (including
the ``o``-series' ``developer`` role and renamed ``max_tokens``); the reply against the
run LangChain makes when a callback observes it, over odd replies from the independent
stdlib server (no usage, null finish reason, no model, an error field, a user-role
message, two choices).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import pickle
import random
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.globals import set_llm_cache
from langchain_openai import AzureChatOpenAI, ChatOpenAI

from afnio_langchain.models import Completion, LangChainChatModelClient
from afnio_langchain.models._langchain_adapter import to_langchain_messages
from afnio_langchain.models._plain_chat_payload import plain_payload
from afnio_langchain.models._protocol import DeferredRawCompletion

from ._stdlib_server import Reply, StdlibServer, completion
from .conftest import FAST, KEY, MODEL

ROLES = ("system", "user", "assistant")
TEXTS = ("", "Answer briefly.", "What is 2 + 2?", "Grüße, 世界 🌍", "{x} and \n\t tabs", "null")


def _conversation(rng: random.Random) -> list[dict[str, str]]:
    return [
        {"role": rng.choice(ROLES), "content": rng.choice(TEXTS) * rng.randint(1, 3)}
        for _ in range(rng.randint(0, 6))
    ]


MODELS = [
    {"model": "gpt-4o-mini"},
    {"model": "gpt-4o-mini", "temperature": 0.3, "max_tokens": 64, "seed": 7},
    {"model": "o1-mini"},
    {"model": "o3-mini", "max_tokens": 5, "reasoning_effort": "low"},
    {"model": "gpt-4.1", "model_kwargs": {"user": "u-1"}, "extra_body": {"top_k": 3}},
    {"model": "llama", "n": 2, "logprobs": True, "frequency_penalty": 0.5},
]
PARAMS: list[tuple[list[str] | None, dict[str, Any]]] = [
    (None, {}),
    (["\n\n"], {"temperature": 0}),
    (None, {"max_tokens": 12, "top_p": 0.9}),
    (None, {"response_format": {"type": "json_object", "schema": {"type": "object"}}}),
    (
        ["END"],
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "g", "schema": {"type": "object", "properties": {}}},
            }
        },
    ),
]


@pytest.mark.parametrize("options", MODELS, ids=lambda o: o["model"])
def test_the_payload_is_the_one_langchain_openai_builds(options):
    model = ChatOpenAI(api_key=KEY, **options)
    rng = random.Random(options["model"])
    for _ in range(40):
        messages = _conversation(rng)
        stop, params = rng.choice(PARAMS)
        expected = model._get_request_payload(
            to_langchain_messages(messages), stop=stop, **copy.deepcopy(params)
        )
        assert plain_payload(model, messages, stop, copy.deepcopy(params)) == expected


def test_o_series_system_messages_go_as_developer_and_other_models_keep_system():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    o_series = plain_payload(ChatOpenAI(model="o1", api_key=KEY), messages, None, {})
    plain = plain_payload(ChatOpenAI(model="gpt-4o", api_key=KEY), messages, None, {})
    assert [m["role"] for m in o_series["messages"]] == ["developer", "user"]
    assert [m["role"] for m in plain["messages"]] == ["system", "user"]


def test_a_renamed_model_gets_the_roles_of_its_new_name():
    model = ChatOpenAI(model="gpt-4o", api_key=KEY)
    messages = [{"role": "system", "content": "Be brief."}]
    assert plain_payload(model, messages, None, {})["messages"][0]["role"] == "system"
    model.model_name = "o3"
    assert plain_payload(model, messages, None, {})["messages"][0]["role"] == "developer"


class _Prefixing(ChatOpenAI):
    """A subclass whose payload is its own: the package must not guess it."""

    def _get_request_payload(self, input_: Any, *, stop: Any = None, **kwargs: Any) -> dict:
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        for message in payload.get("messages", []):
            message["content"] = "[app] " + message["content"]
        return payload


@pytest.mark.parametrize(
    "model",
    [
        ChatOpenAI(model="gpt-4o", api_key=KEY, use_responses_api=True),
        ChatOpenAI(model="gpt-4o", api_key=KEY, reasoning={"effort": "low"}),
        _Prefixing(model="gpt-4o", api_key=KEY),
        AzureChatOpenAI(
            azure_endpoint="https://example.invalid", api_key=KEY, api_version="2024-10-21",
            azure_deployment="d",
        ),
    ],
    ids=["responses-api", "reasoning", "own-payload-subclass", "azure"],
)
def test_payloads_the_package_cannot_reproduce_are_left_to_langchain(model):
    assert plain_payload(model, [{"role": "user", "content": "Hi"}], None, {}) is None


def test_a_message_that_is_not_plain_role_and_text_is_left_to_langchain():
    model = ChatOpenAI(model="gpt-4o", api_key=KEY)
    named = [{"role": "user", "content": "Hi", "name": "ann"}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    tool = [{"role": "tool", "content": "42"}]
    assert all(plain_payload(model, m, None, {}) is None for m in (named, parts, tool))


# -- the reply, read from its body ------------------------------------------------------


class _Quiet(BaseCallbackHandler):
    """Its presence alone keeps LangChain's run (the reference the fast path must match)."""


def _odd(kind: str) -> Reply:
    body = completion("4")
    if kind == "no-usage":
        del body["usage"]
    elif kind == "null-finish":
        body["choices"][0]["finish_reason"] = None
    elif kind == "no-model":
        del body["model"]
    elif kind == "length":
        body["choices"][0]["finish_reason"] = "length"
    elif kind == "null-content":
        body["choices"][0]["message"]["content"] = None
    elif kind == "user-role":
        body["choices"][0]["message"]["role"] = "user"
    elif kind == "two-choices":
        second = {**body["choices"][0], "index": 1, "message": {"role": "assistant", "content": "5"}}
        body["choices"].append(second)
    elif kind == "error-field":
        body["error"] = {"message": "upstream overloaded", "type": "server_error"}
    return Reply(body=body, headers={"x-request-id": "req-odd"})


def _both(kind: str) -> tuple[Any, Any]:
    """The reply through the package's unobserved path and through LangChain's run."""
    set_llm_cache(None)
    outcomes = []
    with StdlibServer(lambda request: _odd(kind)) as server:
        for config in (None, {"callbacks": [_Quiet()]}):
            model = ChatOpenAI(
                base_url=server.base_url, api_key=KEY, model=MODEL, timeout=5,
                include_response_headers=True,
            )
            client = LangChainChatModelClient(model, retry=FAST, json_mode=False)
            params = {} if config is None else {"config": config}
            try:
                outcomes.append(asyncio.run(client.acomplete([{"role": "user", "content": "2+2?"}], **params)))
            except Exception as exc:  # compared below: the same error both ways
                outcomes.append(exc)
    return outcomes[0], outcomes[1]


def _seen(reply: Any) -> Any:
    if isinstance(reply, Exception):
        return type(reply), str(reply)
    message = reply.raw
    metadata = dict(message.response_metadata)
    metadata["headers"] = {k: v for k, v in metadata["headers"].items() if k != "date"}
    return (
        (reply.text, reply.model, reply.input_tokens, reply.output_tokens),
        (reply.cached_input_tokens, reply.finish_reason, reply.from_cache),
        (type(message), message.content, metadata, getattr(message, "usage_metadata", None)),
    )


@pytest.mark.parametrize(
    "kind",
    ["plain", "no-usage", "null-finish", "no-model", "length", "null-content", "user-role",
     "two-choices", "error-field"],
)
def test_an_odd_reply_reads_as_langchains_run_reads_it(kind):
    fast, with_run = _both(kind)
    assert _seen(fast) == _seen(with_run)


def test_the_reply_message_is_built_once_and_only_when_read(monkeypatch):
    built: list[int] = []
    original = ChatOpenAI._create_chat_result

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        built.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ChatOpenAI, "_create_chat_result", counted)
    fast, _ = _both("plain")
    built.clear()
    assert isinstance(fast, DeferredRawCompletion) and fast.text == "4" and built == []
    assert fast.raw is fast.raw and built == [1]


# -- DeferredRawCompletion ----------------------------------------------------------------


def _deferred(calls: list[int]) -> DeferredRawCompletion:
    def build() -> dict[str, str]:
        calls.append(1)
        return {"message": "4"}

    plain = Completion("4", "m", 3, 1, cached_input_tokens=2, finish_reason="stop")
    return DeferredRawCompletion.of(plain, build)


def test_a_deferred_completion_equals_the_plain_one_both_ways():
    calls: list[int] = []
    deferred = _deferred(calls)
    plain = Completion("4", "m", 3, 1, raw={"message": "4"}, cached_input_tokens=2,
                       finish_reason="stop")
    assert deferred == plain and plain == deferred and deferred == _deferred([])
    assert deferred != dataclasses.replace(plain, text="5")
    assert calls == [1]


def test_a_deferred_completion_pickles_copies_and_replaces_as_a_completion():
    calls: list[int] = []
    deferred = _deferred(calls)
    for other in (pickle.loads(pickle.dumps(deferred)), copy.copy(deferred), copy.deepcopy(deferred)):
        assert type(other) is Completion and other.raw == {"message": "4"} and other == deferred
    replaced = dataclasses.replace(deferred, text="5")
    assert replaced.text == "5" and replaced.raw == {"message": "4"} and calls == [1]


def test_setting_raw_replaces_what_would_be_built():
    calls: list[int] = []
    deferred = _deferred(calls)
    deferred.raw = "given"
    assert deferred.raw == "given" and calls == []
    assert not deferred.cut_off and deferred.complete and "raw" not in repr(deferred)
