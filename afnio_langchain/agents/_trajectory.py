"""What an agent run did: its steps, tool calls, tool results and errors, and final answer.

A :class:`Trajectory` is built from the LangChain messages of a run (the agent's
``AIMessage``s and the ``ToolMessage``s answering their tool calls), so the package's
own agent, ``create_agent`` agents and LangGraph agents are described alike. The output
Variable of an agent run remembers its trajectories (:func:`trajectory_of`), for
metrics and for the backward pass.
"""

from __future__ import annotations

import dataclasses
import json
import weakref
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from afnio_langchain.autodiff import Variable
from afnio_langchain.models import message_text

ToolStatus = Literal["success", "error", "not_run"]
StopReason = Literal["final_answer", "step_limit"]


@dataclass(frozen=True)
class ToolCallRecord:
    """One tool call the model asked for, and what came of it.

    Attributes:
        name: The tool's name, as the model wrote it.
        args: The arguments, as parsed from the model's tool call.
        id: The tool call id (None when the provider gave none).
        output: The text the tool returned (or the error text fed back to the model);
            None when the call was not run.
        status: ``"success"``, ``"error"`` (the tool raised, or does not exist, or its
            arguments were invalid), or ``"not_run"`` (the run stopped first).

    Example:
        >>> from langchain_core.messages import AIMessage, ToolMessage
        >>> from afnio_langchain.agents._trajectory import trajectory_from_messages
        >>> run = trajectory_from_messages("Where are orders 7 and 8?", [
        ...     AIMessage("", tool_calls=[{"name": "lookup", "args": {"id": 7}, "id": "c1"},
        ...                               {"name": "lookup", "args": {"id": 8}, "id": "c2"}]),
        ...     ToolMessage("Error: no order 7", tool_call_id="c1", status="error"),
        ... ])
        >>> [(c.args, c.status, c.output) for c in run.tool_calls]
        [({'id': 7}, 'error', 'Error: no order 7'), ({'id': 8}, 'not_run', None)]
        >>> run.errors[0].id, run.stopped
        ('c1', 'step_limit')
    """

    name: str
    args: dict[str, Any]
    id: str | None = None
    output: str | None = None
    status: ToolStatus = "not_run"


@dataclass(frozen=True)
class AgentStep:
    """One model call of the run: its text and the tool calls it asked for.

    Example:
        >>> from langchain_core.messages import AIMessage, ToolMessage
        >>> from afnio_langchain.agents._trajectory import trajectory_from_messages
        >>> run = trajectory_from_messages("Where is order 7?", [
        ...     AIMessage("Let me check.", tool_calls=[{"name": "lookup", "args": {}, "id": "c1"}]),
        ...     ToolMessage("shipped", tool_call_id="c1"),
        ...     AIMessage("Order 7 has shipped."),
        ... ])
        >>> [(step.text, [c.name for c in step.tool_calls]) for step in run.steps]
        [('Let me check.', ['lookup']), ('Order 7 has shipped.', [])]
    """

    text: str
    tool_calls: tuple[ToolCallRecord, ...] = ()
    structured_output: tuple[ToolCallRecord, ...] = ()
    """Calls of the structured-output tool (``create_agent``'s ``ToolStrategy``): the
    way the run returns its answer, not tool calls of the agent."""


