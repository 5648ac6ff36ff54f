"""Message forms accepted by the Runnable face, and template syntax conversion.

Messages may be given in the seed form (``{"role": ..., "content": [Variable, ...]}``)
or the LangChain form (``("system", Variable | str)`` tuples, message objects);
both become the seed form. (Converting LangChain f-string templates to and from this
package's template syntax is part of the one template grammar,
:mod:`afnio_langchain.autodiff._templating`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage

from afnio_langchain.autodiff import Variable, escape_fields

_ROLE_ALIASES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
}


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
