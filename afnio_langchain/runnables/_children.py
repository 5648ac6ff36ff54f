"""The child runnables of LangChain's composite runnables, found without running them.

One home for "what is inside this runnable": :func:`parameters` walks it to collect
trainable Variables and ``make_trainable`` uses it to find prompt + model pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from langchain_core.runnables import Runnable
from langchain_core.runnables.base import (
    RunnableBindingBase,
    RunnableEachBase,
    RunnableLambda,
    RunnableParallel,
    RunnableSequence,
)
from langchain_core.runnables.branch import RunnableBranch
from langchain_core.runnables.configurable import (
    DynamicRunnable,
    RunnableConfigurableAlternatives,
)
from langchain_core.runnables.fallbacks import RunnableWithFallbacks
from langchain_core.runnables.passthrough import RunnableAssign
from langchain_core.runnables.router import RouterRunnable
from pydantic import BaseModel

from afnio_langchain.runnables._pipeline import sequence_of


def children(runnable: Any) -> Iterator[Any]:
    """The runnables (and, for unknown pydantic runnables, Variables) directly inside
    ``runnable``, in their order of execution.

    Example:
        >>> from operator import itemgetter
        >>> from langchain_core.runnables import RunnableLambda
        >>> from afnio_langchain.runnables._children import children
        >>> a, b = RunnableLambda(lambda x: x), RunnableLambda(itemgetter("q"))
        >>> list(children(a | b)) == [a, b]
        True
    """
    if isinstance(runnable, RunnableSequence):
        yield from runnable.steps
    elif isinstance(runnable, RunnableParallel):
        yield from runnable.steps__.values()
    elif isinstance(runnable, RunnableAssign):
        yield runnable.mapper
    elif isinstance(runnable, (RunnableBindingBase, RunnableEachBase)):
        yield runnable.bound
    elif isinstance(runnable, RunnableWithFallbacks):
        yield runnable.runnable
        yield from runnable.fallbacks
    elif isinstance(runnable, RunnableBranch):
        for condition, branch in runnable.branches:
            yield condition
            yield branch
        yield runnable.default
    elif isinstance(runnable, RunnableConfigurableAlternatives):
        yield runnable.default
        yield from (alt for alt in runnable.alternatives.values() if isinstance(alt, Runnable))
    elif isinstance(runnable, DynamicRunnable):
        yield runnable.default
    elif isinstance(runnable, RouterRunnable):
        yield from runnable.runnables.values()
    elif isinstance(runnable, RunnableLambda):
        # Runnables the function closes over (LangChain's own dependency analysis).
        try:
            yield from runnable.deps
        except Exception:  # noqa: BLE001 - source inspection can fail on builtins
            return
    elif isinstance(runnable, Runnable) and isinstance(runnable, BaseModel):
        yield from _field_values(runnable)


def _field_values(model: BaseModel) -> Iterator[Any]:
    """Runnables and Variables held in the fields of a runnable we do not know."""
    from afnio_langchain.autodiff import Variable

    for name in type(model).model_fields:
        value = getattr(model, name, None)
        values = value.values() if isinstance(value, Mapping) else value
        if isinstance(values, (list, tuple)) or isinstance(value, Mapping):
            for item in values:
                if isinstance(item, (Runnable, Variable)):
                    yield item
        elif isinstance(value, (Runnable, Variable)):
            yield value


def replace_children(runnable: Any, fn: Callable[[Any], Any]) -> Any:
    """A copy of ``runnable`` whose direct child runnables are replaced by ``fn(child)``;
    ``runnable`` itself when nothing changed or it has no children we can rebuild.

    Example:
        >>> from langchain_core.runnables import RunnableLambda
        >>> from afnio_langchain.runnables._children import replace_children
        >>> a, b, c = (RunnableLambda(lambda x, k=k: x + k) for k in ("a", "b", "c"))
        >>> replace_children(a | b, lambda step: c if step is b else step).invoke("")
        'ac'
    """
    if isinstance(runnable, RunnableSequence):
        steps = [fn(s) for s in runnable.steps]
        if all(new is old for new, old in zip(steps, runnable.steps)):
            return runnable
        return sequence_of(steps, runnable.name)
    updates: dict[str, Any] = {}
    if isinstance(runnable, RunnableParallel):
        updates["steps__"] = {k: fn(v) for k, v in runnable.steps__.items()}
    elif isinstance(runnable, RunnableAssign):
        updates["mapper"] = fn(runnable.mapper)
    elif isinstance(runnable, (RunnableBindingBase, RunnableEachBase)):
        updates["bound"] = fn(runnable.bound)
    elif isinstance(runnable, RunnableWithFallbacks):
        updates["runnable"] = fn(runnable.runnable)
        updates["fallbacks"] = [fn(f) for f in runnable.fallbacks]
    elif isinstance(runnable, RunnableBranch):
        updates["branches"] = [(fn(c), fn(b)) for c, b in runnable.branches]
        updates["default"] = fn(runnable.default)
    elif isinstance(runnable, RunnableConfigurableAlternatives):
        updates["default"] = fn(runnable.default)
        updates["alternatives"] = {
            k: fn(v) if isinstance(v, Runnable) else v for k, v in runnable.alternatives.items()
        }
    elif isinstance(runnable, DynamicRunnable):
        updates["default"] = fn(runnable.default)
    elif isinstance(runnable, RouterRunnable):
        updates["runnables"] = {k: fn(v) for k, v in runnable.runnables.items()}
    if not updates or all(_same(getattr(runnable, k), v) for k, v in updates.items()):
        return runnable
    return runnable.model_copy(update=updates)


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, Mapping):
        return old.keys() == new.keys() and all(_same(old[k], new[k]) for k in old)
    if isinstance(old, (list, tuple)):
        return len(old) == len(new) and all(_same(a, b) for a, b in zip(old, new))
    return old is new
