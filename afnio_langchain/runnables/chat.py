"""``ChatCompletionRunnable``: the ``ChatCompletion`` op as a LangChain Runnable."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Optional, Union

from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import ensure_config
from langchain_core.utils.pydantic import create_model_v2
from pydantic import ConfigDict, Field

from afnio_langchain._aio import run_sync
from afnio_langchain.autodiff import ChatCompletion, Variable, placeholders
from afnio_langchain.autodiff.lm_ops import DEFAULT_OUTPUT_ROLE, stream_text_to
from afnio_langchain.runnables.messages import normalize_messages

_DONE = object()


def to_variable(value: Any, name: str) -> Variable | list[Variable]:
    """An input value as a Variable: strings are wrapped (not trainable); Variables and
    lists of them pass through; anything else is a TypeError naming the input."""
    if isinstance(value, Variable):
        return value
    if isinstance(value, str):
        return Variable(value, role=name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Variable(str(value), role=name)
    if isinstance(value, list) and all(isinstance(v, (Variable, str)) for v in value):
        return [v if isinstance(v, Variable) else Variable(v, role=name) for v in value]
    raise TypeError(
        f"input {name!r} must be a Variable, a str, or a list of them; got {type(value).__name__} "
        "(convert other values to text first, e.g. with a RunnableLambda)"
    )


class ChatCompletionRunnable(RunnableSerializable[dict[str, Any], Variable]):
    """A differentiable LLM step for LCEL pipelines.

    The input is a dict of Variables or strings (strings become non-trainable
    Variables) filling the ``{name}`` fields of ``messages``; the output is a
    ``Variable`` attached to the graph, so feedback on anything downstream reaches
    the trainable Variables in ``messages`` (typically the system prompt).

    Args:
        model: Any LangChain chat model, an openai client (with ``model_name=``), a
            ``dspy.LM`` or a :class:`~afnio_langchain.models.ModelClient`.
        messages: Seed form (``{"role": ..., "content": [Variable, ...]}``) or LangChain
            form (``("system", Variable | str)`` tuples, message objects).
        inputs: Default input values, overridden by the values given at call time.
        backward_model: Model that writes the gradients (default: the process one).
        output_role: Role of the output Variable (how feedback prompts describe it).
        **completion_args: Passed to the model (``temperature``, ``max_tokens``...).

    ``stream``/``astream`` yield ``str`` text chunks and, last, the output
    ``Variable`` (built once, when the reply is complete).

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
        >>> set_backward_model(None)
    """

    model: Any
    messages: list[Any]
    inputs: dict[str, Any] = Field(default_factory=dict)
    backward_model: Any = None
    output_role: str = DEFAULT_OUTPUT_ROLE
    model_name: Optional[str] = None
    completion_args: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def __init__(self, **kwargs: Any) -> None:
        fields = type(self).model_fields
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in fields}
        kwargs["completion_args"] = {**kwargs.get("completion_args", {}), **extra}
        if "messages" not in kwargs:
            raise TypeError("ChatCompletionRunnable needs messages=[...]")
        kwargs["messages"] = normalize_messages(kwargs["messages"])
        if kwargs.get("model") is None:
            raise TypeError("ChatCompletionRunnable needs model=... (a chat model or client)")
        super().__init__(**kwargs)

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False

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

    @property
    def input_keys(self) -> list[str]:
        """The ``{name}`` fields of the messages not covered by default ``inputs``."""
        names: dict[str, None] = {}
        for message in self.messages:
            for part in message["content"]:
                text = part.data if isinstance(part, Variable) else part
                for name in placeholders(str(text) if not isinstance(text, list) else str(text[0])):
                    names[name] = None
        return [n for n in names if n not in self.inputs]

    def get_input_schema(self, config: RunnableConfig | None = None) -> Any:
        value_type = Union[str, Variable, list[Union[str, Variable]]]
        return create_model_v2(
            self.get_name("Input"),
            field_definitions={name: (value_type, ...) for name in self.input_keys},
        )

    @property
    def OutputType(self) -> type[Variable]:  # noqa: N802
        return Variable

    def get_output_schema(self, config: RunnableConfig | None = None) -> Any:
        return create_model_v2(self.get_name("Output"), root=Variable)

    # -- running ----------------------------------------------------------------------
    def _prepare_inputs(self, input: Any) -> dict[str, Any]:
        if isinstance(input, (str, Variable)):
            keys = self.input_keys
            if len(keys) != 1:
                raise TypeError(
                    f"{self.get_name()} takes a dict with keys {keys}; a single value is only "
                    "accepted when the messages have exactly one {field}"
                )
            input = {keys[0]: input}
        if not isinstance(input, Mapping):
            raise TypeError(
                f"{self.get_name()} takes a dict of Variables or strings, got {type(input).__name__}"
            )
        merged = {**self.inputs, **input}
        wanted = set(self.input_keys) | set(self.inputs)
        return {k: to_variable(v, k) for k, v in merged.items() if k in wanted}

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

    async def _ainvoke(self, input: Any) -> Variable:
        return await ChatCompletion.aapply(
            self._model(), self.messages, inputs=self._prepare_inputs(input), **self._apply_kwargs()
        )

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Variable:
        def call(value: Any) -> Variable:
            return run_sync(lambda: self._ainvoke(value))

        return self._call_with_config(call, input, config, run_type="chain")

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Variable:
        return await self._acall_with_config(self._ainvoke, input, config, run_type="chain")

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Runs every input concurrently on one event loop (bounded by the config's
        ``max_concurrency``), rather than in a small thread pool."""
        if not inputs:
            return []
        return run_sync(
            lambda: self.abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        )

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        chunks: asyncio.Queue[Any] = asyncio.Queue()

        async def produce(value: Any) -> Variable:
            with stream_text_to(chunks.put_nowait):
                return await self._ainvoke(value)

        task = asyncio.ensure_future(
            self._acall_with_config(produce, input, ensure_config(config), run_type="chain")
        )
        task.add_done_callback(lambda _: chunks.put_nowait(_DONE))
        try:
            while (chunk := await chunks.get()) is not _DONE:
                yield chunk
            yield await task
        finally:
            if not task.done():
                task.cancel()

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        chunks: queue.Queue[Any] = queue.Queue()
        outcome: dict[str, Any] = {}

        def produce() -> None:
            async def run() -> None:
                async for chunk in self.astream(input, config, **kwargs):
                    chunks.put(chunk)

            try:
                run_sync(run)
            except BaseException as exc:  # handed to the consuming thread
                outcome["error"] = exc
            finally:
                chunks.put(_DONE)

        import contextvars

        context = contextvars.copy_context()
        worker = threading.Thread(target=context.run, args=(produce,), daemon=True)
        worker.start()
        while (chunk := chunks.get()) is not _DONE:
            yield chunk
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
