"""Message forms accepted by the Runnable face, and template syntax conversion.

Messages may be given in the seed form (``{"role": ..., "content": [Variable, ...]}``)
or the LangChain form (``("system", Variable | str)`` tuples, message objects);
both become the seed form. LangChain f-string templates (``{{`` for a literal brace)
convert to and from this package's template syntax, where only ``{identifier}`` is a
field and other braces are literal.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage

from afnio_langchain.autodiff import Variable

_ROLE_ALIASES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FIELD_LIKE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TEMPLATE_TOKEN = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _role(role: Any, where: str) -> str:
    if not isinstance(role, str) or role not in _ROLE_ALIASES:
        raise ValueError(f"{where}: unknown role {role!r}; expected one of {sorted(_ROLE_ALIASES)}")
    return _ROLE_ALIASES[role]


def _content(content: Any, where: str) -> list[Variable | str]:
    parts = list(content) if isinstance(content, (list, tuple)) else [content]
    for part in parts:
        if not isinstance(part, (Variable, str)):
            raise TypeError(
                f"{where}: content must be a Variable, a str, or a list of them, "
                f"got {type(part).__name__}"
            )
    return parts


def normalize_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """Seed-form or LangChain-form messages -> seed form.

    Strings are templates in this package's syntax (``{name}`` fields); Variables
    (trainable parts) are kept as they are.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.runnables._messages import normalize_messages
        >>> system = Variable("Be terse.", role="system instruction", requires_grad=True)
        >>> normalize_messages([("system", system), ("human", "{question}")])[1]
        {'role': 'user', 'content': ['{question}']}
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise TypeError("messages must be a non-empty list of messages")
    out = []
    for k, message in enumerate(messages):
        where = f"message {k}"
        if isinstance(message, dict):
            if "role" not in message or "content" not in message:
                raise TypeError(f"{where}: a dict message needs 'role' and 'content'")
            out.append({"role": _role(message["role"], where), "content": _content(message["content"], where)})
        elif isinstance(message, tuple) and len(message) == 2:
            out.append({"role": _role(message[0], where), "content": _content(message[1], where)})
        elif isinstance(message, BaseMessage):
            if not isinstance(message.content, str):
                raise TypeError(f"{where}: only text message content is supported")
            # A message object is literal text: escape what would look like a field.
            out.append({"role": _role(message.type, where), "content": [escape_fields(message.content)]})
        else:
            raise TypeError(
                f"{where}: expected a {{'role', 'content'}} dict, a (role, content) tuple or a "
                f"LangChain message, got {type(message).__name__}"
            )
    return out


def escape_fields(text: str) -> str:
    """Make every ``{identifier}`` in ``text`` literal in this package's syntax."""
    return _FIELD_LIKE.sub(lambda m: "{{" + m.group(1) + "}}", text)


def from_fstring(template: str) -> str:
    """A LangChain f-string template in this package's syntax.

    Example:
        >>> from afnio_langchain.runnables._messages import from_fstring
        >>> from_fstring('Answer {question} as {{"answer": ...}}, not {{question}}')
        'Answer {question} as {"answer": ...}, not {{question}}'
    """
    out: list[str] = []
    emitted = 0
    literal_text: list[str] = []  # literal pieces between fields (Formatter splits at "{{")
    for literal, field, spec, conversion in string.Formatter().parse(template):
        literal_text.append(literal)
        if field is None:
            continue
        if not _IDENT.fullmatch(field) or spec or conversion:
            raise ValueError(
                f"template field {{{field}}} is not a plain variable name; only {{name}} "
                "fields can be converted"
            )
        out.append(escape_fields("".join(literal_text)))
        literal_text = []
        out.append("{" + field + "}")
        emitted += 1
    out.append(escape_fields("".join(literal_text)))
    converted = "".join(out)
    if sum(1 for m in _TEMPLATE_TOKEN.finditer(converted) if m.group(2)) != emitted:
        # A literal "{" right before a field and "}" right after it would read as "{{name}}".
        raise ValueError(
            f"template {template!r} puts literal braces directly around a field "
            "('{{{name}}}'); put a character between the brace and the field"
        )
    return converted


def to_fstring(template: str, fields: Sequence[str]) -> str:
    """This package's template syntax -> a LangChain f-string template whose only
    fields are ``fields``; every other brace (learned text included) becomes literal.

    Example:
        >>> from afnio_langchain.runnables._messages import to_fstring
        >>> to_fstring('Use {topic}. Reply as {"a": 1} {{literal}}', ["topic"])
        'Use {topic}. Reply as {{"a": 1}} {{literal}}'
    """
    allowed = set(fields)
    out, pos = [], 0
    for match in _TEMPLATE_TOKEN.finditer(template):
        out.append(_escape_braces(template[pos : match.start()]))
        if match.group(2) and match.group(2) in allowed:
            out.append("{" + match.group(2) + "}")
        else:
            out.append("{{" + (match.group(1) or match.group(2)) + "}}")
        pos = match.end()
    out.append(_escape_braces(template[pos:]))
    return "".join(out)


def _escape_braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")