@dataclass(frozen=True)
class Trajectory:
    """A whole agent run, as shown to backward passes, metrics and judges.

    Attributes:
        task: The task (the user message that started the run).
        system_prompt: The system prompt the model saw (at its first call).
        steps: One entry per model call, in order.
        final_answer: The answer the run returned.
        stopped: ``"final_answer"`` or ``"step_limit"``.
        max_steps: The run's step limit (None when unknown or unlimited).
        tools: Tool name -> description the model was shown.
        messages: The run's LangChain messages after the task (AI and tool messages).
        structured_response: The run's structured response (``create_agent`` with a
            ``response_format``), or None; the final answer is then its JSON.

    Example:
        >>> from langchain_core.messages import AIMessage, ToolMessage
        >>> from afnio_langchain.agents._trajectory import trajectory_from_messages
        >>> run = trajectory_from_messages("Where is order 7?", [
        ...     AIMessage("", tool_calls=[{"name": "lookup", "args": {"id": 7}, "id": "c1"}]),
        ...     ToolMessage("shipped", tool_call_id="c1"),
        ...     AIMessage("Order 7 has shipped."),
        ... ])
        >>> run.num_steps, run.final_answer, [c.name for c in run.tool_calls]
        (2, 'Order 7 has shipped.', ['lookup'])
        >>> run.tool_calls[0].status, run.tool_calls[0].output
        ('success', 'shipped')
    """

    task: str
    steps: tuple[AgentStep, ...]
    final_answer: str
    system_prompt: str = ""
    stopped: StopReason = "final_answer"
    max_steps: int | None = None
    tools: Mapping[str, str] = field(default_factory=dict)
    messages: tuple[BaseMessage, ...] = ()
    structured_response: Any = None

    @property
    def num_steps(self) -> int:
        """The number of model calls."""
        return len(self.steps)

    @property
    def tool_calls(self) -> list[ToolCallRecord]:
        """Every tool call of the run, in order."""
        return [call for step in self.steps for call in step.tool_calls]

    @property
    def errors(self) -> list[ToolCallRecord]:
        """The tool calls that failed."""
        return [call for call in self.tool_calls if call.status == "error"]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no LangChain messages)."""
        return {
            "task": self.task,
            "system_prompt": self.system_prompt,
            "steps": [
                {
                    "text": step.text,
                    "tool_calls": [
                        {"name": c.name, "args": c.args, "output": c.output, "status": c.status}
                        for c in step.tool_calls
                    ],
                }
                for step in self.steps
            ],
            "final_answer": self.final_answer,
            "structured_response": jsonable(self.structured_response),
            "stopped": self.stopped,
            "max_steps": self.max_steps,
        }


def _tool_status(message: ToolMessage) -> ToolStatus:
    return "error" if getattr(message, "status", "success") == "error" else "success"


def jsonable(value: Any) -> Any:
    """A structured response as JSON-ready data (pydantic models, dataclasses, dicts)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json.loads(json.dumps(dataclasses.asdict(value), default=str))
    return json.loads(json.dumps(value, default=str))


def structured_answer(value: Any) -> str:
    """The final answer text of a structured response: its JSON."""
    return value if isinstance(value, str) else json.dumps(jsonable(value), ensure_ascii=False)


def _answered_last_calls(messages: Sequence[BaseMessage]) -> set[str]:
    """Names of the last AI message's tool calls that a later tool message answers: how
    a structured response returned through a tool looks when its tool names are unknown."""
    last = next((k for k in range(len(messages) - 1, -1, -1) if isinstance(messages[k], AIMessage)), None)
    if last is None:
        return set()
    answered = {m.tool_call_id for m in messages[last + 1 :] if isinstance(m, ToolMessage)}
    return {str(c.get("name")) for c in messages[last].tool_calls or [] if c.get("id") in answered}


def tool_args_text(args: Mapping[str, Any]) -> str:
    """Tool arguments as compact JSON (what prompts and feedback show)."""
    return json.dumps(dict(args), ensure_ascii=False, sort_keys=True, default=str)


