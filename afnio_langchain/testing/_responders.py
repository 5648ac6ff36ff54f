"""What the loopback server answers: the default responder and helpers for writing one."""

from __future__ import annotations

import json
import time
import uuid
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


def completion_reply(body: dict[str, Any], text: str, default_model: str) -> dict[str, Any]:
    """The ``chat.completion`` object the loopback servers send for ``text``.

    One choice per ``n`` in the request, and usage counted with :func:`count_tokens`
    (the prompt is :func:`request_text` of the request).

    Example:
        >>> reply = completion_reply({"messages": [{"role": "user", "content": "hi there"}]},
        ...                          "hello", "fake-model")
        >>> reply["model"], reply["choices"][0]["message"]["content"], reply["usage"]
        ('fake-model', 'hello', {'prompt_tokens': 2, 'completion_tokens': 1, 'total_tokens': 3})
    """
    n = body.get("n") or 1
    prompt_tokens = count_tokens(request_text(body))
    completion_tokens = count_tokens(text) * n
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or default_model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
            for i in range(n)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


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


__all__ = ["Responder", "completion_reply", "count_tokens", "default_responder", "request_text"]
