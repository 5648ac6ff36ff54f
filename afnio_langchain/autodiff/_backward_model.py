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


def set_backward_model_client(
    model_path: Any = "openai/gpt-4o",
    client_args: dict[str, Any] | None = None,
    completion_args: dict[str, Any] | None = None,
) -> None:
    """afnio's spelling of :func:`set_backward_model`: set the model that writes
    gradients, from a ``"provider/model"`` path or any model object.

    ``"openai/NAME"`` builds an ``openai`` client from ``client_args`` (``api_key``,
    else ``OPENAI_API_KEY``; ``base_url`` for any OpenAI-compatible endpoint) and sends
    ``completion_args`` (``temperature``...) with every backward call. Nothing is sent
    anywhere until a backward pass runs, and then only to that endpoint. Any other
    model (a LangChain chat model, an ``openai`` client with ``completion_args={"model":
    NAME}``, a :class:`~afnio_langchain.models.ModelClient`) is used as it is.

    Raises:
        ValueError: A path that is not ``"provider/model"``, or a provider other than
            ``openai`` (use a LangChain chat model for the others).
        TypeError: ``completion_args`` for a model that cannot take them (set them on
            the chat model itself).

    Example:
        >>> from afnio_langchain import get_backward_model_client, set_backward_model_client
        >>> set_backward_model_client("openai/gpt-4o", client_args={
        ...     "base_url": "http://127.0.0.1:8000/v1", "api_key": "local"})
        >>> get_backward_model_client().model_name
        'gpt-4o'
        >>> set_backward_model(None)
    """
    completion_args = dict(completion_args or {})
    if not isinstance(model_path, str):
        name = completion_args.pop("model", None)
        from afnio_langchain.models import is_openai_client

        if is_openai_client(model_path):
            from afnio_langchain.models import OpenAIClient

            if name is None:
                raise TypeError("an openai client needs completion_args={'model': 'NAME'}")
            set_backward_model(OpenAIClient(model_path, model=name, **completion_args))
            return
        if completion_args or name is not None:
            raise TypeError(
                "completion_args apply to 'openai/NAME' paths and openai clients; set them "
                "on the chat model itself (e.g. ChatOpenAI(temperature=0))"
            )
        set_backward_model(model_path)
        return
    provider, sep, name = model_path.partition("/")
    if not sep or not provider or not name:
        raise ValueError(f"model_path must be 'provider/model' (e.g. 'openai/gpt-4o'), got {model_path!r}")
    if provider != "openai":
        raise ValueError(
            f"unsupported provider {provider!r}: 'openai/NAME' (any OpenAI-compatible endpoint "
            "via client_args={'base_url': ...}) or pass any LangChain chat model instead"
        )
    from afnio_langchain.models import OpenAIClient
    from afnio_langchain.models.openai import AsyncOpenAI

    name = completion_args.pop("model", name)
    set_backward_model(OpenAIClient(AsyncOpenAI(**dict(client_args or {})), model=name, **completion_args))


def get_backward_model_client() -> ModelClient:
    """afnio's spelling of :func:`get_backward_model`: the backward model in force.

    Raises:
        RuntimeError: None is set.
    """
    model = get_backward_model()
    if model is None:
        raise RuntimeError(
            "No global model client set for backward pass. Call "
            "afnio_langchain.set_backward_model_client(...) (or set_backward_model) first."
        )
    return model