def trajectory_from_messages(
    task: str,
    messages: Sequence[BaseMessage],
    *,
    system_prompt: str = "",
    stopped: StopReason | None = None,
    max_steps: int | None = None,
    tools: Mapping[str, str] | None = None,
    final_answer: str | None = None,
    structured_response: Any = None,
    structured_tools: Collection[str] | None = None,
) -> Trajectory:
    """Build the :class:`Trajectory` of a run from the messages that followed its task.

    Each ``AIMessage`` is a step; each ``ToolMessage`` is matched to the tool call it
    answers by ``tool_call_id`` (tool calls with no answer are ``"not_run"``). The final
    answer is the text of the last ``AIMessage`` unless given; ``stopped`` defaults to
    ``"step_limit"`` when the last step still asked for tools.

    A run with a ``structured_response`` answered with it: the final answer is its JSON,
    and calls of the structured-output tools (``structured_tools``; by default the last
    step's answered calls) are kept apart from the agent's tool calls.

    Raises:
        TypeError: ``messages`` holds something that is not a LangChain message.

    Example:
        >>> from langchain_core.messages import AIMessage, ToolMessage
        >>> from afnio_langchain.agents._trajectory import trajectory_from_messages
        >>> run = trajectory_from_messages("Contact: John, john@example.com", [
        ...     AIMessage("", tool_calls=[{"name": "ContactInfo", "id": "c1",
        ...                                "args": {"name": "John", "email": "john@example.com"}}]),
        ...     ToolMessage("Returning structured response", tool_call_id="c1"),
        ... ], structured_response={"name": "John", "email": "john@example.com"})
        >>> run.final_answer, run.stopped, run.tool_calls
        ('{"name": "John", "email": "john@example.com"}', 'final_answer', [])
    """
    steps: list[tuple[AIMessage, list[dict[str, Any]]]] = []
    results: dict[str, ToolMessage] = {}
    for k, message in enumerate(messages):
        if not isinstance(message, BaseMessage):
            raise TypeError(
                f"trajectory messages must be LangChain messages; item {k} is "
                f"{type(message).__name__}"
            )
        if isinstance(message, AIMessage):
            steps.append((message, list(message.tool_calls or [])))
        elif isinstance(message, ToolMessage):
            results[message.tool_call_id] = message
    structured: Collection[str] = ()
    if structured_response is not None:
        structured = (
            set(structured_tools) if structured_tools is not None else _answered_last_calls(messages)
        )
    elif structured_tools is not None:
        structured = set(structured_tools)
    built = []
    for ai, calls in steps:
        records, outputs = [], []
        for call in calls:
            answer = results.get(call.get("id") or "")
            record = ToolCallRecord(
                name=str(call.get("name", "")),
                args=dict(call.get("args") or {}),
                id=call.get("id"),
                output=None if answer is None else message_text(answer),
                status="not_run" if answer is None else _tool_status(answer),
            )
            (outputs if record.name in structured else records).append(record)
        built.append(
            AgentStep(
                text=message_text(ai), tool_calls=tuple(records), structured_output=tuple(outputs)
            )
        )
    if stopped is None:
        answered = structured_response is not None
        stopped = "step_limit" if built and built[-1].tool_calls and not answered else "final_answer"
    if final_answer is None:
        if structured_response is not None:
            final_answer = structured_answer(structured_response)
        else:
            final_answer = built[-1].text if built else ""
    return Trajectory(
        task=task,
        steps=tuple(built),
        final_answer=final_answer,
        system_prompt=system_prompt,
        stopped=stopped,
        max_steps=max_steps,
        tools=dict(tools or {}),
        messages=tuple(messages),
        structured_response=structured_response,
    )


# -- the trajectories behind an output Variable ----------------------------------------
_TRAJECTORIES: weakref.WeakKeyDictionary[Variable, tuple[Trajectory, ...]] = (
    weakref.WeakKeyDictionary()
)


def remember_trajectories(output: Variable, trajectories: Sequence[Trajectory]) -> None:
    """Attach the run(s) behind ``output`` (one per minibatch item)."""
    _TRAJECTORIES[output] = tuple(trajectories)


def trajectory_of(output: Any) -> Trajectory | list[Trajectory]:
    """The trajectory behind an agent's output Variable (a list for a minibatch output).

    A :class:`Trajectory` (or a list of them) is returned as is.

    Raises:
        ValueError: ``output`` is a Variable that no agent run produced.
        TypeError: ``output`` is neither a Variable nor a Trajectory.

    Example:
        >>> from afnio_langchain.agents import AgentRunnable, trajectory_of
        >>> from afnio_langchain.testing import ToolCallingChatModel
        >>> agent = AgentRunnable(model=ToolCallingChatModel(turns=["Hello!"]), tools=[],
        ...                       system_prompt="Be kind.")
        >>> trajectory_of(agent.invoke("Hi")).num_steps
        1
    """
    if isinstance(output, Trajectory):
        return output
    if isinstance(output, list) and all(isinstance(t, Trajectory) for t in output):
        return list(output)
    if not isinstance(output, Variable):
        raise TypeError(
            f"expected an agent's output Variable or a Trajectory, got {type(output).__name__}"
        )
    found = _TRAJECTORIES.get(output)
    if found is None:
        raise ValueError(
            "this Variable was not produced by an agent run (no trajectory is attached); "
            "pass the Variable an agent returned, or a Trajectory"
        )
    return list(found) if output.is_batched else found[0]
