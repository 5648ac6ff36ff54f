"""Minibatch items that fail on their own: keep the others' results, say which failed.

One model call per minibatch item runs concurrently (forward and backward). When
some fail, :func:`gather_items` still waits for the rest, so their results are not
lost; the caller then either raises :class:`MinibatchError` (which names every failed
item, its error, and carries the other items' results) or, where the user asked for
it, carries on without the failed items and records them (:func:`failed_items`,
:func:`tolerating_item_failures`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import weakref
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any, TypeVar

from afnio_langchain._aio import start_each
from afnio_langchain.autodiff._variable import Variable
from afnio_langchain.models import redact

T = TypeVar("T")

ITEM_ERROR_POLICIES = ("raise", "placeholder")
"""``on_item_error`` values: raise :class:`MinibatchError`, or put a placeholder text
in the failed items' place (and record them, see :func:`failed_items`)."""

_LISTED = 5  # failed items spelled out in a message


class ItemFailureWarning(RuntimeWarning):
    """Some minibatch items failed and were replaced by a placeholder text."""


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """``"TypeName: message"``, cut to ``limit`` characters, with secrets masked."""
    text = redact(f"{type(exc).__name__}: {exc}")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class MinibatchError(RuntimeError):
    """Some items of a minibatch failed; the others completed.

    Attributes:
        where: The op (and pass) whose items failed, e.g. ``"ChatCompletion forward"``.
        size: The number of items in the minibatch.
        errors: Item index -> the exception that item raised.
        results: One entry per item: the item's result, or None where it failed.

    Example:
        >>> from afnio_langchain.autodiff import MinibatchError
        >>> error = MinibatchError("ChatCompletion forward", ["a", None, "c"],
        ...                        {1: ValueError("bad input")})
        >>> str(error)
        'ChatCompletion forward: 1 of 3 minibatch items failed: item 1: ValueError: bad input'
        >>> error.failed_items, error.results
        ([1], ['a', None, 'c'])
    """

    def __init__(
        self, where: str, results: Sequence[Any], errors: dict[int, BaseException]
    ) -> None:
        self.where = where
        self.results = list(results)
        self.errors = dict(sorted(errors.items()))
        self.size = len(self.results)
        listed = "; ".join(
            f"item {i}: {describe_error(exc)}" for i, exc in list(self.errors.items())[:_LISTED]
        )
        more = len(self.errors) - _LISTED
        if more > 0:
            listed += f"; and {more} more"
        super().__init__(
            f"{where}: {len(self.errors)} of {self.size} minibatch items failed: {listed}"
        )

    @property
    def failed_items(self) -> list[int]:
        """Indices of the failed items, in order."""
        return list(self.errors)


async def gather_items(awaitables: Sequence[Awaitable[T]]) -> tuple[list[T | None], dict[int, BaseException]]:
    """Await every item concurrently, letting all of them finish even when some fail.

    Returns ``(results, errors)``: one result per item (None where it failed) and the
    failed items' exceptions by index. Cancellation of the caller cancels every item.
    """
    tasks = await start_each(awaitables)  # each item's request leaves as soon as it is built
    try:
        await asyncio.wait(tasks) if tasks else None
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    results: list[T | None] = []
    errors: dict[int, BaseException] = {}
    for i, task in enumerate(tasks):
        if task.cancelled():
            errors[i] = asyncio.CancelledError(f"item {i} was cancelled")
            results.append(None)
            continue
        exc = task.exception()
        if exc is not None and not isinstance(exc, Exception):
            raise exc  # KeyboardInterrupt, SystemExit: never an item failure
        if exc is not None:
            errors[i] = exc
            results.append(None)
        else:
            results.append(task.result())
    return results, errors


# -- forward: items replaced by a placeholder ------------------------------------------

_FAILED: weakref.WeakKeyDictionary[Variable, dict[int, str]] = weakref.WeakKeyDictionary()


def mark_failed_items(output: Variable, errors: dict[int, BaseException]) -> None:
    """Record which items of ``output`` are placeholders, and why."""
    _FAILED[output] = {i: describe_error(exc) for i, exc in sorted(errors.items())}


def failed_items(variable: Variable) -> dict[int, str]:
    """The items of an op's output that failed and hold a placeholder, with why.

    Empty for every Variable except the output of an op run with
    ``on_item_error="placeholder"`` where some items failed.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import ChatCompletion, ItemFailureWarning, failed_items
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> def answer(text):
        ...     if "boom" in text:
        ...         raise ValueError("the model choked")
        ...     return "ok"
        >>> model = ScriptedChatModel(forward=answer)
        >>> import warnings
        >>> warnings.simplefilter("ignore", ItemFailureWarning)
        >>> out = ChatCompletion.apply(model, [{"role": "user", "content": "{q}"}],
        ...                            inputs={"q": ["a", "boom", "c"]},
        ...                            on_item_error="placeholder")
        >>> out.data, failed_items(out)
        (['ok', '', 'ok'], {1: 'ValueError: the model choked'})
    """
    if not isinstance(variable, Variable):
        raise TypeError(f"failed_items takes a Variable, got {type(variable).__name__}")
    return dict(_FAILED.get(variable, {}))


_CUT_OFF: weakref.WeakKeyDictionary[Variable, list[int]] = weakref.WeakKeyDictionary()


