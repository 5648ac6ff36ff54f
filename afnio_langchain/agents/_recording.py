"""Where an agent built elsewhere (``create_agent``, LangGraph) reads its trainable prompt,
and how the model calls of one run are recorded without touching graph state.

A :class:`TrainablePromptSource` holds the Variables (system prompt, tool descriptions).
The middleware or callable prompt built on it reads their values once per model call.
While :func:`recording` is open for a source, each such read is also appended to that
run's :class:`RunRecorder`. The recorder lives in a ``contextvars.ContextVar``: LangGraph
copies the context into every node (thread or task), so concurrent runs each see their
own recorder and nothing is ever written into (checkpointed) graph state.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from langchain_core.messages import AIMessage, BaseMessage

from afnio_langchain.autodiff import Variable


@dataclass(frozen=True)
class ModelCallRecord:
    """One model call of a recorded run.

    Attributes:
        system_prompt: The system prompt text the call was given.
        tool_descriptions: Tool name -> description text the call was given (trainable
            ones only).
        messages: The messages sent after the system prompt.
        response: The model's reply, when the integration sees it (the middleware does;
            a LangGraph callable prompt does not).
        structured_output_tools: Names of the tools that return a structured response
            (``create_agent``'s ``ToolStrategy``), when the integration knows them.
        model_name: The name of the model called, when the integration knows it.

    Example:
        >>> from langchain_core.messages import HumanMessage
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.agents import TrainablePromptSource, recording
        >>> source = TrainablePromptSource(Variable("Be brief.", requires_grad=True),
        ...                                {"lookup": Variable("Look an order up.", requires_grad=True)})
        >>> with recording(source) as run:
        ...     _ = source.read_prompt([HumanMessage("Where is order 7?")])
        >>> call = run.calls[0]
        >>> call.system_prompt, call.tool_descriptions, call.messages[0].content, call.response
        ('Be brief.', {'lookup': 'Look an order up.'}, 'Where is order 7?', None)
    """

    system_prompt: str
    tool_descriptions: dict[str, str] = field(default_factory=dict)
    messages: tuple[BaseMessage, ...] = ()
    response: AIMessage | None = None
    structured_output_tools: tuple[str, ...] = ()
    model_name: str | None = None


class RunRecorder:
    """The model calls of one run, in order (thread-safe).

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.agents import TrainablePromptSource, recording
        >>> source = TrainablePromptSource(Variable("Be brief.", requires_grad=True))
        >>> with recording(source) as outer:
        ...     _ = source.read_prompt([])
        ...     with recording(source) as inner:  # a nested run records only its own calls
        ...         source.system_prompt.data = "Be kind."
        ...         _ = source.read_prompt([])
        >>> [c.system_prompt for c in outer.calls], [c.system_prompt for c in inner.calls]
        (['Be brief.'], ['Be kind.'])
    """

    def __init__(self) -> None:
        self._calls: list[ModelCallRecord] = []
        self._lock = threading.Lock()

    def add(self, record: ModelCallRecord) -> None:
        with self._lock:
            self._calls.append(record)

    @property
    def calls(self) -> list[ModelCallRecord]:
        with self._lock:
            return list(self._calls)


_RECORDERS: contextvars.ContextVar[Mapping[int, RunRecorder] | None] = contextvars.ContextVar(
    "afnio_agent_recorders", default=None
)


class TrainablePromptSource:
    """The Variables an externally built agent reads its prompt from.

    Args:
        system_prompt: The system prompt (``requires_grad=True`` to train it).
        tool_descriptions: Tool name -> Variable holding that tool's description.

    Raises:
        TypeError: A prompt is not a Variable holding one str.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.agents import TrainablePromptSource, recording
        >>> source = TrainablePromptSource(Variable("Be brief.", requires_grad=True))
        >>> with recording(source) as run:
        ...     source.read_prompt(messages=[])
        'Be brief.'
        >>> [call.system_prompt for call in run.calls]
        ['Be brief.']
    """

    def __init__(
        self,
        system_prompt: Variable,
        tool_descriptions: Mapping[str, Variable] | None = None,
    ) -> None:
        if not isinstance(system_prompt, Variable) or system_prompt.is_batched:
            raise TypeError(
                "system_prompt must be a Variable holding one str (requires_grad=True to "
                f"train it), got {system_prompt!r:.100}"
            )
        descriptions = dict(tool_descriptions or {})
        for name, variable in descriptions.items():
            if (
                not isinstance(name, str)
                or not isinstance(variable, Variable)
                or variable.is_batched
            ):
                raise TypeError(
                    "tool_descriptions must map tool names to Variables holding one str"
                )
        self.system_prompt = system_prompt
        self.tool_descriptions = descriptions

    def parameters(self) -> list[Variable]:
        """The trainable Variables: the system prompt, then tool descriptions."""
        return [
            v for v in [self.system_prompt, *self.tool_descriptions.values()] if v.requires_grad
        ]

    def current_descriptions(self) -> dict[str, str]:
        """Tool name -> the current text of its description Variable."""
        return {name: str(v.data) for name, v in self.tool_descriptions.items()}

    def read_prompt(
        self, messages: Sequence[BaseMessage], response: AIMessage | None = None
    ) -> str:
        """The system prompt's current text, recorded into the open run (if any)."""
        text = str(self.system_prompt.data)
        self.record(ModelCallRecord(text, self.current_descriptions(), tuple(messages), response))
        return text

    def record(self, call: ModelCallRecord) -> None:
        """Append ``call`` to the run recorded for this source in the current context."""
        recorder = (_RECORDERS.get() or {}).get(id(self))
        if recorder is not None:
            recorder.add(call)


@contextlib.contextmanager
def recording(source: TrainablePromptSource) -> Iterator[RunRecorder]:
    """Record the model calls that read ``source`` inside the block (and in the threads
    and tasks it starts) into a fresh :class:`RunRecorder`."""
    recorder = RunRecorder()
    token = _RECORDERS.set({**(_RECORDERS.get() or {}), id(source): recorder})
    try:
        yield recorder
    finally:
        _RECORDERS.reset(token)


__all__ = ["ModelCallRecord", "RunRecorder", "TrainablePromptSource", "recording"]
