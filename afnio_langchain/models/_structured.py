"""Structured replies: ask for a JSON object with fixed string fields, parse it tolerantly,
and re-ask a bounded number of times. The one home of JSON repair in the package, and
of the one acceptance rule for gradients and proposals:

- the reply is complete: the model ended it (not ``max_tokens``, not a content filter,
  not a stream cut short);
- it is a JSON object with exactly the requested keys (an unexpected key is never
  mapped onto an asked one);
- each value is a string, holding no U+FFFD (the mark of undecodable bytes);
- a gradient (``purpose="backward"``) holds text: an empty or blank one says nothing.

Anything else is shown back to the model with what was wrong, a bounded number of
times, then fails with :class:`StructuredOutputError` (counted as a failure of that
purpose in usage). The keys read come from the caller's ``fields`` only: text in a
request (data) never decides them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from afnio_langchain.models._protocol import Completion, JsonSchema, Message, ModelClient
from afnio_langchain.models._secrets import excerpt, redact
from afnio_langchain.models._usage import record_usage

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
            redact(f"{where}: no usable reply after {len(replies)} attempt(s) ({reason}). ")
            + f"Last reply: {excerpt(last, 500)!r}"
        )


def json_instruction(keys: Sequence[str]) -> str:
    """The sentence that tells a model which keys to answer with (parsed back by fakes)."""
    return JSON_INSTRUCTION.format(keys=", ".join(json.dumps(k) for k in keys))


def required_keys_in(text: str) -> list[str] | None:
    """The keys a request asks for, read from its last :func:`json_instruction` line.

    For fakes and test servers, which see only the request's text. The package itself
    never reads keys from text: :func:`request_fields` reads the keys it was given."""
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
        value = _loads(body)
        if value is None and "," in body:  # the repair only when the plain parse fails
            value = _loads(_without_trailing_commas(body))
        if isinstance(value, dict):
            return value
    raise ValueError("the reply contains no JSON object")


_LENIENT_DECODER = json.JSONDecoder(strict=False)
"""``json.loads(text, strict=False)`` builds this decoder on every call; it holds no state."""


def _loads(text: str) -> Any:
    try:
        return _LENIENT_DECODER.decode(text)
    except json.JSONDecodeError:
        return None


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


def extract_fields(
    text: str, keys: Sequence[str], *, numbers: bool = False, require_text: bool = False
) -> dict[str, str]:
    """Read string fields ``keys`` from a reply: a JSON object (code fences, prose
    around it and trailing commas are tolerated) with exactly these keys, each a
    string without U+FFFD. With ``numbers`` (a judge's verdict), a JSON number or
    boolean is also accepted, as its JSON text (``7``, ``true``). With
    ``require_text`` (a gradient), an empty or whitespace-only value is refused.

    Raises:
        ValueError: The reply is not such an object; says what is wrong.

    Example:
        >>> from afnio_langchain.models._structured import extract_fields
        >>> extract_fields('{"var_1": "Be brief."}', ["var_1"])
        {'var_1': 'Be brief.'}
        >>> extract_fields('{"var_1": "  "}', ["var_1"], require_text=True)
        Traceback (most recent call last):
        ...
        ValueError: the value of 'var_1' is empty: give the feedback text
    """
    try:
        data = parse_json_object(text)
    except ValueError:
        if "{" in text:
            raise ValueError("the reply is broken JSON (cut off or malformed)") from None
        raise
    got = sorted(data)
    missing = [k for k in keys if k not in data]
    extra = [k for k in got if k not in keys]
    if missing or extra:
        raise ValueError(
            f"expected exactly the keys {list(keys)}, got {got}"
            + (f" (missing {missing})" if missing else "")
        )
    out = {}
    for key in keys:
        value = data[key]
        if numbers and isinstance(value, (int, float)):
            value = json.dumps(value)
        if not isinstance(value, str):
            raise ValueError(f"the value of {key!r} must be a string, got {_json_type(value)}")
        if require_text and not value.strip():
            raise ValueError(f"the value of {key!r} is empty: give the feedback text")
        if "\ufffd" in value:
            raise ValueError(
                f"the value of {key!r} holds U+FFFD (bytes that could not be decoded)"
            )
        if _SURROGATE.search(value):
            raise ValueError(f"the value of {key!r} holds a lone surrogate escape (not text)")
        if _is_reply_again(value, keys):
            raise ValueError(
                f"the value of {key!r} is the JSON reply again, encoded as a string; give "
                "the text itself"
            )
        out[key] = value
    return out


_SURROGATE = re.compile("[\ud800-\udfff]")
"""A UTF-16 surrogate on its own: a JSON ``\\ud800`` escape decodes to one, and no
text holds one (it cannot even be encoded as UTF-8 to send on)."""


def _is_reply_again(value: str, keys: Sequence[str]) -> bool:
    """Whether ``value`` is itself a JSON object with the reply's keys (a model that
    encoded its reply twice): written into a prompt, it would be JSON, not the text."""
    stripped = value.strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        return False
    inner = _loads(stripped)
    return isinstance(inner, dict) and any(k in inner for k in keys)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


def incomplete_reason(completion: Completion) -> str | None:
    """Why a reply is not complete (None when it is): cut by the token limit, no
    answer at all (a refusal, tool calls alone), or ended for another reason than the
    model's own stop."""
    if completion.cut_off:
        return "the reply was cut off by the token limit (max_tokens) before it ended"
    if completion.unanswered is not None:
        return f"the reply holds no answer ({completion.unanswered})"
    if not completion.complete:
        return f"the reply did not end normally (finish reason {completion.finish_reason!r})"
    return None


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

    The last user message should end with :func:`json_instruction`. A reply counts
    only when it is complete and a JSON object with exactly these keys and string
    values (see the module doc); an unusable reply is shown back to the model with
    what was wrong, up to ``attempts`` calls in all. A judge's verdict
    (``purpose="judge"``) may give a score as a JSON number; a gradient
    (``purpose="backward"``) must not be blank.

    Raises:
        StructuredOutputError: Every attempt was unusable; says ``where`` and what came
            back. Usage counts it as one failure of ``purpose``: each attempt was an
            answered call, but the request as a whole failed for good.
    """
    keys = list(fields)
    schema = fields_schema(schema_name, fields)
    conversation = list(messages)
    replies: list[str] = []
    reason = ""
    numbers, require_text = purpose == "judge", purpose == "backward"
    for _ in range(max(1, attempts)):
        try:
            completion = await client.acomplete(
                conversation, purpose=purpose, json_schema=schema, **params
            )
        except StructuredOutputError:  # a client that parses replies itself (DSPy's adapter)
            _count_failure(client, purpose)
            raise
        replies.append(completion.text)
        try:
            problem = incomplete_reason(completion)
            if problem is not None:
                raise ValueError(problem)
            return extract_fields(
                completion.text, keys, numbers=numbers, require_text=require_text
            )
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
    _count_failure(client, purpose)
    raise StructuredOutputError(where, reason, replies)


def _count_failure(client: ModelClient, purpose: str) -> None:
    """A structured request that failed for good, in usage: the client counted each of
    its calls as answered, and only this module knows that none was usable."""
    record_usage(getattr(client, "model_name", "unknown"), purpose, calls=0, failures=1)


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
