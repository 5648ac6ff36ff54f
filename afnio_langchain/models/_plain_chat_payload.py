"""langchain-openai's request payload for a conversation of plain text messages,
without turning the messages into LangChain objects and back.

``ChatOpenAI`` builds each request with ``_get_request_payload``: the chat messages
become ``SystemMessage``/``HumanMessage``/``AIMessage`` objects (pydantic models), are
wrapped in a prompt value, and are turned back into the dicts the API takes; about a
tenth of its CPU per call (``benchmarks/``), on the critical path of a minibatch. For
messages that are plain ``{"role", "content"}`` dicts with text content, that round
trip gives back the same dicts, with the role langchain-openai sends for each (``o1``-
style models send a system message as ``developer``). :func:`plain_payload` asks the
model's own ``_get_request_payload`` for everything but the messages (an empty
conversation: model, parameters, ``stop``, renamed ``max_tokens``...) and fills the
messages in with the roles that method gave a probe conversation of one message per
role. Anything else gets None (the caller builds the payload as LangChain does): list
content, other keys or roles, the Responses API, a class whose payload or message
conversion is not langchain-openai's own.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.prompt_values import ChatPromptValue

from afnio_langchain.models._protocol import Message

__all__ = ["plain_payload"]

_PROBE_TEXT = "\x00afnio-probe"
_PROBE = ChatPromptValue(
    messages=[SystemMessage(_PROBE_TEXT), HumanMessage(_PROBE_TEXT), AIMessage(_PROBE_TEXT)]
)
_PROBE_ROLES = ("system", "user", "assistant")
_NO_MESSAGES = ChatPromptValue(messages=[])


@functools.cache
def _own_payload_methods() -> frozenset[Any]:
    """langchain-openai's own ``_get_request_payload`` implementations."""
    try:
        from langchain_openai.chat_models.base import BaseChatOpenAI, ChatOpenAI
    except ImportError:  # pragma: no cover - a core dependency of this package
        return frozenset()
    return frozenset({BaseChatOpenAI._get_request_payload, ChatOpenAI._get_request_payload})


# (model class, model name) -> the roles its payloads send, or None: not plain.
_SENT_ROLES: dict[tuple[type, Any], dict[str, str] | None] = {}


def _sent_roles(model: Any) -> dict[str, str] | None:
    """The role langchain-openai sends for each of our roles, for models of this class
    and name (what the roles depend on); None when a probe message does not come back
    as a ``{role, content}`` dict with the same text."""
    key = (type(model), getattr(model, "model_name", None))
    if key not in _SENT_ROLES:
        if len(_SENT_ROLES) >= 1024:  # model names made up on the fly: start over
            _SENT_ROLES.clear()
        _SENT_ROLES[key] = _probe_roles(model)
    return _SENT_ROLES[key]


def _probe_roles(model: Any) -> dict[str, str] | None:
    try:
        sent = model._get_request_payload(_PROBE)
    except Exception:
        return None
    messages = sent.get("messages")
    if not isinstance(messages, list) or len(messages) != len(_PROBE_ROLES):
        return None
    roles = {}
    for ours, message in zip(_PROBE_ROLES, messages, strict=True):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            return None
        if message["content"] != _PROBE_TEXT or not isinstance(message["role"], str):
            return None
        roles[ours] = message["role"]
    return roles


def plain_payload(
    model: Any, messages: Sequence[Message], stop: list[str] | None, params: dict[str, Any]
) -> dict[str, Any] | None:
    """``model._get_request_payload(messages as LangChain messages, stop=stop, **params)``
    for plain text messages; None where that cannot be reproduced (see the module doc).

    Example:
        >>> from langchain_openai import ChatOpenAI
        >>> from afnio_langchain.models._plain_chat_payload import plain_payload
        >>> model = ChatOpenAI(model="o3-mini", api_key="sk-test", max_tokens=5)
        >>> plain_payload(model, [{"role": "system", "content": "Be brief."}], None, {})
        {'model': 'o3-mini', 'stream': False, 'max_completion_tokens': 5, 'messages': [{'content': 'Be brief.', 'role': 'developer'}]}
    """
    if type(model)._get_request_payload not in _own_payload_methods():
        return None
    for message in messages:
        if len(message) != 2 or type(message.get("content")) is not str:
            return None
    roles = _sent_roles(model)
    if roles is None:
        return None
    payload = model._get_request_payload(_NO_MESSAGES, stop=stop, **params)
    if payload.get("messages") != []:  # the Responses API, or messages added by a parameter
        return None
    try:
        payload["messages"] = [
            {"content": m["content"], "role": roles[m["role"]]} for m in messages
        ]
    except KeyError:  # a role other than system, user, assistant
        return None
    return payload
