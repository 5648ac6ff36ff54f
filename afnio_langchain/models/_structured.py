"""Structured replies: ask for a JSON object with fixed string fields, parse it tolerantly,
and re-ask a bounded number of times. The one home of JSON repair in the package."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from afnio_langchain.models._protocol import JsonSchema, Message, ModelClient
from afnio_langchain.models._secrets import redact

JSON_INSTRUCTION = "Reply with only a JSON object with exactly these keys: {keys}."
_KEYS_LINE = re.compile(r"Reply with only a JSON object with exactly these keys: (.+?)\.\s*$", re.M)
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_JSON_START = re.compile(r'\s*(\{\s*"|```)')


class StructuredOutputError(RuntimeError):
    """A model kept answering with something that is not the JSON object asked for.

    Attributes:
        where: Which node or step asked (``"ChatCompletionBackward0, item 3"``).
        replies: Every reply received, in order.
    """

    def __init__(self, where: str, reason: str, replies: list[str]) -> None:
        self.where = where
        self.replies = replies
        last = replies[-1] if replies else ""
        super().__init__(
            redact(
                f"{where}: no usable JSON after {len(replies)} attempt(s) ({reason}). "
                f"Last reply: {last[:500]!r}"
            )
        )


def json_instruction(keys: Sequence[str]) -> str:
    """The sentence that tells a model which keys to answer with (parsed back by fakes)."""
    return JSON_INSTRUCTION.format(keys=", ".join(json.dumps(k) for k in keys))


def required_keys_in(text: str) -> list[str] | None:
    """The keys a request asks for, read from its :func:`json_instruction` line."""
    matches = list(_KEYS_LINE.finditer(text))
    if not matches:
        return None
    match = matches[-1]
    return [json.loads(k) for k in re.findall(r'"(?:[^"\\]|\\.)*"', match.group(1))]


def fields_schema(name: str, fields: dict[str, str]) -> JsonSchema:
    """A JSON schema with one required string property per field (name -> description)."""
    return JsonSchema(
        name=name,
        schema={
            "type": "object",
            "properties": {k: {"type": "string", "description": d} for k, d in fields.items()},
            "required": list(fields),
            "additionalProperties": False,
        },
    )


def parse_json_object(text: str) -> dict[str, Any]:
    """Parse the first JSON object in ``text``: code fences, prose around it, trailing
    commas and raw control characters in strings are tolerated.

    Raises:
        ValueError: No JSON object could be read.
    """
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        start, end = candidate.find("{"), candidate.rfind("}")
        if start == -1 or end <= start:
            continue
        body = candidate[start : end + 1]
        for attempt in (body, _without_trailing_commas(body)):
            try:
                value = json.loads(attempt, strict=False)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise ValueError("the reply contains no JSON object")


def _without_trailing_commas(text: str) -> str:
    """``text`` with commas before a closing ``}`` or ``]`` removed, outside strings only."""
    out: list[str] = []
    in_string = escaped = False
    for k, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            out.append(char)
            continue
        if char == '"':
            in_string = True
        elif char == "," and text[k + 1 :].lstrip()[:1] in ("}", "]"):
            continue
        out.append(char)
    return "".join(out)


def _attempts_json(text: str, key: str) -> bool:
    """Whether ``text`` looks like a (broken) JSON reply rather than a bare value."""
    return bool(_JSON_START.match(text)) or json.dumps(key) + ":" in text.replace('" :', '":')


def extract_fields(text: str, keys: Sequence[str]) -> dict[str, str]:
    """Read string fields ``keys`` from a reply.

    A reply that is not JSON at all is accepted as the value of the only field when
    exactly one is asked for (small models often drop the wrapper). A reply that
    attempts JSON but is broken (cut off, unbalanced) is refused, never taken as the
    value: a truncated ``{"improved_value": "...`` must not become a learned prompt.

    Raises:
        ValueError: Fields are missing or the reply is unusable.
    """
    try:
        data = parse_json_object(text)
    except ValueError:
        if len(keys) == 1 and _attempts_json(text, keys[0]):
            raise ValueError("the reply is broken JSON (cut off or malformed)") from None
        if len(keys) == 1 and text.strip():
            return {keys[0]: text.strip()}
        raise
    if len(keys) == 1 and keys[0] not in data and len(data) == 1:
        data = {keys[0]: next(iter(data.values()))}
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"missing keys {missing}; got keys {sorted(data)}")
    out = {}
    for key in keys:
        value = data[key]
        out[key] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return out


async def request_fields(
    client: ModelClient,
    messages: Sequence[Message],
    fields: dict[str, str],
    *,
    purpose: str,
    where: str,
    attempts: int = 3,
    schema_name: str = "reply",
    **params: Any,
) -> dict[str, str]:
    """Ask ``client`` for a JSON object with string ``fields`` and return them.

    The last user message should end with :func:`json_instruction`. An unusable reply
    is shown back to the model with what was wrong, up to ``attempts`` calls in all.

    Raises:
        StructuredOutputError: Every attempt was unusable; says ``where`` and what came back.
    """
    keys = list(fields)
    schema = fields_schema(schema_name, fields)
    conversation = list(messages)
    replies: list[str] = []
    reason = ""
    for _ in range(max(1, attempts)):
        completion = await client.acomplete(
            conversation, purpose=purpose, json_schema=schema, **params
        )
        replies.append(completion.text)
        try:
            return extract_fields(completion.text, keys)
        except ValueError as exc:
            reason = str(exc)
            conversation = [
                *messages,
                {"role": "assistant", "content": completion.text},
                {
                    "role": "user",
                    "content": f"That reply could not be used: {reason}. {json_instruction(keys)}",
                },
            ]
    raise StructuredOutputError(where, reason, replies)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_score(text: str) -> float:
    """A judge's score as a float: ``"8"``, ``"8/10"`` (-> 0.8), ``"0.5"``, ``"true"``."""
    t = text.strip().lower()
    if t in ("true", "yes", "pass", "correct"):
        return 1.0
    if t in ("false", "no", "fail", "incorrect"):
        return 0.0
    fraction = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*", t)
    if fraction:
        return float(fraction.group(1)) / float(fraction.group(2))
    match = _NUMBER.search(t)
    if not match:
        raise ValueError(f"no score in {text!r}")
    return float(match.group(0))
