"""Per-item gradients streamed from one minibatch node's backward to the node that
produced its input, so that a list input's items flow through the backward pass one
by one instead of level by level.

A pipeline run on a list input (``chain.ainvoke({"question": [...]})``) has one node
per stage, each making one model call per item. Without streaming, stage ``k - 1``'s
backward starts once all of stage ``k``'s backward calls have returned: on one core,
the last of 32 requests of each level leaves 31 request-builds after the first, and
that lag repeats at every level. With streaming, item ``i`` of stage ``k - 1`` asks
for its gradient as soon as stage ``k``'s item ``i`` has written it.

The engine (``_engine``) streams an edge only where the result cannot differ from
the unstreamed pass: the consumer is an :class:`~afnio_langchain.autodiff.LLMFunction`
node fed by the producer's batched output through one slot; the producer is an
``LLMFunction`` with the default ``abackward`` and ``item_feedback``, has one output
that is not retained, and receives no other gradient. The consumer's backward
publishes item ``i``'s text for that slot when the item's call returns (or ``""`` when
it made none or failed); when the consumer's node finishes, every item it did not
publish is filled from its gradient for the slot, so a consumer whose backward does
not publish still feeds the producer exactly what it would have.
"""

from __future__ import annotations

import asyncio
from collections.abc import Container
from typing import TYPE_CHECKING, Any

from afnio_langchain.autodiff._variable import Variable

if TYPE_CHECKING:
    from afnio_langchain.autodiff._function import Node

__all__ = ["GradientStream", "publish_item", "streamable_edges"]


class GradientStream:
    """One batched output's gradient, item by item, as its consumer writes it.

    Args:
        size: The number of minibatch items.

    Example:
        >>> import asyncio
        >>> from afnio_langchain.autodiff._item_streams import GradientStream
        >>> async def flow():
        ...     stream = GradientStream(2)
        ...     stream.put(1, "Be shorter.")
        ...     stream.finish(None)  # item 0 never got feedback
        ...     return [await stream.get(i) for i in range(2)]
        >>> asyncio.run(flow())
        ['', 'Be shorter.']
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._texts: list[str | None] = [None] * size
        self._waiters: dict[int, asyncio.Future[str]] = {}

    def put(self, item: int, text: str) -> None:
        """Item ``item``'s feedback (the first text given for an item stands)."""
        if self._texts[item] is not None:
            return
        self._texts[item] = text
        waiter = self._waiters.pop(item, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(text)

    def finish(self, gradient: Any) -> None:
        """The consumer is done: items not yet given take their text from its
        gradient for this output, read as the producer's backward reads a gradient (a
        list-valued Variable item by item, one text for every item; several
        contributions joined per item), or ``""``."""
        contributions = gradient if isinstance(gradient, list) else [gradient]
        columns = [_item_texts(g, self.size) for g in contributions if isinstance(g, Variable)]
        for i in range(self.size):
            self.put(i, "\n\n".join(c[i] for c in columns if c[i]))

    async def get(self, item: int) -> str:
        """Item ``item``'s feedback, once its consumer has written it."""
        text = self._texts[item]
        if text is not None:
            return text
        waiter = self._waiters.get(item)
        if waiter is None:
            waiter = self._waiters[item] = asyncio.get_running_loop().create_future()
        return await waiter

    def feedback(self, skipped: Container[int]) -> ItemFeedback:
        """The per-item feedback a producer's backward reads, ``""`` for ``skipped``."""
        return ItemFeedback(self, skipped)


def _item_texts(gradient: Variable, size: int) -> list[str]:
    texts = [str(t) for t in gradient.items()]
    if len(texts) == 1 and size > 1:
        texts = texts * size
    return (texts + [""] * size)[:size]


class ItemFeedback:
    """What ``item_gradients`` awaits per item in place of a list of texts."""

    def __init__(self, stream: GradientStream, skipped: Container[int]) -> None:
        self._stream = stream
        self._skipped = skipped

    async def get(self, item: int) -> str:
        if item in self._skipped:
            return ""
        return await self._stream.get(item)


def publish_item(ctx: Any, item: int, texts: dict[int, str] | None) -> None:
    """Hand item ``item``'s gradient texts (slot -> text; None: no call or a failure)
    to the streams the engine opened on ``ctx``'s node."""
    streams: dict[int, GradientStream] | None = getattr(ctx, "_item_streams", None)
    if not streams:
        return
    for slot, stream in streams.items():
        stream.put(item, (texts or {}).get(slot, ""))


def _default_llm_backward(node: Node) -> bool:
    from afnio_langchain.autodiff._llm_function import LLMFunction

    function = node.function
    return (
        isinstance(function, type)
        and issubclass(function, LLMFunction)
        and function.abackward.__func__ is LLMFunction.abackward.__func__  # type: ignore[attr-defined]
        and function.item_feedback is LLMFunction.item_feedback
    )


def streamable_edges(consumer: Node, waiting: dict[Node, int]) -> list[tuple[int, Node]]:
    """The input edges of ``consumer`` whose producers may start now, on a stream:
    ``(slot index, producer)`` pairs (see the module doc for the conditions)."""
    from afnio_langchain.autodiff._llm_function import LLMFunction

    function = consumer.function
    conversation = getattr(consumer.ctx, "conversation", None)
    if (
        not isinstance(function, type)
        or not issubclass(function, LLMFunction)
        or conversation is None
        or not conversation.batched  # then no slot holds a batched Variable
        or len(conversation.slots) != len(consumer.next_functions)
    ):
        return []
    edges = []
    for j, ((producer, output_nr), slot) in enumerate(zip(consumer.next_functions, conversation.slots)):
        if producer is None or waiting.get(producer) != 1 or slot.item is not None:
            continue
        variable = slot.variable
        produced = getattr(producer.ctx, "conversation", None)
        if (
            variable.grad_fn is not producer
            or variable.output_nr != output_nr
            or not variable.is_batched
            or producer.num_outputs != 1
            or producer.retained
            or producer.freed
            or produced is None
            or not produced.batched
            or produced.size != len(variable.items())
            or not _default_llm_backward(producer)
        ):
            continue
        edges.append((j, producer))
    return edges
