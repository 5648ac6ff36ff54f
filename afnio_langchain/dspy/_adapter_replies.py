"""Offline DSPy programs: a ``ScriptedChatModel`` script that answers DSPy's adapters.

A DSPy program run on :func:`~afnio_langchain.dspy.as_dspy_lm` over a
:class:`~afnio_langchain.testing.ScriptedChatModel` needs replies in its adapter's
format: ``[[ ## field ## ]]`` sections (``ChatAdapter``, DSPy's default) or a JSON object
(``JSONAdapter``, used by GEPA's reflection). :func:`chat_adapter_reply` builds a script
that reads which output fields a request asks for, and in which format, and answers
each one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping

FieldValue = str | Callable[[str], str]
"""A field's scripted value: fixed text, or a function of the request's text."""

_CHAT_LINE = re.compile(r"^Respond with the corresponding output fields.*$", re.M)
_CHAT_FIELD = re.compile(r"\[\[ ## (\w+) ## \]\]")
_JSON_LINE = re.compile(r"^Respond with a JSON object in the following order of fields: .*$", re.M)
_JSON_FIELD = re.compile(r"`(\w+)`")


def requested_fields(request_text: str) -> tuple[str, list[str]]:
    """The adapter format (``"chat"`` or ``"json"``) and the output fields a DSPy
    request asks for, in order, read from its last "Respond with..." line
    (``("", [])`` when there is none)."""
    found = [(m.start(), "chat", m.group(0)) for m in _CHAT_LINE.finditer(request_text)]
    found += [(m.start(), "json", m.group(0)) for m in _JSON_LINE.finditer(request_text)]
    if not found:
        return "", []
    _, kind, line = max(found)
    pattern = _CHAT_FIELD if kind == "chat" else _JSON_FIELD
    return kind, [name for name in pattern.findall(line) if name != "completed"]


def chat_adapter_reply(values: Mapping[str, FieldValue]) -> Callable[[str], str]:
    """A ``ScriptedChatModel`` script answering DSPy ChatAdapter and JSONAdapter requests.

    Args:
        values: Output field name -> its value: a string, or a callable taking the
            request's full text (system, demos and user messages) and returning it.

    Returns:
        A callable from the request's text to a reply: one ``[[ ## field ## ]]``
        section per requested field and the ``[[ ## completed ## ]]`` marker for a
        ChatAdapter request, a JSON object for a JSONAdapter request.

    Raises:
        ValueError: (when called) the request asks for a field ``values`` lacks, or
            is not a ChatAdapter or JSONAdapter request.

    Example:
        >>> import dspy
        >>> from afnio_langchain.dspy import as_dspy_lm
        >>> from afnio_langchain.dspy import chat_adapter_reply
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> script = chat_adapter_reply({
        ...     "answer": lambda text: "Rome" if "Italy" in text else "unknown"})
        >>> lm = as_dspy_lm(ScriptedChatModel(forward=script))
        >>> with dspy.context(lm=lm):
        ...     dspy.Predict("country -> answer")(country="Italy").answer
        'Rome'
    """
    if not isinstance(values, Mapping):
        raise TypeError(f"values must be a dict of field -> value, got {type(values).__name__}")
    for name, value in values.items():
        if not (isinstance(value, str) or callable(value)):
            raise TypeError(f"the value of field {name!r} must be a str or a callable")
    scripted = dict(values)

    def reply(request_text: str) -> str:
        kind, fields = requested_fields(request_text)
        if not fields:
            raise ValueError(
                "not a DSPy ChatAdapter or JSONAdapter request: it asks for no output fields"
            )
        missing = [f for f in fields if f not in scripted]
        if missing:
            raise ValueError(f"no scripted value for the output field(s) {missing}")
        answers = {}
        for name in fields:
            value = scripted[name]
            answers[name] = value(request_text) if callable(value) else value
        if kind == "json":
            return json.dumps(answers, ensure_ascii=False)
        sections = [f"[[ ## {name} ## ]]\n{text}" for name, text in answers.items()]
        return "\n\n".join([*sections, "[[ ## completed ## ]]"])

    return reply


__all__ = ["FieldValue", "chat_adapter_reply", "requested_fields"]
