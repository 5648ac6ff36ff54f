"""The process default model for backward calls."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from typing import Any

from afnio_langchain.models import ModelClient, as_model_client

_LOCK = threading.Lock()
_BACKWARD_MODEL: ModelClient | None = None
# A scoped override (``use_backward_model``): follows threads and tasks LangChain starts,
# and leaves other concurrent runs (two ``fit`` calls in two threads) alone.
_SCOPED_MODEL: contextvars.ContextVar[ModelClient | None] = contextvars.ContextVar(
    "afnio_backward_model", default=None
)


def set_backward_model(model: Any, *, model_name: str | None = None) -> None:
    """Set the model that writes textual gradients when an op was given none.

    Args:
        model: A LangChain chat model, an openai client (with ``model_name``), a
            ``dspy.LM`` or a :class:`~afnio_langchain.models.ModelClient`; None unsets.
        model_name: The model name, needed with an ``openai`` client.

    Example:
        >>> from afnio_langchain import set_backward_model
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> set_backward_model(ScriptedChatModel(feedback="Be more specific."))
        >>> set_backward_model(None)
    """
    global _BACKWARD_MODEL
    client = None if model is None else as_model_client(model, model_name)
    with _LOCK:
        _BACKWARD_MODEL = client


def get_backward_model() -> ModelClient | None:
    """The backward model in force here: the one of an enclosing
    :func:`use_backward_model` block, else the process default, else None."""
    return _SCOPED_MODEL.get() or _BACKWARD_MODEL


@contextlib.contextmanager
def use_backward_model(model: Any, *, model_name: str | None = None) -> Iterator[None]:
    """Use ``model`` for backward calls inside the block only (in this context and the
    threads and tasks started from it), without touching the process default.

    Example:
        >>> from afnio_langchain import get_backward_model, use_backward_model
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> with use_backward_model(ScriptedChatModel(feedback="Be specific.")):
        ...     get_backward_model() is not None
        True
        >>> get_backward_model() is None
        True
    """
    token = _SCOPED_MODEL.set(as_model_client(model, model_name))
    try:
        yield
    finally:
        _SCOPED_MODEL.reset(token)


def resolve_backward_model(model: Any | None, where: str) -> ModelClient:
    """The backward model for an op: its own, else the process default.

    Raises:
        RuntimeError: Neither is set; the message names the fix.
    """
    if model is not None:
        return as_model_client(model)
    default = get_backward_model()
    if default is None:
        raise RuntimeError(
            f"{where} needs a model to write feedback, and none is set: call "
            "afnio_langchain.set_backward_model(chat_model) once, or pass "
            "backward_model=... to the operation"
        )
    return default
