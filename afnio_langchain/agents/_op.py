"""``AgentRun``: a whole tool-calling agent run as one differentiable operation.

Its inputs are the system prompt Variable, the tool-description Variables and the task
(a Variable, a minibatch Variable or a list of them); its output is the final answer.
Forward hands each task to a *runner* (the package's own agent loop, or a wrapper that
runs a ``create_agent``/LangGraph agent) and keeps the trajectories it returns. Backward
makes one model call per item with feedback, showing the whole trajectory (tool calls,
arguments, results, errors, step count) and asking for one gradient per trainable
input, so feedback about *how* the agent worked reaches the prompt, not only feedback
about its answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from afnio_langchain._aio import gather_all
from afnio_langchain.agents._prompts import agent_backward_messages
from afnio_langchain.agents._trajectory import Trajectory, remember_trajectories
from afnio_langchain.autodiff import (
    Conversation,
    FunctionCtx,
    LLMFunction,
    Slot,
    Variable,
    VariableSpec,
)
from afnio_langchain.models import Message

DEFAULT_AGENT_OUTPUT_ROLE = "final answer of the agent"


@dataclass(frozen=True)
class AgentTask:
    """What a runner receives for one minibatch item.

    Attributes:
        task: The task text (the user message).
        system_prompt: The current value of the system prompt.
        tool_descriptions: Tool name -> current value of its trainable description.
        index: The item's position in the minibatch (0 for a single task).

    Example:
        >>> from langchain_core.messages import AIMessage
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.agents._op import AgentRun
        >>> from afnio_langchain.agents._trajectory import trajectory_from_messages
        >>> seen = []
        >>> async def runner(item):  # receives one AgentTask per minibatch item
        ...     seen.append(item)
        ...     return trajectory_from_messages(item.task, [AIMessage("On its way.")])
        >>> prompt = Variable("Be brief.", role="system prompt", requires_grad=True)
        >>> tools = {"lookup": Variable("Look an order up.", role="tool description")}
        >>> _ = AgentRun.apply(runner, prompt, tools, Variable(["Order 7?", "Order 8?"]))
        >>> [(t.index, t.task) for t in sorted(seen, key=lambda t: t.index)]
        [(0, 'Order 7?'), (1, 'Order 8?')]
        >>> seen[0].system_prompt, seen[0].tool_descriptions
        ('Be brief.', {'lookup': 'Look an order up.'})
    """

    task: str
    system_prompt: str
    tool_descriptions: dict[str, str] = field(default_factory=dict)
    index: int = 0


AgentRunner = Callable[[AgentTask], Awaitable[Trajectory]]
"""Runs one task and returns its :class:`Trajectory`."""


def _check_inputs(
    runner: Any, system_prompt: Any, tool_descriptions: Any, task: Any
) -> tuple[list[str], bool]:
    if not callable(runner):
        raise TypeError(f"runner must be an async callable, got {type(runner).__name__}")
    if not isinstance(system_prompt, Variable) or system_prompt.is_batched:
        raise TypeError(
            "system_prompt must be a Variable holding one str, got "
            + (
                "a minibatch Variable"
                if isinstance(system_prompt, Variable)
                else type(system_prompt).__name__
            )
        )
    if not isinstance(tool_descriptions, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Variable) and not v.is_batched
        for k, v in tool_descriptions.items()
    ):
        raise TypeError("tool_descriptions must be a dict of tool name -> Variable (one str each)")
    if isinstance(task, Variable):
        return [str(t) for t in task.items()], task.is_batched
    if isinstance(task, list) and task and all(isinstance(t, (Variable, str)) for t in task):
        for t in task:
            if isinstance(t, Variable) and t.is_batched:
                raise TypeError("a list of tasks cannot hold minibatch Variables")
        return [str(t.data) if isinstance(t, Variable) else t for t in task], True
    raise TypeError(
        "task must be a Variable (one task or a minibatch), or a non-empty list of "
        f"Variables or str, got {type(task).__name__}"
    )


def _slots(
    system_prompt: Variable, tool_descriptions: Mapping[str, Variable], task: Any
) -> list[Slot]:
    slots = [Slot(system_prompt), *(Slot(v) for v in tool_descriptions.values())]
    if isinstance(task, list):
        slots += [Slot(t, item=i) for i, t in enumerate(task) if isinstance(t, Variable)]
    else:
        slots.append(Slot(task))
    return slots


def _transcript(trajectory: Trajectory) -> list[Message]:
    return [
        {"role": "system", "content": trajectory.system_prompt},
        {"role": "user", "content": trajectory.task},
        {"role": "assistant", "content": trajectory.final_answer},
    ]


class AgentRun(LLMFunction):
    """A tool-calling agent run whose system prompt, tool descriptions and task receive
    textual gradients computed from the whole trajectory.

    ``runner(AgentTask) -> Trajectory`` (async) runs one task with the given prompt and
    tool descriptions; minibatch items run concurrently. The output's ``data`` is the
    final answer (a list for a minibatch) and :func:`trajectory_of` gives the runs.

    Reserved keyword arguments: ``backward_model`` (the model writing gradients;
    default: :func:`~afnio_langchain.set_backward_model`) and ``output_role``.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.agents._op import AgentRun
        >>> from afnio_langchain.agents._trajectory import trajectory_from_messages
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> from langchain_core.messages import AIMessage
        >>> async def runner(item):
        ...     return trajectory_from_messages(item.task, [AIMessage("I cannot check that.")],
        ...                                     system_prompt=item.system_prompt)
        >>> prompt = Variable("Answer from memory.", role="system prompt", requires_grad=True)
        >>> answer = AgentRun.apply(runner, prompt, {}, Variable("Where is order 7?"),
        ...     backward_model=ScriptedChatModel(feedback="Tell it to look orders up."))
        >>> answer.data
        'I cannot check that.'
        >>> answer.backward("It should have used the order tool.")
        >>> prompt.grad[0].data
        'Tell it to look orders up.'
    """

    @staticmethod
    async def aforward(
        ctx: FunctionCtx,
        runner: AgentRunner,
        system_prompt: Variable,
        tool_descriptions: Mapping[str, Variable],
        task: Variable | list[Variable | str],
        backward_model: Any = None,
        output_role: str = DEFAULT_AGENT_OUTPUT_ROLE,
    ) -> Variable:
        tasks, batched = _check_inputs(runner, system_prompt, tool_descriptions, task)
        prompt_text = str(system_prompt.data)
        descriptions = {name: str(v.data) for name, v in tool_descriptions.items()}
        trajectories = await gather_all(
            [
                runner(AgentTask(text, prompt_text, dict(descriptions), i))
                for i, text in enumerate(tasks)
            ]
        )
        for i, trajectory in enumerate(trajectories):
            if not isinstance(trajectory, Trajectory):
                raise TypeError(
                    f"the agent runner must return a Trajectory, got "
                    f"{type(trajectory).__name__} for item {i}"
                )
        ctx.trajectories = trajectories
        ctx.conversation = Conversation(
            items=[_transcript(t) for t in trajectories],
            batched=batched,
            slots=_slots(system_prompt, tool_descriptions, task),
        )
        ctx.backward_model = backward_model
        ctx.output_role = output_role
        answers = [t.final_answer for t in trajectories]
        output = Variable(answers if batched else answers[0], role=output_role)
        remember_trajectories(output, trajectories)
        return output

    @staticmethod
    def backward_messages(
        ctx: FunctionCtx, item: int, variables: Sequence[VariableSpec], feedback: str
    ) -> list[Message]:
        """The agent backward prompt: the whole trajectory of run ``item`` and its feedback."""
        return agent_backward_messages(ctx.trajectories[item], ctx.output_role, feedback, variables)


__all__ = ["DEFAULT_AGENT_OUTPUT_ROLE", "AgentRun", "AgentRunner", "AgentTask"]
