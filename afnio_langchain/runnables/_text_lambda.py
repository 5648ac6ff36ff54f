"""The chain's own functions right after an LLM step, given text as in the original.

In ``prompt | model | StrOutputParser() | RunnableLambda(f)`` LangChain hands ``f`` a
``str``. Once ``make_trainable`` has made the LLM step trainable, the step returns a
Variable; ``f`` gets it as text again (:class:`LinkedText`, a ``str`` that remembers its
Variable), so ``s.strip()``, ``"x" in s`` or ``len(s)`` work as before. Its result is
linked back into the graph:

* the text itself, anywhere in a dict, list or tuple (``{"draft": s}``) -> its Variable,
  so a next trainable step gets the Variable and feedback reaches both (a step the
  function calls itself gets the Variable too: ``as_variable`` reads it);
* new text (``s.strip()``), also in a dict, list or tuple (``{"draft": s.upper()}``)
  -> a Variable made from the input by ``TextTransform``: feedback on it goes back to
  the input, saying which function the text went through;
* anything else (a number, a bool, None, an object) -> as the function returned it.

Right after the chat model (no parser between) the function gets an ``AIMessage``
instead, as in the original chain, its ``content`` the :class:`LinkedText`. A
``RunnableGenerator`` there (:class:`TextGenerator`) gets the stream's ``str`` chunks
(``AIMessageChunk`` s right after the model); what it yields stays out of the graph.

Only a single Variable, or a dict, list or tuple of them, is given as text; a minibatch
Variable (a list input) passes through as a Variable, as before. Functions elsewhere in
a chain (after a parallel of several steps, say) keep getting Variables, so
``a + "\n" + b`` on two steps' outputs stays in the graph.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables import RunnableConfig, RunnableLambda, RunnableSerializable
from langchain_core.runnables.base import RunnableGenerator
from pydantic import ConfigDict

from afnio_langchain.autodiff import TextTransform, Variable
from afnio_langchain.runnables._chunks import StreamsThroughTransform, whole_input


class LinkedText(str):
    """Text of a Variable, as a plain ``str``; ``.variable`` is the Variable.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.runnables._text_lambda import LinkedText
        >>> reply = Variable("  Paris.  ", role="answer")
        >>> text = LinkedText.of(reply)
        >>> text.strip(), text.variable is reply, isinstance(text, str)
        ('Paris.', True, True)
    """

    variable: Variable

    @classmethod
    def of(cls, variable: Variable) -> LinkedText:
        text = cls(variable.data)
        text.variable = variable
        return text


def _as_text(value: Any) -> tuple[Any, Variable | None]:
    """``value`` with its single Variables as :class:`LinkedText`, and the one Variable
    new text can be linked to (None unless ``value`` is a single Variable)."""
    if isinstance(value, Variable):
        return (value, None) if value.is_batched else (LinkedText.of(value), value)
    if isinstance(value, dict):
        return {k: _as_text(v)[0] for k, v in value.items()}, None
    if type(value) in (list, tuple):
        return type(value)(_as_text(v)[0] for v in value), None
    return value, None


def _as_message(value: Any) -> tuple[Any, Variable | None]:
    """``value`` as the ``AIMessage`` a chat model returns, its ``content`` the
    :class:`LinkedText` of the Variable (a minibatch Variable passes through)."""
    if not isinstance(value, Variable) or value.is_batched:
        return _as_text(value)
    message = AIMessage(content="")
    message.content = LinkedText.of(value)  # after validation, which would make it a str
    return message, value


def _relinked(result: Any, source: Variable | None, label: str) -> Any:
    """``result`` with every :class:`LinkedText` in it (and in its dicts, lists and
    tuples) replaced by its Variable, and, with a ``source``, every other string by a
    Variable made from ``source`` by ``TextTransform`` (``label`` names the function)."""
    if isinstance(result, LinkedText):
        return result.variable
    if isinstance(result, AIMessage) and isinstance(result.content, LinkedText):
        return result.content.variable  # the message it was given: the step's Variable
    if source is not None and _is_new_text(result):
        # A plain string op (TextTransform has no aforward): run here, also from ainvoke.
        return TextTransform.apply(source, lambda _text: result, label)
    if isinstance(result, dict):
        return {k: _relinked(v, source, label) for k, v in result.items()}
    if type(result) in (list, tuple):
        return type(result)(_relinked(v, source, label) for v in result)
    return result


def _is_new_text(result: Any) -> bool:
    return isinstance(result, str) and not isinstance(result, LinkedText)


class _ChainFunction(RunnableSerializable[Any, Any]):
    """A function of the original chain, run as it runs there: named, configured and
    never serialized as its ``bound`` function is."""

    bound: Any

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False

    def get_name(self, suffix: str | None = None, *, name: str | None = None) -> str:
        return self.bound.get_name(suffix, name=name)

    @property
    def config_specs(self) -> list[Any]:
        return self.bound.config_specs


class TextLambda(_ChainFunction):
    """Runs a ``RunnableLambda`` of the original chain on text (see the module doc);
    ``make_trainable`` puts it around the chain's functions right after an LLM step.

    Example:
        >>> from langchain_core.runnables import RunnableLambda
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.runnables._text_lambda import TextLambda
        >>> reply = Variable("  Paris.  ", role="answer", requires_grad=True)
        >>> tidy = TextLambda(bound=RunnableLambda(lambda s: s.strip().rstrip(".")))
        >>> answer = tidy.invoke(reply)
        >>> answer.data, answer.role
        ('Paris', 'answer (after a function of the chain)')
        >>> answer.backward("Name the country too.")
        >>> reply.grad[0].data
        'Feedback on the result of a function of the chain applied to this text: Name the country too.'
        >>> TextLambda(bound=RunnableLambda(lambda s: {"draft": s})).invoke(reply)["draft"] is reply
        True
    """

    bound: RunnableLambda
    as_message: bool = False
    """Give it the chat model's ``AIMessage`` (a function right after the model, with no
    parser between); its ``content`` is the text as :class:`LinkedText`."""

    def _label(self) -> str:
        name = getattr(getattr(self.bound, "func", None), "__name__", "") or ""
        return name if name and name != "<lambda>" else "a function of the chain"

    def _given(self, input: Any) -> tuple[Any, Variable | None]:
        return _as_message(input) if self.as_message else _as_text(input)

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        text, source = self._given(input)
        return _relinked(self.bound.invoke(text, config, **kwargs), source, self._label())

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        text, source = self._given(input)
        return _relinked(await self.bound.ainvoke(text, config, **kwargs), source, self._label())

    def transform(
        self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        yield self.invoke(whole_input(list(input)), config, **kwargs)

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        yield await self.ainvoke(whole_input([chunk async for chunk in input]), config, **kwargs)


_SKIP: Any = object()


class _GeneratorInput:
    """The ``str`` chunks a generator gets in the original chain, from a differentiable
    step's stream, one chunk at a time: its text chunks, not the Variable that ends it
    (the Variable's text when no text chunk came before it: ``invoke``)."""

    def __init__(self) -> None:
        self.streamed = False

    def __call__(self, chunk: Any) -> Any:
        if isinstance(chunk, Variable):
            if self.streamed:
                return _SKIP
            return chunk.data if chunk.is_batched else str(chunk.data)
        self.streamed = self.streamed or isinstance(chunk, str)
        return str(chunk) if isinstance(chunk, str) else chunk


def _texts(chunks: Iterator[Any]) -> Iterator[Any]:
    pick = _GeneratorInput()
    return (value for value in map(pick, chunks) if value is not _SKIP)


async def _atexts(chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
    pick = _GeneratorInput()
    async for chunk in chunks:
        if (value := pick(chunk)) is not _SKIP:
            yield value


class TextGenerator(StreamsThroughTransform, _ChainFunction):
    """Runs a ``RunnableGenerator`` of the original chain (LangChain's streaming guide's
    ``def split_into_list(input: Iterator[str]) -> Iterator[list[str]]``) on the ``str``
    chunks it gets there; ``make_trainable`` puts it around a generator right after an
    LLM step's parser. What it yields is what the original yields: plain values, out of
    the graph (feedback on them does not reach the prompt).

    Example:
        >>> from langchain_core.runnables import RunnableGenerator
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.runnables._text_lambda import TextGenerator
        >>> def words(chunks):
        ...     for chunk in chunks:
        ...         yield from ([w] for w in chunk.split())
        >>> TextGenerator(bound=RunnableGenerator(words)).invoke(Variable("lion tiger", role="a"))
        ['lion', 'tiger']
    """

    bound: RunnableGenerator
    as_message: bool = False
    """Give it ``AIMessageChunk`` s, as a chat model streams them (no parser between)."""

    def _chunk(self, text: Any) -> Any:
        return AIMessageChunk(content=text) if self.as_message and isinstance(text, str) else text

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self.bound.invoke(self._chunk(next(_texts(iter([input])))), config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        text = self._chunk(next(_texts(iter([input]))))
        return await self.bound.ainvoke(text, config, **kwargs)

    def transform(
        self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        yield from self.bound.transform(map(self._chunk, _texts(input)), config, **kwargs)

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        chunks = (self._chunk(text) async for text in _atexts(input))
        async for chunk in self.bound.atransform(chunks, config, **kwargs):
            yield chunk


__all__ = ["LinkedText", "TextGenerator", "TextLambda"]
