"""The stream of a differentiable step, added up the way LangChain adds up chunks.

A differentiable step streams its reply's text chunks as they arrive and, last, its
output Variable: the whole value, built once. LangChain gathers a stream with ``+``
(``Runnable.transform``, ``AddableDict`` for a parallel's dict chunks), so the text
chunks are :class:`TextChunk`: text that adds up to text, and to which the step's
Variable adds up to that Variable. A parallel's stream then adds up, key by key, to the
Variables of its steps, as its ``invoke`` returns them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.utils import AddableDict

from afnio_langchain.autodiff import Variable


class TextChunk(str):
    """A text chunk of a differentiable step's stream: a ``str`` whose sum with more
    text is a ``TextChunk``, and whose sum with the step's final Variable is that
    Variable (the whole value replaces the text streamed so far).

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.runnables._chunks import TextChunk
        >>> reply = Variable("Paris is nice", role="answer")
        >>> partial = TextChunk("Paris ") + TextChunk("is ")
        >>> partial, type(partial).__name__, (partial + reply) is reply
        ('Paris is ', 'TextChunk', True)
    """

    def __add__(self, other: Any) -> Any:
        if isinstance(other, Variable):
            return other
        if isinstance(other, str):
            return TextChunk(str.__add__(self, other))
        return NotImplemented

    def __radd__(self, other: Any) -> Any:
        if isinstance(other, str):
            return TextChunk(str.__add__(other, self))
        return NotImplemented


def whole_input(chunks: list[Any]) -> Any:
    """The whole input of a step from the chunks of its input stream (a step reads its
    whole input before it calls the model, as ``Runnable.transform`` does): a
    differentiable step's stream is its Variable, a parallel's stream (``AddableDict``
    chunks) is merged key by key (per key, text is added up until a step's Variable
    replaces it), and other chunks are added up with ``+``; chunks that cannot be added
    (plain dicts among them) leave the last one.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.runnables._chunks import whole_input
        >>> draft = Variable("one two", role="draft")
        >>> from langchain_core.runnables.utils import AddableDict as Chunk
        >>> whole = whole_input([Chunk(q="hi"), Chunk(d="one "), Chunk(d="two"), Chunk(d=draft)])
        >>> whole["q"], whole["d"] is draft
        ('hi', True)
        >>> whole_input([Chunk(d="one "), Chunk(d="two")]), whole_input([{"d": "one"}, {"d": "one two"}])
        ({'d': 'one two'}, {'d': 'one two'})
    """
    final = next((c for c in reversed(chunks) if isinstance(c, Variable)), None)
    if final is not None:
        return final
    if chunks and all(isinstance(c, Mapping) for c in chunks):
        merged: dict[str, Any] = {}
        addable = False
        for chunk in chunks:
            if not (addable or isinstance(chunk, AddableDict)):
                # Plain dicts do not add up (LangChain keeps the last): a JSON parser's
                # chunks are running totals, each the whole object so far.
                merged = dict(chunk)
                continue
            addable = True
            for key, value in chunk.items():
                if isinstance(value, Variable) or merged.get(key) is None:
                    merged[key] = value
                elif value is not None and not isinstance(merged[key], Variable):
                    merged[key] = _added(merged[key], value)
        return merged
    whole = None
    for chunk in chunks:
        whole = chunk if whole is None else _added(whole, chunk)
    return whole


def _added(whole: Any, chunk: Any) -> Any:
    try:
        return whole + chunk
    except TypeError:
        return chunk


__all__ = ["TextChunk", "whole_input"]


class StreamsThroughTransform:
    """``stream``/``astream`` of one input for a runnable whose ``transform`` and
    ``atransform`` do the streaming (LangChain's own ``stream`` would buffer the input).

    Example:
        >>> from langchain_core.runnables import RunnableLambda
        >>> from afnio_langchain.runnables._chunks import StreamsThroughTransform
        >>> class Upper(StreamsThroughTransform):
        ...     def transform(self, chunks, config=None, **kwargs):
        ...         yield from (c.upper() for c in chunks)
        >>> list(Upper().stream("hi"))
        ['HI']
    """

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        yield from self.transform(iter([input]), config, **kwargs)  # type: ignore[attr-defined]

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async def one() -> AsyncIterator[Any]:
            yield input

        async for chunk in self.atransform(one(), config, **kwargs):  # type: ignore[attr-defined]
            yield chunk
