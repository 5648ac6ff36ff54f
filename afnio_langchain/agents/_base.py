"""The Runnable face shared by every trainable agent: task in, final-answer Variable out.

Subclasses say where the prompt Variables are (:meth:`AgentRunnableBase.prompt_variables`)
and how one task runs (:meth:`AgentRunnableBase.run_task`); this base turns inputs into
tasks, runs them inside one :class:`~afnio_langchain.agents._op.AgentRun` op and
provides ``invoke``/``ainvoke``/``batch``/``abatch`` with LangChain tracing.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Mapping
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.utils.pydantic import create_model_v2
from pydantic import ConfigDict

from afnio_langchain.agents._op import (
    DEFAULT_AGENT_OUTPUT_ROLE,
    AgentRun,
    AgentRunner,
    AgentTask,
)
from afnio_langchain.agents._trajectory import Trajectory
from afnio_langchain.autodiff import Variable
from afnio_langchain.runnables import VariableRunnable, as_variables

TASK_ROLE = "task"


class AgentRunnableBase(VariableRunnable):
    """Base of trainable agents (see :class:`~afnio_langchain.agents._runnable.AgentRunnable`).

    The input is a task: a ``str``, a ``Variable`` (one task or a minibatch), a dict
    holding it under ``input_key``, or a non-empty list of tasks (run concurrently, one
    list-valued output). ``batch``/``abatch`` give one output (one graph) per input.

    Attributes:
        backward_model: Model that writes gradients (default: the process one).
        output_role: Role of the output Variable.
        input_key: Key of the task in dict inputs.

    Example:
        >>> from langchain_core.messages import AIMessage
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.agents._base import AgentRunnableBase
        >>> from afnio_langchain.agents._trajectory import trajectory_from_messages
        >>> class EchoAgent(AgentRunnableBase):
        ...     prompt: Variable
        ...     def prompt_variables(self):
        ...         return self.prompt, {}
        ...     async def run_task(self, item, config):
        ...         return trajectory_from_messages(item.task, [AIMessage(item.task.upper())])
        >>> agent = EchoAgent(prompt=Variable("Shout.", role="system prompt", requires_grad=True))
        >>> [answer.data for answer in agent.batch(["hi", {"input": "bye"}])]
        ['HI', 'BYE']
        >>> agent.parameters() == [agent.prompt]
        True
    """

    backward_model: Any = None
    output_role: str = DEFAULT_AGENT_OUTPUT_ROLE
    input_key: str = "input"

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @abc.abstractmethod
    def prompt_variables(self) -> tuple[Variable, dict[str, Variable]]:
        """The system prompt Variable and the tool-description Variables (by tool name)."""

    @abc.abstractmethod
    async def run_task(self, item: AgentTask, config: RunnableConfig) -> Trajectory:
        """Run one task with the prompt texts in ``item`` and return its trajectory."""

    def parameters(self) -> list[Variable]:
        """The trainable Variables: the system prompt, then tool descriptions (those with
        ``requires_grad``)."""
        prompt, descriptions = self.prompt_variables()
        return [v for v in [prompt, *descriptions.values()] if v.requires_grad]

    def get_input_schema(self, config: RunnableConfig | None = None) -> Any:
        return create_model_v2(self.get_name("Input"), root=(Any, ...))

    @property
    def OutputType(self) -> type[Variable]:  # noqa: N802
        return Variable

    # -- running ----------------------------------------------------------------------
    def task_of(self, input: Any) -> Variable | list[Variable]:
        """The task(s) in ``input`` as Variables.

        Raises:
            KeyError: A dict input lacks ``input_key``.
            TypeError: The input is not a task.
        """
        value = input
        if isinstance(input, Mapping):
            if self.input_key not in input:
                raise KeyError(
                    f"{self.get_name()} takes the task under {self.input_key!r}; "
                    f"got keys {sorted(input)}"
                )
            value = input[self.input_key]
        if value != [] and not isinstance(value, (int, float)):  # a number is no task
            try:
                return as_variables(value, TASK_ROLE, f"{self.get_name()}'s task")
            except TypeError:
                pass
        raise TypeError(
            f"{self.get_name()} takes a task: a str, a Variable, a dict with "
            f"{self.input_key!r}, or a non-empty list of tasks; got {type(value).__name__}"
        )

    def prepare(
        self, input: Any, config: RunnableConfig
    ) -> tuple[AgentRunner, Variable | list[Variable]]:
        """The runner for ``input`` and its task(s) (subclasses take more input shapes)."""
        return functools.partial(self.run_task, config=config), self.task_of(input)

    async def _ainvoke(self, input: Any, config: RunnableConfig) -> Variable:
        prompt, descriptions = self.prompt_variables()
        kwargs: dict[str, Any] = {"output_role": self.output_role}
        if self.backward_model is not None:
            kwargs["backward_model"] = self.backward_model
        runner, task = self.prepare(input, config)
        return await AgentRun.aapply(runner, prompt, descriptions, task, **kwargs)


__all__ = ["TASK_ROLE", "AgentRunnableBase"]
