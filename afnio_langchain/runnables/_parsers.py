"""LangChain's common output parsers, for Variables: the graph stays connected."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.output_parsers import JsonOutputParser
from langchain_core.outputs import Generation
from langchain_core.runnables import RunnableConfig, RunnableSerializable

from afnio_langchain._signed_calls import arun_method, run_method
from afnio_langchain.autodiff import ParseJson, Variable
from afnio_langchain.runnables._chunks import TextChunk
from afnio_langchain.runnables._coerce import as_variable


class _TextStream:
    """Passes a differentiable step's stream on: text chunks as they come, then the
    step's Variable. A stream of plain text or message chunks ends with a Variable of
    the whole text instead."""

    def __init__(self, to_variable: Any) -> None:
        self._to_variable = to_variable
        self._texts: list[str] = []
        self._ended = False

    def feed(self, chunk: Any) -> list[Any]:
        if isinstance(chunk, Variable):
            self._ended = True
            return [chunk]
        text = TextChunk(chunk if isinstance(chunk, str) else self._to_variable(chunk).data)
        self._texts.append(text)
        self._ended = False
        return [text]

    def finish(self) -> list[Any]:
        if self._ended or not self._texts:
            return []
        return [Variable("".join(self._texts), role="text")]


class _JsonStream:
    """A JSON parser's stream, as LangChain's ``JsonOutputParser`` streams: after each
    text chunk, the object parsed so far (a plain dict of partial values, yielded when
    it changes), then the dict of Variables that ``invoke`` returns, built once from the
    step's Variable (or, for a stream of plain text or message chunks, its whole text)."""

    def __init__(self, to_text: Any, parse: Any) -> None:
        self._to_text = to_text
        self._parse = parse
        self._partial = JsonOutputParser()
        self._texts: list[str] = []
        self._last: Any = None
        self._ended = False

    def feed(self, chunk: Any) -> list[Any]:
        if isinstance(chunk, Variable):
            self._ended = True
            return [self._parse(chunk)]
        self._texts.append(chunk if isinstance(chunk, str) else self._to_text(chunk))
        self._ended = False
        text = "".join(self._texts)
        parsed = self._partial.parse_result([Generation(text=text)], partial=True)
        if parsed is None or parsed == self._last:
            return []
        self._last = parsed
        return [parsed]

    def finish(self) -> list[Any]:
        if self._ended or not self._texts:
            return []
        return [self._parse("".join(self._texts))]


class _VariableParser(abc.ABC):
    """What the parsers for Variables share: ``invoke``/``ainvoke`` run ``_parse`` in a
    ``parser`` run, and ``transform``/``atransform`` pass each input chunk through the
    parser's stream (``_new_stream()``: ``feed`` per chunk, then ``finish``), as
    LangChain's parsers run and stream."""

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False

    @abc.abstractmethod
    def _parse(self, value: Any) -> Any:
        """The parsed output of a whole input."""

    @abc.abstractmethod
    def _new_stream(self) -> Any:
        """A fresh stream state (``feed(chunk)`` and ``finish()``, each a list to yield)."""

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(  # type: ignore[attr-defined]
            run_method, input, config, run_type="parser", method=self._parse
        )

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(  # type: ignore[attr-defined]
            arun_method, input, config, run_type="parser", method=self._parse
        )

    def _pass(self, chunks: Iterator[Any]) -> Iterator[Any]:
        stream = self._new_stream()
        for chunk in chunks:
            yield from stream.feed(chunk)
        yield from stream.finish()

    async def _apass(self, chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
        stream = self._new_stream()
        async for chunk in chunks:
            for out in stream.feed(chunk):
                yield out
        for out in stream.finish():
            yield out

    def transform(
        self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        yield from self._transform_stream_with_config(input, self._pass, config, run_type="parser")

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async for chunk in self._atransform_stream_with_config(
            input, self._apass, config, run_type="parser"
        ):
            yield chunk


class VariableStrOutputParser(_VariableParser, RunnableSerializable[Any, Variable]):
    """``StrOutputParser`` for Variables: the reply Variable passes on unchanged (so the
    graph stays connected); text and chat messages become non-trainable Variables.
    When streaming, text chunks pass through as they arrive, then the Variable.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.runnables import VariableStrOutputParser
        >>> reply = Variable("Paris", role="answer", requires_grad=True)
        >>> VariableStrOutputParser().invoke(reply) is reply
        True
        >>> VariableStrOutputParser().invoke("plain text").data
        'plain text'
    """

    @property
    def OutputType(self) -> type[Variable]:  # noqa: N802
        return Variable

    def _parse(self, value: Any) -> Variable:
        return as_variable(value, "text", self.get_name())

    def _new_stream(self) -> _TextStream:
        return _TextStream(self._parse)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        yield self.invoke(input, config, **kwargs)

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        yield await self.ainvoke(input, config, **kwargs)


class VariableJsonOutputParser(_VariableParser, RunnableSerializable[Any, dict[str, Variable]]):
    """``JsonOutputParser`` for Variables: the JSON object in the text becomes a dict
    with one Variable per key (values that are not text become JSON text). Feedback on
    any field goes back to the input, labelled with the field's name.
    When streaming, it gives what ``JsonOutputParser`` gives, plain dicts of the object
    parsed so far as the text arrives, then the dict of Variables that ``invoke`` returns.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.runnables import VariableJsonOutputParser
        >>> reply = Variable('{"answer": "42", "confidence": 0.9}', role="reply", requires_grad=True)
        >>> fields = VariableJsonOutputParser().invoke(reply)
        >>> fields["answer"].data, fields["confidence"].data
        ('42', '0.9')
        >>> fields["answer"].backward("Should be 43.")
        >>> reply.grad[0].data
        'Field "answer": Should be 43.'
    """

    def _parse(self, value: Any) -> dict[str, Variable]:
        from afnio_langchain.models import parse_json_object

        variable = as_variable(value, "text", self.get_name())
        outputs = ParseJson.apply(variable)
        keys: dict[str, None] = {}
        for item in variable.items():
            keys.update(dict.fromkeys(parse_json_object(str(item))))
        return dict(zip(keys, outputs))

    def _text(self, chunk: Any) -> str:
        return as_variable(chunk, "text", self.get_name()).data

    def _new_stream(self) -> _JsonStream:
        return _JsonStream(self._text, self._parse)
