"""What the loopback server answers: the default responder and helpers for writing one."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from afnio_langchain.models import required_keys_in

Responder = Callable[[dict[str, Any]], str]
"""Takes a request body (a dict) and returns the reply text."""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content
        )
    return "" if content is None else str(content)


def request_text(body: dict[str, Any]) -> str:
    """The concatenated text of a request's message contents, one message per line."""
    messages = body.get("messages") or []
    return "\n".join(_content_text(m.get("content")) for m in messages if isinstance(m, dict))


def count_tokens(text: str) -> int:
    """The server's token count: whitespace-separated words."""
    return len(text.split())


def default_responder(body: dict[str, Any]) -> str:
    """The default reply: a JSON object when the package's JSON-keys instruction is in the
    request (``{"<key>": "feedback for <key>"}``), else ``"echo: <last user message>"``."""
    keys = required_keys_in(request_text(body))
    if keys:
        return json.dumps({key: f"feedback for {key}" for key in keys})
    last_user = ""
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user":
            last_user = _content_text(message.get("content"))
    return f"echo: {last_user}"


def _wants_json_schema(body: dict[str, Any]) -> bool:
    response_format = body.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") == "json_schema"


def _long_text(size: int) -> str:
    word = "lorem "
    return (word * (size // len(word) + 1))[: max(size, 1)]


__all__ = ["Responder", "count_tokens", "default_responder", "request_text"]