def mark_cut_off_items(output: Variable, items: list[int]) -> None:
    """Record which items of ``output`` the token limit cut short."""
    if items:
        _CUT_OFF[output] = sorted(items)


def cut_off_items(variable: Variable) -> list[int]:
    """The items of an op's output whose reply the token limit (``max_tokens``) cut
    short. They are kept as they came (a forward output is the user's to judge); this
    says which they are, for metrics and reports (usage counts them as ``cut_off``).

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import ChatCompletion, cut_off_items
        >>> from afnio_langchain.models import Completion
        >>> class Terse:  # a model that stops every reply at 8 characters
        ...     model_name = "terse"
        ...     async def acomplete(self, messages, *, purpose="forward", json_schema=None, **p):
        ...         text = messages[-1]["content"]
        ...         reason = "length" if len(text) > 8 else "stop"
        ...         return Completion(text[:8], self.model_name, finish_reason=reason)
        >>> out = ChatCompletion.apply(Terse(), [{"role": "user", "content": "{q}"}],
        ...                            inputs={"q": ["short", "a longer reply"]})
        >>> out.data, cut_off_items(out)
        (['short', 'a longer'], [1])
    """
    if not isinstance(variable, Variable):
        raise TypeError(f"cut_off_items takes a Variable, got {type(variable).__name__}")
    return list(_CUT_OFF.get(variable, []))


_UNFINISHED: weakref.WeakKeyDictionary[Variable, dict[int, str]] = weakref.WeakKeyDictionary()


def mark_unfinished_items(output: Variable, items: dict[int, str]) -> None:
    """Record which items of ``output`` are not the model's answer, and why."""
    if items:
        _UNFINISHED[output] = dict(sorted(items.items()))


def mark_incomplete_items(output: Variable, replies: Sequence[Any]) -> None:
    """Record the items of ``output`` whose reply (a ``Completion``; text or None
    say nothing) is not complete: cut short by the token limit (:func:`cut_off_items`)
    or not the model's answer (:func:`unfinished_items`)."""
    cut: list[int] = []
    unfinished: dict[int, str] = {}
    for i, reply in enumerate(replies):
        if getattr(reply, "complete", True):
            continue
        if reply.cut_off:
            cut.append(i)
        elif (why := reply.unfinished) is not None:
            unfinished[i] = why
    mark_cut_off_items(output, cut)
    mark_unfinished_items(output, unfinished)


def unfinished_items(variable: Variable) -> dict[int, str]:
    """The items of an op's output whose reply is not the model's answer, with why: a
    finish reason that is neither the model's own stop nor the token limit
    (``"content_filter"``, ``"tool_calls"``...), a ``"refusal"``, or tool calls and
    no text (``"tool_calls"``). They are kept as they came (often empty text), as
    cut-off replies are (:func:`cut_off_items`); this says which they are.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import ChatCompletion, unfinished_items
        >>> from afnio_langchain.models import Completion
        >>> class Filtered:  # a model whose filter stops every reply about secrets
        ...     model_name = "filtered"
        ...     async def acomplete(self, messages, *, purpose="forward", json_schema=None, **p):
        ...         if "secret" in messages[-1]["content"]:
        ...             return Completion("", self.model_name, finish_reason="content_filter")
        ...         return Completion("ok", self.model_name, finish_reason="stop")
        >>> out = ChatCompletion.apply(Filtered(), [{"role": "user", "content": "{q}"}],
        ...                            inputs={"q": ["hello", "the secret"]})
        >>> out.data, unfinished_items(out)
        (['ok', ''], {1: 'content_filter'})
    """
    if not isinstance(variable, Variable):
        raise TypeError(f"unfinished_items takes a Variable, got {type(variable).__name__}")
    return dict(_UNFINISHED.get(variable, {}))


# -- backward: best-effort passes collect item failures instead of raising --------------

_ITEM_FAILURES: contextvars.ContextVar[list[tuple[int, BaseException]] | None] = (
    contextvars.ContextVar("afnio_item_failures", default=None)
)


@contextlib.contextmanager
def collect_item_failures() -> Iterator[list[tuple[int, BaseException]]]:
    """Inside the block, :func:`tolerating_item_failures` is true and failed items are
    appended to the yielded list instead of failing the whole op (best-effort backward)."""
    collected: list[tuple[int, BaseException]] = []
    token = _ITEM_FAILURES.set(collected)
    try:
        yield collected
    finally:
        _ITEM_FAILURES.reset(token)


def tolerating_item_failures() -> bool:
    """True inside :func:`collect_item_failures` (a best-effort backward pass)."""
    return _ITEM_FAILURES.get() is not None


def record_item_failures(errors: dict[int, BaseException]) -> None:
    """Hand failed items to the enclosing :func:`collect_item_failures` block."""
    collected = _ITEM_FAILURES.get()
    if collected is None:
        raise RuntimeError("record_item_failures() outside collect_item_failures()")
    collected.extend(sorted(errors.items()))


__all__ = [
    "ITEM_ERROR_POLICIES",
    "ItemFailureWarning",
    "MinibatchError",
    "collect_item_failures",
    "describe_error",
    "failed_items",
    "gather_items",
    "cut_off_items",
    "mark_cut_off_items",
    "mark_failed_items",
    "mark_incomplete_items",
    "mark_unfinished_items",
    "record_item_failures",
    "tolerating_item_failures",
    "unfinished_items",
]
