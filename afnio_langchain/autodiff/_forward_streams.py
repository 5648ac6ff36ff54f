"""A minibatch's items handed from one pipeline stage's forward to the next as each
item's reply arrives, so the next stage's call for item ``i`` leaves without waiting
for the stage's slowest item.

:class:`~afnio_langchain.runnables.ChatPipeline` runs its stages concurrently on a
list input, each in its own task holding a :class:`ForwardHandoff`. The first
minibatch ``ChatCompletion`` of a stage takes the handoff
(:func:`open_streamed_output`): its output Variable exists at once, holding one
``""`` per item, and each item's text is filled in when that item's reply (or its
placeholder) is in. The next stage receives that Variable as its input; its call for
item ``i`` waits for item ``i`` alone (:func:`pending_items`), and the stage records
its node only once the Variable is complete and attached to the graph. Nothing
differs from running the stages one after another but when the calls leave.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref

from afnio_langchain.autodiff._variable import Variable

__all__ = [
    "ForwardHandoff",
    "PendingItems",
    "UpstreamItemError",
    "open_streamed_output",
    "pending_items",
]


class UpstreamItemError(RuntimeError):
    """The earlier stage failed this item (or failed as a whole)."""


class PendingItems:
    """The items of a stage's output Variable, as they arrive.

    Example:
        >>> import asyncio
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff._forward_streams import PendingItems
        >>> async def flow():
        ...     output = Variable(["", ""], role="answer")
        ...     items = PendingItems(output)
        ...     items.put(1, "Rome")
        ...     return await items.item(1), output.data
        >>> asyncio.run(flow())
        ('Rome', ['', 'Rome'])
    """

    def __init__(self, variable: Variable) -> None:
        loop = asyncio.get_running_loop()
        self._variable = weakref.ref(variable)  # the registry's value: never its key's owner
        self._items: list[asyncio.Future[str]] = [loop.create_future() for _ in variable.items()]
        self.recorded: asyncio.Future[None] = loop.create_future()
        self.recorded.add_done_callback(_observe)

    def put(self, item: int, text: str) -> None:
        """Item ``item``'s text (written into the Variable's data too)."""
        future = self._items[item]
        variable = self._variable()
        if not future.done():
            if variable is not None:
                variable._data[item] = text  # type: ignore[index]
            future.set_result(text)

    def fail(self, item: int, error: BaseException) -> None:
        future = self._items[item]
        if not future.done():
            future.set_exception(UpstreamItemError(f"item {item} failed upstream: {error}"))
            future.add_done_callback(_observe)

    def fail_all(self, error: BaseException) -> None:
        """The stage failed: every item still missing fails, and so does recording."""
        for i in range(len(self._items)):
            self.fail(i, error)
        if not self.recorded.done():
            self.recorded.set_exception(UpstreamItemError(f"the earlier stage failed: {error}"))

    def mark_recorded(self) -> None:
        """The stage's node is in the graph: the Variable is complete."""
        if not self.recorded.done():
            self.recorded.set_result(None)
        variable = self._variable()
        if variable is not None:
            _PENDING.pop(variable, None)

    async def item(self, item: int) -> str:
        return await self._items[item]


def _observe(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: an unread upstream failure is not logged


class ForwardHandoff:
    """Where a pipeline stage's output Variable is handed to the next stage: as soon as
    the stage's minibatch op exists (streamed), or when the stage returns.

    A pipeline runs each stage in a task whose context holds the stage's handoff
    (:meth:`install`); the stage's first minibatch ``ChatCompletion`` then hands its
    output on at once and fills its items in as they come (:attr:`items`).

    Example:
        >>> import asyncio
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import ChatCompletion, ForwardHandoff
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> model = ScriptedChatModel(forward="ok")
        >>> async def stage():
        ...     handoff = ForwardHandoff()
        ...     handoff.install()
        ...     output = await ChatCompletion.aapply(
        ...         model, [{"role": "user", "content": ["{q}"]}], inputs={"q": ["a", "b"]})
        ...     return handoff.output.result() is output, output.data
        >>> asyncio.run(stage())
        (True, ['ok', 'ok'])
    """

    def __init__(self) -> None:
        self.output: asyncio.Future[Variable] = asyncio.get_running_loop().create_future()
        self.output.add_done_callback(_observe)
        self.items: PendingItems | None = None

    def install(self) -> None:
        """Make this the handoff of the ops run in the current context from now on."""
        _HANDOFF.set(self)

    def deliver(self, variable: Variable) -> None:
        """The stage's output (when its op did not hand it on already)."""
        if not self.output.done():
            self.output.set_result(variable)

    def fail(self, error: BaseException) -> None:
        """The stage failed: the next stage gets ``error`` for whatever it still awaits."""
        if not self.output.done():
            self.output.set_exception(error)
        if self.items is not None:
            self.items.fail_all(error)


_HANDOFF: contextvars.ContextVar[ForwardHandoff | None] = contextvars.ContextVar(
    "afnio_forward_handoff", default=None
)
_PENDING: weakref.WeakKeyDictionary[Variable, PendingItems] = weakref.WeakKeyDictionary()


def open_streamed_output(size: int, role: str, requires_grad: bool) -> tuple[Variable, PendingItems] | None:
    """For a minibatch op run as a pipeline stage: its output Variable, handed to the
    next stage now, and the items to fill in (None outside a pipeline stage)."""
    handoff = _HANDOFF.get()
    if handoff is None or handoff.output.done():
        return None
    _HANDOFF.set(None)  # one op per stage hands off
    output = Variable([""] * size, role=role)
    output._requires_grad = requires_grad  # what recording the op will make it
    items = handoff.items = _PENDING[output] = PendingItems(output)
    handoff.deliver(output)
    return output, items


def pending_items(variable: object) -> PendingItems | None:
    """The items still arriving into ``variable`` (None when it is complete)."""
    if not isinstance(variable, Variable):
        return None
    return _PENDING.get(variable)  # a failed stage's stays: its items raise
