"""Turning whatever the user passes as a model into a :class:`ModelClient`."""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any

from afnio_langchain.models._protocol import BaseModelClient, ModelClient

# id(obj) -> (reference to obj, adapters by model name). Chat models are unhashable
# pydantic objects, so a WeakKeyDictionary cannot hold them: entries are keyed by id and
# dropped by a weakref callback when the object is collected.
_CACHE: dict[int, tuple[Any, dict[Any, ModelClient]]] = {}
_LOCK = threading.Lock()

ACCEPTED = (
    "a LangChain chat model (BaseChatModel), an openai.OpenAI/AsyncOpenAI client with "
    "model='NAME', a dspy.LM, or an object with `model_name` and `async acomplete(...)`"
)


_CLIENT_CLASSES: set[type] = set()
"""Classes seen to be BaseModelClients (an ABC: its isinstance check runs Python code)."""
_CHAT_MODEL_CLASSES: set[type] = set()
"""LangChain chat-model classes with no ``acomplete`` of their own: never ModelClients.
Passed as the model of every call (a chain's stages, the backward model, the
optimizer), they would otherwise pay ``typing``'s Protocol check, about 30 µs, per
model call (``benchmarks/``)."""


def _is_model_client(obj: Any) -> bool:
    kind = type(obj)
    if kind in _CLIENT_CLASSES:
        return True
    if kind in _CHAT_MODEL_CLASSES:
        return False
    if isinstance(obj, BaseModelClient):  # the common case, without the slow Protocol check
        _CLIENT_CLASSES.add(kind)
        return True
    if _is_plain_chat_model_class(kind):
        _CHAT_MODEL_CLASSES.add(kind)
        return False
    return isinstance(obj, ModelClient) and callable(getattr(obj, "acomplete", None))


def _is_plain_chat_model_class(kind: type) -> bool:
    from langchain_core.language_models import BaseChatModel

    return issubclass(kind, BaseChatModel) and not any(
        "acomplete" in k.__dict__ for k in kind.__mro__
    )


@functools.cache
def _openai_client_classes() -> tuple[type, ...]:
    import openai

    return (openai.OpenAI, openai.AsyncOpenAI)


def is_openai_client(obj: Any) -> bool:
    """An ``openai.OpenAI``/``AsyncOpenAI`` client (which needs a model name to be used)."""
    return isinstance(obj, _openai_client_classes())


def resolve_call_model(
    model: Any, completion_args: dict[str, Any], backward_model: Any = None
) -> tuple[ModelClient, Any]:
    """The clients for one op call: ``model`` as a :class:`ModelClient`, and the
    backward model to keep for the op's backward pass.

    An ``openai`` client has no model of its own: the op call names it with
    ``model="NAME"`` among the completion arguments, which this removes from
    ``completion_args`` (so it is not sent twice), and an ``openai`` backward model is
    given the same name. Any other model leaves ``completion_args`` as it is.

    Example:
        >>> import openai
        >>> from afnio_langchain.models import resolve_call_model
        >>> args = {"model": "gpt-4o-mini", "temperature": 0}
        >>> client, _ = resolve_call_model(openai.AsyncOpenAI(api_key="sk-test"), args)
        >>> client.model_name, args
        ('gpt-4o-mini', {'temperature': 0})
    """
    if type(model) in _CLIENT_CLASSES:  # the usual model: a client already
        return model, backward_model
    if not is_openai_client(model):
        return as_model_client(model), backward_model
    name = completion_args.pop("model", None)
    client = as_model_client(model, name)
    if name is not None and is_openai_client(backward_model):
        backward_model = as_model_client(backward_model, name)
    return client, backward_model


def _is_dspy_lm(obj: Any) -> bool:
    return any(cls.__module__.startswith("dspy.") for cls in type(obj).__mro__)


def _build(obj: Any, model: str | None) -> ModelClient:
    from langchain_core.language_models import BaseChatModel

    if isinstance(obj, BaseChatModel):
        from afnio_langchain.models._langchain_adapter import LangChainChatModelClient

        return LangChainChatModelClient(obj)
    if is_openai_client(obj):
        from afnio_langchain.models._openai_adapter import OpenAIClient

        if model is None:
            raise TypeError(
                "an openai client needs a model name: wrap it, "
                "OpenAIClient(client, model='gpt-4o-mini') (from afnio_langchain.models), which "
                "works wherever a model is taken; or name it beside the client: "
                "model='gpt-4o-mini' in a ChatCompletion call or a ChatCompletionRunnable's "
                "completion arguments, model_name='gpt-4o-mini' in set_backward_model and TGD"
            )
        return OpenAIClient(obj, model=model)
    if _is_dspy_lm(obj):
        from afnio_langchain.models._dspy_adapter import DSPyLMClient

        return DSPyLMClient(obj)
    raise TypeError(f"expected {ACCEPTED}; got {type(obj).__name__}")


def _referent(ref: Any) -> Any:
    return ref() if isinstance(ref, weakref.ref) else ref


def as_model_client(obj: Any, model: str | None = None) -> ModelClient:
    """Return a :class:`ModelClient` for ``obj``, reusing the adapter made for it before.

    Adapters of openai clients and DSPy LMs are reused (they remember what an endpoint
    supports, such as its JSON mode); LangChain chat models get a fresh, cheap adapter.

    Args:
        obj: A chat model, client or LM (see ``ACCEPTED``).
        model: The model name, needed for ``openai`` clients.

    Raises:
        TypeError: ``obj`` is none of the accepted kinds; the message lists them.

    Example:
        >>> from langchain_core.language_models import FakeListChatModel
        >>> from afnio_langchain.models import as_model_client
        >>> chat = FakeListChatModel(responses=["ok"])
        >>> as_model_client(chat).model_name
        'fake-list-chat-model'
    """
    if obj is None:
        raise TypeError(f"no model given: expected {ACCEPTED}")
    if _is_model_client(obj) and model is None:
        return obj
    from langchain_core.language_models import BaseChatModel

    if isinstance(obj, BaseChatModel):
        # A cached adapter would keep the model alive forever (it references it);
        # adapters are cheap and what they learn is remembered per model object.
        return _build(obj, model)
    with _LOCK:
        key = id(obj)
        entry = _CACHE.get(key)
        if entry is None or _referent(entry[0]) is not obj:
            try:
                ref: Any = weakref.ref(obj, lambda _r, key=key, cache=_CACHE: cache.pop(key, None))
            except TypeError:  # not weak-referenceable: keep it alive with its adapter
                ref = obj
            entry = _CACHE[key] = (ref, {})
        per_obj = entry[1]
        client = per_obj.get(model)
        if client is None:
            client = per_obj[model] = _build(obj, model)
        return client
