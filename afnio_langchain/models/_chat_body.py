"""Reading a chat-completion reply body: the one place that decides whether what a
server sent back is a usable chat completion.

A body must be UTF-8 (undecodable bytes would become U+FFFD in a gradient), a JSON
object, and hold ``choices[0].message`` with text (or null) content. Anything else is
a :class:`MalformedReplyError`, transient (a proxy's HTML page, a body cut short, an
upstream hiccup) and quoted, masked, in the error. A malformed ``usage`` block is not a
reason to lose the reply: its counts are read as 0.
"""

from __future__ import annotations

import json
from typing import Any

from afnio_langchain.models._protocol import Completion, MalformedReplyError
from afnio_langchain.models._secrets import excerpt
from afnio_langchain.models._usage import token_count

USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _field(value: Any, key: str) -> Any:
    """``value[key]`` of a JSON object (None for anything else or a missing key)."""
    return value.get(key) if isinstance(value, dict) else None


def parse_chat_body(raw: bytes, what: str) -> dict[str, Any]:
    """The reply body ``raw`` as a dict, checked to be a usable chat completion.

    Args:
        raw: The body's bytes.
        what: Who answered (``"model 'gpt-4o-mini'"``), for the error.

    Raises:
        MalformedReplyError: Not UTF-8, not a JSON object, or no usable first choice.

    Example:
        >>> from afnio_langchain.models._chat_body import parse_chat_body
        >>> body = b'{"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}'
        >>> parse_chat_body(body, "model 'm'")["choices"][0]["message"]["content"]
        'hi'
        >>> parse_chat_body(b"<html>Bad Gateway</html>", "model 'm'")
        Traceback (most recent call last):
        ...
        afnio_langchain.models._protocol.MalformedReplyError: the reply of model 'm' is not JSON: '<html>Bad Gateway</html>'
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        shown = raw[max(0, exc.start - 40) : exc.start + 40].decode("utf-8", "replace")
        raise MalformedReplyError(
            f"the reply of {what} is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}): {excerpt(shown)!r}"
        ) from None
    try:
        body = json.loads(text)
    except ValueError:
        raise MalformedReplyError(f"the reply of {what} is not JSON: {excerpt(text)!r}") from None
    choices = _field(body, "choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedReplyError(
            f"the reply of {what} is a chat completion without choices: {excerpt(text)!r}"
        )
    message = _field(choices[0], "message")
    if not isinstance(message, dict):
        raise MalformedReplyError(f"the reply of {what} has a choice without a message: "
                                  f"{excerpt(text)!r}")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise MalformedReplyError(
            f"the reply of {what} has message content that is not text: {excerpt(content)!r}"
        )
    return body


def usage_is_clean(body: dict[str, Any]) -> bool:
    """Whether the body's ``usage`` block (if any) holds only whole-number counts."""
    usage = body.get("usage")
    if usage is None:
        return True
    if not isinstance(usage, dict):
        return False
    return all(
        type(usage[k]) is int and usage[k] >= 0 for k in USAGE_FIELDS if usage.get(k) is not None
    )


def clean_usage(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with its usage block's counts read as :func:`token_count` does."""
    usage = body.get("usage")
    counts = usage if isinstance(usage, dict) else {}
    return {**body, "usage": {k: token_count(counts.get(k)) for k in USAGE_FIELDS}}


def completion_from(body: dict[str, Any], default_model: str) -> Completion:
    """A :class:`Completion` from a body :func:`parse_chat_body` accepted.

    Example:
        >>> from afnio_langchain.models._chat_body import completion_from
        >>> message = {"role": "assistant", "content": None, "refusal": "I can't help."}
        >>> reply = completion_from({"choices": [{"message": message, "finish_reason": "stop"}]}, "m")
        >>> reply.text, reply.unfinished
        ('', 'refusal')
    """
    choice = body["choices"][0]  # a dict with a message dict: parse_chat_body checked
    message = choice["message"]
    content = message.get("content")
    refusal = message.get("refusal")
    usage = body.get("usage")
    if not isinstance(usage, dict):
        usage = _NO_USAGE
    return Completion(
        text=content or "",
        model=str(body.get("model") or default_model),
        input_tokens=token_count(usage.get("prompt_tokens")),
        output_tokens=token_count(usage.get("completion_tokens")),
        finish_reason=_finish_reason(choice.get("finish_reason")),
        raw=body,
        cached_input_tokens=token_count(_field(usage.get("prompt_tokens_details"), "cached_tokens")),
        unanswered=unanswered(message, refusal) if refusal or not content else None,
    )


def unanswered(message: dict[str, Any], refusal: Any) -> str | None:
    """Why an OpenAI-style reply ``message`` holds no answer (a :class:`Completion`'s
    ``unanswered``): ``"refusal"``, ``"tool_calls"`` (tool calls and no text), or None.

    Example:
        >>> from afnio_langchain.models._chat_body import unanswered
        >>> unanswered({"content": None, "tool_calls": [{"id": "call_1"}]}, None)
        'tool_calls'
    """
    if refusal:
        return "refusal"
    if not message.get("content") and message.get("tool_calls"):
        return "tool_calls"
    return None


_NO_USAGE: dict[str, Any] = {}


def _finish_reason(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
