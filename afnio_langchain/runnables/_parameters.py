"""``parameters(runnable)``: the trainable Variables held anywhere in a LangChain runnable."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from afnio_langchain.autodiff import Variable
from afnio_langchain.runnables._children import children


def parameters(runnable: Any) -> list[Variable]:
    """The trainable Variables (``requires_grad=True``) inside ``runnable``, each once, in
    a stable order (the order the pipeline runs its steps).

    Walks sequences, parallels, ``RunnablePassthrough.assign``, bindings
    (``with_config``, ``with_retry``, ``bind``), fallbacks, branches, configurable
    runnables, routers, functions that close over runnables, and any object with its own
    ``parameters()`` method (this package's runnables). A ``Variable``, or a list or dict
    of runnables and Variables, is accepted too.

    Example:
        >>> from langchain_core.runnables import RunnableParallel
        >>> from afnio_langchain import ChatCompletionRunnable, Variable, parameters
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> model = ScriptedChatModel(forward="ok")
        >>> a = Variable("Summarize.", role="system prompt", requires_grad=True)
        >>> b = Variable("Critique.", role="system prompt", requires_grad=True)
        >>> step_a = ChatCompletionRunnable(model=model, messages=[("system", a), ("user", "{text}")])
        >>> step_b = ChatCompletionRunnable(model=model, messages=[("system", b), ("user", "{text}")])
        >>> chain = RunnableParallel(x=step_a, y=step_b).with_retry() | step_a
        >>> parameters(chain) == [a, b]
        True
    """
    found: dict[int, Variable] = {}
    seen: set[int] = set()
    _collect(runnable, found, seen)
    return list(found.values())


def _collect(obj: Any, found: dict[int, Variable], seen: set[int]) -> None:
    if isinstance(obj, Variable):
        if obj.requires_grad:
            found.setdefault(id(obj), obj)
        return
    if id(obj) in seen:
        return
    seen.add(id(obj))
    # Asked of the class: bindings and fallbacks forward unknown attributes to what they
    # wrap, which would hide the rest of their structure.
    if callable(getattr(type(obj), "parameters", None)) and not isinstance(obj, type):
        for variable in obj.parameters():
            if isinstance(variable, Variable) and variable.requires_grad:
                found.setdefault(id(variable), variable)
        return
    if isinstance(obj, Mapping):
        items: Iterable[Any] = obj.values()
    elif isinstance(obj, (list, tuple)):
        items = obj
    else:
        items = children(obj)
    for child in items:
        _collect(child, found, seen)
