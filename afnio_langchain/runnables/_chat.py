"""``ChatCompletionRunnable``: the ``ChatCompletion`` op as a LangChain Runnable."""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, Union

from langchain_core.runnables import RunnableConfig
from langchain_core.utils.pydantic import create_model_v2
from pydantic import ConfigDict, Field

from afnio_langchain._aio import run_sync
from afnio_langchain.autodiff import (
    DEFAULT_OUTPUT_ROLE,
    ChatCompletion,
    Variable,
    placeholders,
    stream_text_to,
)
from afnio_langchain.runnables._base import VariableRunnable
from afnio_langchain.runnables._chunks import StreamsThroughTransform, TextChunk, whole_input
from afnio_langchain.runnables._coerce import as_variables
from afnio_langchain.runnables._messages import normalize_messages
from afnio_langchain.runnables._pipeline import pipe

_DONE = object()


class ChatCompletionRunnable(StreamsThroughTransform, VariableRunnable):
    """A differentiable LLM step for LCEL pipelines.

    The input is a dict of Variables or strings (strings become non-trainable
    Variables) filling the ``{name}`` fields of ``messages``; the output is a
    ``Variable`` attached to the graph, so feedback on anything downstream reaches
    the trainable Variables in ``messages`` (typically the system prompt) and the
    input Variables that require grad (outputs of earlier steps).

    Args:
        model: Any LangChain chat model, an openai client (with ``model_name=``), a
            ``dspy.LM`` or a :class:`~afnio_langchain.models.ModelClient`.
        messages: Seed form (``{"role": ..., "content": [Variable, ...]}``) or LangChain
            form (``("system", Variable | str)`` tuples, message objects). Strings and
            Variables are templates whose ``{name}`` fields are filled from the input.
        inputs: Default input values, overridden by the values given at call time.
        backward_model: Model that writes the gradients (default: the process one).
        output_role: Role of the output Variable (how feedback prompts describe it).
        model_name: Model name for an ``openai`` client.
        input_variables: When given, only these names are template fields: any other
            ``{name}`` in the messages (for instance written by an optimizer) stays
            literal text. ``make_trainable`` sets it from the original prompt template.
        coerce_inputs: Format input values that are not Variables with ``str()``, as a
            LangChain prompt template does (a list is then text, not a minibatch).
        **completion_args: Passed to the model (``temperature``, ``max_tokens``...).

    ``invoke``/``ainvoke`` return the output Variable. ``batch``/``abatch`` run all
    inputs concurrently on one event loop, at most ``max_concurrency`` at a time.
    ``stream``/``astream`` yield the reply's ``str`` text chunks as they arrive and,
    last, the output ``Variable`` (built once, when the reply is complete); in an
    LCEL sequence the next step receives that Variable.

    Example:
        >>> from afnio_langchain import ChatCompletionRunnable, Variable, set_backward_model
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> model = ScriptedChatModel(forward="Paris", feedback="Name the country too.")
        >>> set_backward_model(model)
        >>> system = Variable("Answer briefly.", role="system prompt", requires_grad=True)
        >>> step = ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{question}")])
        >>> answer = step.invoke({"question": "Capital of France?"})
        >>> answer.data
        'Paris'
        >>> answer.backward("Too terse.")
        >>> system.grad[0].data
        'Name the country too.'
        >>> step.parameters() == [system]
        True
        >>> list(step.stream({"question": "Capital of France?"}))[:-1]
        ['Paris']
        >>> set_backward_model(None)
    """

    model: Any
    messages: list[Any]
    inputs: dict[str, Any] = Field(default_factory=dict)
    backward_model: Any = None
    output_role: str = DEFAULT_OUTPUT_ROLE
    model_name: str | None = None
    input_variables: list[str] | None = None
    coerce_inputs: bool = False
    completion_args: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def __init__(self, **kwargs: Any) -> None:
        fields = type(self).model_fields
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in fields}
        kwargs["completion_args"] = {**(kwargs.get("completion_args") or {}), **extra}
        if "messages" not in kwargs:
            raise TypeError("ChatCompletionRunnable needs messages=[...]")
        kwargs["messages"] = normalize_messages(kwargs["messages"])
        if kwargs.get("model") is None:
            raise TypeError("ChatCompletionRunnable needs model=... (a chat model or client)")
        if kwargs.get("inputs") is None:
            kwargs.pop("inputs", None)
        super().__init__(**kwargs)

    # -- introspection ----------------------------------------------------------------
    def parameters(self) -> list[Variable]:
        """The trainable Variables of this step (those with ``requires_grad``), each once."""
        found: dict[int, Variable] = {}
        for message in self.messages:
            for part in message["content"]:
                if isinstance(part, Variable) and part.requires_grad:
                    found.setdefault(id(part), part)
        for value in self.inputs.values():
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, Variable) and v.requires_grad:
                    found.setdefault(id(v), v)
        return list(found.values())

    def _template_fields(self) -> list[str]:
        """Every ``{name}`` field in the messages, in order of appearance."""
        names: dict[str, None] = {}
        for message in self.messages:
            for part in message["content"]:
                data = part.data if isinstance(part, Variable) else part
                text = str(data[0] if isinstance(data, list) and data else data)
                names.update(dict.fromkeys(placeholders(text)))
        return list(names)

    @property
    def input_keys(self) -> list[str]:
        """The input names a call must give (template fields not covered by ``inputs``)."""
        names = self.input_variables if self.input_variables is not None else self._template_fields()
        return [n for n in names if n not in self.inputs]

    def get_input_schema(self, config: RunnableConfig | None = None) -> Any:
        value_type: Any = Any if self.coerce_inputs else Union[str, Variable, list[Union[str, Variable]]]
        return create_model_v2(
            self.get_name("Input"),
            field_definitions={name: (value_type, ...) for name in self.input_keys},
        )

    @property
    def OutputType(self) -> type[Variable]:  # noqa: N802
        return Variable

    def __or__(self, other: Any) -> Any:
        """``step | other``: a :class:`ChatPipeline` when ``other`` is an LLM step too
        (list inputs then flow item by item), else LangChain's ``RunnableSequence``."""
        return pipe(self, other) or super().__or__(other)

    # -- running ----------------------------------------------------------------------
    def _prepare_inputs(self, input: Any) -> dict[str, Any]:
        keys = self.input_keys  # once per call: it scans every message for {fields}
        if not isinstance(input, Mapping):
            if len(keys) != 1 or not (self.coerce_inputs or isinstance(input, (str, Variable))):
                raise TypeError(
                    f"{self.get_name()} takes a dict with keys {keys} holding Variables or "
                    f"strings, got {type(input).__name__} (a single value is only accepted when "
                    "the messages have exactly one {field})"
                )
            input = {keys[0]: input}
        merged = {**self.inputs, **input}
        wanted = set(keys) | set(self.inputs)
        missing = [k for k in keys if k not in merged]
        if missing:
            raise KeyError(
                f"{self.get_name()} is missing input(s) {missing}; got keys {sorted(input)}"
            )
        prepared: dict[str, Any] = {}
        for key, value in merged.items():
            if key not in wanted:
                continue
            if self.coerce_inputs and not isinstance(value, Variable):
                prepared[key] = Variable(str(value), role=key)
            else:
                prepared[key] = as_variables(value, key, f"input {key!r}")
        if self.input_variables is not None:
            # Fields that are not declared (e.g. written by an optimizer) stay literal.
            for name in self._template_fields():
                if name not in prepared:
                    prepared[name] = "{" + name + "}"
        return prepared

    def _apply_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.completion_args)
        if self.backward_model is not None:
            kwargs["backward_model"] = self.backward_model
        kwargs["output_role"] = self.output_role
        return kwargs

    def _model(self) -> Any:
        if self.model_name is not None:
            from afnio_langchain.models import as_model_client

            return as_model_client(self.model, self.model_name)
        return self.model

    async def _ainvoke(self, input: Any, config: RunnableConfig | None = None) -> Variable:
        return await ChatCompletion.aapply(
            self._model(), self.messages, inputs=self._prepare_inputs(input), **self._apply_kwargs()
        )

    # -- streaming --------------------------------------------------------------------
    async def _aproduce(
        self, value: Any, sink: Callable[[Any], Any],
        started: Callable[[asyncio.Task[Any]], bool] | None = None,
    ) -> Variable:
        if started is not None and not started(asyncio.current_task()):  # type: ignore[arg-type]
            raise asyncio.CancelledError  # the stream was closed before the call began
        with stream_text_to(lambda text: sink(TextChunk(text))):
            return await self._ainvoke(value)

    async def _atransform(self, inputs: AsyncIterator[Any]) -> AsyncIterator[Any]:
        value = whole_input([chunk async for chunk in inputs])
        chunks: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.ensure_future(self._aproduce(value, chunks.put_nowait))
        task.add_done_callback(lambda _: chunks.put_nowait(_DONE))
        try:
            while (chunk := await chunks.get()) is not _DONE:
                yield chunk
            yield await task
        finally:
            if not task.done():
                task.cancel()

    def _transform(self, inputs: Iterator[Any]) -> Iterator[Any]:
        value = whole_input(list(inputs))
        chunks: queue.Queue[Any] = queue.Queue()
        outcome: dict[str, Any] = {}
        running: list[asyncio.Task[Any]] = []
        closed = threading.Event()

        def started(task: asyncio.Task[Any]) -> bool:
            running.append(task)  # before the check: a close either sees it or is seen
            return not closed.is_set()

        def produce() -> None:
            try:
                outcome["output"] = run_sync(lambda: self._aproduce(value, chunks.put, started))
            except BaseException as exc:  # handed to the consuming thread
                outcome["error"] = exc
            finally:
                chunks.put(_DONE)

        context = contextvars.copy_context()
        worker = threading.Thread(target=context.run, args=(produce,), daemon=True)
        worker.start()
        ended = False
        try:
            while (chunk := chunks.get()) is not _DONE:
                yield chunk
            ended = True
        finally:
            if not ended:  # the consumer stopped early: stop the model call too
                closed.set()
                for task in running:
                    task.get_loop().call_soon_threadsafe(task.cancel)
            worker.join()
        if "error" in outcome:
            raise outcome["error"]
        yield outcome["output"]

    def transform(
        self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        yield from self._transform_stream_with_config(input, self._transform, config, run_type="chain")

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async for chunk in self._atransform_stream_with_config(
            input, self._atransform, config, run_type="chain"
        ):
            yield chunk

