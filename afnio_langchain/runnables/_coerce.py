"""The one coercion of Runnable inputs to Variables, at the LangChain boundary.

Variables pass through (keeping the graph); text, numbers and chat messages become
non-trainable Variables with the given role; a list is a minibatch of them.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import BaseMessage

from afnio_langchain.autodiff import Variable
from afnio_langchain.models import message_text
from afnio_langchain.runnables._text_lambda import LinkedText


def as_variable(value: Any, role: str, where: str) -> Variable:
    """One input value as a Variable.

    Raises:
        TypeError: ``value`` is none of these; the message names ``where``.

    Example:
        >>> from langchain_core.messages import AIMessage
        >>> from afnio_langchain.runnables import as_variable
        >>> as_variable("Paris", "answer", "input 'q'")
        Variable(data='Paris', role='answer')
        >>> as_variable(AIMessage("Hi"), "text", "parser").role
        'ai message'
    """
    if isinstance(value, Variable):
        return value
    if isinstance(value, LinkedText):  # a Variable's text, handed to a chain's function
        return value.variable
    if isinstance(value, str):
        return Variable(value, role=role)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Variable(str(value), role=role)
    if isinstance(value, BaseMessage):
        return Variable(message_text(value), role=f"{value.type} message")
    raise TypeError(
        f"{where} takes a Variable or text: a value must be a Variable, a str, a number or a "
        f"chat message (a list of them is a minibatch), got {type(value).__name__}; pick or "
        "convert the value first, e.g. with itemgetter or a RunnableLambda"
    )


def as_variables(value: Any, role: str, where: str) -> Variable | list[Variable]:
    """An input that may be a minibatch: a list gives a list of Variables."""
    if isinstance(value, list):
        return [as_variable(item, role, where) for item in value]
    return as_variable(value, role, where)
