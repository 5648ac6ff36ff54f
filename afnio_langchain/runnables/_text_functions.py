"""Differentiable glue: plain Python text functions as graph-connected LCEL steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.runnables import RunnableConfig, RunnableLambda, RunnableSerializable
from pydantic import ConfigDict

from afnio_langchain._signed_calls import arun_method, run_method
from afnio_langchain.autodiff import TextTransform, Variable
from afnio_langchain.runnables._coerce import as_variable
from afnio_langchain.runnables._parsers import VariableJsonOutputParser, VariableStrOutputParser

TextFunc = Callable[[str], Any]


class TextFunction(RunnableSerializable[Any, Variable]):
    """Applies a plain ``str -> str`` function to a Variable inside a chain (parse,
    extract, reformat) without cutting the graph: the output Variable is connected to
    the input, and feedback on the result goes back to the input, saying which
    transformation the text went through. A minibatch Variable is mapped item by item.

    Args:
        func: The function; it receives the text and returns text (or a number).
        description: What the function does, in words (used in feedback; defaults to
            the function's name).

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.runnables import TextFunction
        >>> reply = Variable("Answer: 42", role="reply", requires_grad=True)
        >>> extract = TextFunction(lambda t: t.split(":")[1].strip(), description="extract the answer")
        >>> answer = extract.invoke(reply)
        >>> answer.data, answer.role
        ('42', 'reply (after extract the answer)')
        >>> answer.backward("Should be 43.")
        >>> reply.grad[0].data
        'Feedback on the result of extract the answer applied to this text: Should be 43.'
    """

    func: Callable[[str], Any]
    description: str = ""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def __init__(self, func: TextFunc | None = None, description: str = "", **kwargs: Any) -> None:
        if func is None:
            func = kwargs.pop("func", None)
        if not callable(func):
            raise TypeError(f"TextFunction needs a callable str -> str, got {type(func).__name__}")
        super().__init__(func=func, description=description, **kwargs)

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False

    def get_name(self, suffix: str | None = None, *, name: str | None = None) -> str:
        if name is None and self.name is None:
            label = getattr(self.func, "__name__", "")
            name = f"TextFunction<{label}>" if label and label != "<lambda>" else "TextFunction"
        return super().get_name(suffix, name=name)

    @property
    def OutputType(self) -> type[Variable]:  # noqa: N802
        return Variable

    def _label(self) -> str:
        return self.description or getattr(self.func, "__name__", "") or "a function"

    def _apply(self, value: Any) -> Variable:
        return TextTransform.apply(as_variable(value, "text", self.get_name()), self.func, self._label())

    async def _aapply(self, value: Any) -> Variable:
        return await TextTransform.aapply(
            as_variable(value, "text", self.get_name()), self.func, self._label()
        )

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Variable:
        return self._call_with_config(run_method, input, config, method=self._apply)

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Variable:
        return await self._acall_with_config(arun_method, input, config, method=self._aapply)


def as_differentiable(step: Any, description: str = "") -> RunnableSerializable:
    """The differentiable counterpart of a text function or a LangChain output parser,
    for use on Variables inside a chain.

    * a plain function or a ``RunnableLambda`` -> :class:`TextFunction`;
    * ``StrOutputParser`` -> :class:`VariableStrOutputParser` (the Variable passes on);
    * ``JsonOutputParser``/``SimpleJsonOutputParser`` -> :class:`VariableJsonOutputParser`
      (a dict of Variables, one per key);
    * any other output parser whose output is text -> a :class:`TextFunction` calling
      its ``parse``.

    Also usable as a decorator on a ``str -> str`` function.

    Raises:
        TypeError: ``step`` is an output parser whose output is not text (for instance
            a ``PydanticOutputParser``), or something else that is not callable.

    Example:
        >>> from langchain_core.output_parsers import StrOutputParser
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.runnables import as_differentiable
        >>> @as_differentiable
        ... def first_line(text: str) -> str:
        ...     return text.splitlines()[0]
        >>> first_line.invoke(Variable("one\\ntwo", role="reply")).data
        'one'
        >>> type(as_differentiable(StrOutputParser())).__name__
        'VariableStrOutputParser'
    """
    from langchain_core.output_parsers import (
        BaseOutputParser,
        JsonOutputParser,
        PydanticOutputParser,
        StrOutputParser,
    )


    if isinstance(step, (TextFunction, VariableStrOutputParser, VariableJsonOutputParser)):
        return step
    if isinstance(step, StrOutputParser):
        return VariableStrOutputParser()
    if isinstance(step, JsonOutputParser) and not isinstance(step, PydanticOutputParser):
        return VariableJsonOutputParser()
    if isinstance(step, BaseOutputParser):
        try:
            output_type = step.OutputType
        except TypeError:
            output_type = None
        if output_type is not str:
            raise TypeError(
                f"{type(step).__name__} does not return text, so it cannot run on a Variable; "
                "differentiable parsers are StrOutputParser, JsonOutputParser and parsers "
                "returning str (or wrap a str -> str function in TextFunction)"
            )
        return TextFunction(step.parse, description=description or f"{type(step).__name__}.parse")
    if isinstance(step, RunnableLambda):
        func = getattr(step, "func", None)
        if func is None:
            raise TypeError("as_differentiable needs a RunnableLambda with a sync function")
        return TextFunction(func, description=description or step.get_name())
    if callable(step):
        return TextFunction(step, description=description)
    raise TypeError(
        f"as_differentiable takes a function, a RunnableLambda or an output parser, got "
        f"{type(step).__name__}"
    )
