"""``AgentRunnable``: a tool-calling agent (langchain-core only) whose system prompt and
tool descriptions are trainable.

The loop is the usual one: the model (with ``bind_tools``) answers; its tool calls run
(concurrently) and their results, or their errors, go back to it as ``ToolMessage``s;
this repeats until it answers without calling a tool or reaches the step limit. The
whole run is one :class:`~afnio_langchain.agents._op.AgentRun` node of the
graph, so ``backward`` gives the prompt feedback written from the trajectory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.tools import tool as as_tool
from pydantic import Field

from afnio_langchain._aio import gather_all
from afnio_langchain.agents._base import AgentRunnableBase
from afnio_langchain.agents._op import AgentTask
from afnio_langchain.agents._prompts import (
    INVALID_TOOL_NAME_TEMPLATE,
    STEP_LIMIT_ANSWER,
    TOOL_CALL_ERROR_TEMPLATE,
)
from afnio_langchain.agents._trajectory import (
    Trajectory,
    trajectory_from_messages,
    trajectory_of,
)
from afnio_langchain.autodiff import Variable
from afnio_langchain.models import (
    RetryPolicy,
    as_model_client,
    call_slot,
    record_reply_usage,
    record_usage,
)

DEFAULT_PROMPT_ROLE = "system prompt of the agent"


class AgentStepLimitError(RuntimeError):
    """An agent run reached its step limit (raised when ``on_step_limit="raise"``).

    Attributes:
        trajectory: The run up to the limit.
    """

    def __init__(self, trajectory: Trajectory) -> None:
        self.trajectory = trajectory
        super().__init__(
            f"the agent reached its step limit ({trajectory.max_steps} model calls) "
            f"without a final answer on task {trajectory.task[:200]!r}"
        )


def tool_description_role(name: str) -> str:
    """The role given to the trainable description of tool ``name``."""
    return f"description of the tool {name!r}"


def as_tools(tools: Sequence[Any]) -> list[BaseTool]:
    """LangChain tools as given, plain functions turned into tools (as ``@tool`` does).

    Raises:
        TypeError: An item is neither a ``BaseTool`` nor a function.
        ValueError: Two tools share a name.
    """
    out: list[BaseTool] = []
    for k, item in enumerate(tools):
        if isinstance(item, BaseTool):
            out.append(item)
        elif callable(item) and not isinstance(item, type):
            out.append(as_tool(item))
        else:
            raise TypeError(
                f"tools[{k}] must be a LangChain tool (e.g. made with @tool) or a function, "
                f"got {type(item).__name__}"
            )
    names = [t.name for t in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"tool names must be unique; repeated: {duplicates}")
    return out


def with_descriptions(tools: Sequence[Any], descriptions: Mapping[str, str]) -> list[Any]:
    """Copies of the ``BaseTool``s in ``tools`` whose description ``descriptions`` names
    replaced by the new text; other items (provider tool dicts) are kept as they are."""
    return [
        t.model_copy(update={"description": descriptions[t.name]})
        if isinstance(t, BaseTool) and t.name in descriptions
        else t
        for t in tools
    ]


def trainable_tool_descriptions(
    tools: Sequence[Any], names: bool | Sequence[str] = True
) -> dict[str, Variable]:
    """Trainable Variables holding the current descriptions of ``tools`` (all of them,
    or those ``names`` lists), keyed by tool name.

    Raises:
        ValueError: ``names`` lists a tool that is not in ``tools``.
    """
    by_name = {t.name: t for t in as_tools(tools)}
    wanted = list(by_name) if names is True else [] if names is False else list(names)
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ValueError(f"no tool named {unknown}; the tools are {sorted(by_name)}")
    return {
        n: Variable(by_name[n].description, role=tool_description_role(n), requires_grad=True)
        for n in wanted
    }


def model_name_of(model: Any) -> str:
    """The name a model's usage is counted under (its client's ``model_name``)."""
    try:
        return as_model_client(model).model_name
    except TypeError:
        return type(model).__name__


class AgentRunnable(AgentRunnableBase):
    """A tool-calling agent whose system prompt (and tool descriptions) learn from
    feedback on its runs.

    The input is a task: a ``str``, a ``Variable``, a dict holding it under
    ``input_key``, or a list of tasks (a minibatch, run concurrently). The output is
    the final answer as a ``Variable`` connected to the graph; :func:`trajectory_of`
    gives the run behind it (steps, tool calls and arguments, results, errors).
    ``output.backward(feedback)`` asks the backward model, once per run, for feedback
    on every trainable Variable, showing it the whole trajectory.

    Args:
        model: A LangChain chat model that supports ``bind_tools``.
        tools: LangChain tools (``@tool``) or plain functions.
        system_prompt: The system prompt: a ``Variable`` (``requires_grad=True`` to
            train it) or a ``str`` (fixed). Read once per run (the value the run's
            gradients are about).
        tool_descriptions: Tool name -> Variable holding the description the model is
            shown for that tool (trainable when ``requires_grad``).
        train_tool_descriptions: ``True`` (all tools) or a list of tool names: make
            trainable Variables from the tools' current descriptions.
        max_steps: Model calls allowed per run. A run whose last allowed call still asks
            for tools stops there (its tool calls are not run).
        on_step_limit: ``"stop"``: answer :data:`STEP_LIMIT_ANSWER`; ``"raise"``: raise
            :class:`AgentStepLimitError`.
        handle_tool_errors: ``True``: a tool's exception is sent back to the model as an
            error ``ToolMessage`` (as LangChain's ``ToolNode`` does); a ``str``: that
            text is sent instead; a callable: its return value for the exception;
            ``False``: the exception propagates.
        backward_model: Model that writes gradients (default: the process one).
        output_role: Role of the output Variable.
        input_key: Key of the task in dict inputs.
        retry: Retry policy for transient model failures.
        **completion_args: Bound onto the model (``temperature``, ``max_tokens``...).

    Example:
        >>> from langchain_core.tools import tool
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.agents import AgentRunnable, trajectory_of
        >>> from afnio_langchain.testing import ToolCallingChatModel
        >>> @tool
        ... def order_status(order_id: int) -> str:
        ...     '''The shipping status of an order.'''
        ...     return "shipped"
        >>> model = ToolCallingChatModel(
        ...     turns=[{"name": "order_status", "args": {"order_id": 7}}, "It has shipped."],
        ...     feedback="Tell the agent to give the shipping date too.")
        >>> prompt = Variable("You are a support agent.", role="system prompt",
        ...                   requires_grad=True)
        >>> agent = AgentRunnable(model=model, tools=[order_status], system_prompt=prompt,
        ...                       backward_model=model)
        >>> answer = agent.invoke("Where is order 7?")
        >>> answer.data
        'It has shipped.'
        >>> run = trajectory_of(answer)
        >>> run.num_steps, [(c.name, c.args, c.output) for c in run.tool_calls]
        (2, [('order_status', {'order_id': 7}, 'shipped')])
        >>> answer.backward("The customer also wanted the date.")
        >>> prompt.grad[0].data
        'Tell the agent to give the shipping date too.'
        >>> agent.parameters() == [prompt]
        True
    """

    model: Any
    tools: list[Any] = Field(default_factory=list)
    system_prompt: Any = None
    tool_descriptions: dict[str, Any] = Field(default_factory=dict)
    max_steps: int = 10
    on_step_limit: Literal["stop", "raise"] = "stop"
    handle_tool_errors: Any = True
    retry: RetryPolicy | None = None
    completion_args: dict[str, Any] = Field(default_factory=dict)

    def __init__(self, **kwargs: Any) -> None:
        fields = type(self).model_fields
        train = kwargs.pop("train_tool_descriptions", False)
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in fields}
        kwargs["completion_args"] = {**(kwargs.get("completion_args") or {}), **extra}
        if kwargs.get("model") is None:
            raise TypeError("AgentRunnable needs model=... (a chat model that supports bind_tools)")
        tools = as_tools(kwargs.get("tools") or [])
        kwargs["tools"] = tools
        if tools and not hasattr(kwargs["model"], "bind_tools"):
            raise TypeError(
                f"AgentRunnable needs a chat model with bind_tools; "
                f"{type(kwargs['model']).__name__} has none"
            )
        prompt = kwargs.get("system_prompt")
        if prompt is None or isinstance(prompt, str):
            kwargs["system_prompt"] = Variable(prompt or "", role=DEFAULT_PROMPT_ROLE)
        elif not isinstance(prompt, Variable) or prompt.is_batched:
            raise TypeError(
                f"system_prompt must be a Variable holding one str, or a str; got {prompt!r:.100}"
            )
        descriptions = dict(kwargs.get("tool_descriptions") or {})
        if train:
            for name, variable in trainable_tool_descriptions(tools, train).items():
                descriptions.setdefault(name, variable)
        names = {t.name for t in tools}
        for name, variable in descriptions.items():
            if name not in names:
                raise ValueError(
                    f"tool_descriptions names {name!r}, which is not among the tools {sorted(names)}"
                )
            if not isinstance(variable, Variable) or variable.is_batched:
                raise TypeError(f"tool_descriptions[{name!r}] must be a Variable holding one str")
        kwargs["tool_descriptions"] = descriptions
        max_steps = kwargs.get("max_steps", 10)
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        handler = kwargs.get("handle_tool_errors", True)
        if not isinstance(handler, (bool, str)) and not callable(handler):
            raise TypeError("handle_tool_errors must be a bool, a str or a callable")
        super().__init__(**kwargs)

    def prompt_variables(self) -> tuple[Variable, dict[str, Variable]]:
        """The system prompt Variable and the tool-description Variables."""
        return self.system_prompt, dict(self.tool_descriptions)

    # -- one run ------------------------------------------------------------------------
    async def _call_model(
        self, model: Any, messages: list[BaseMessage], config: RunnableConfig, name: str
    ) -> AIMessage:
        """One model call: under the concurrency limit, retried, counted as forward."""
        policy = self.retry or RetryPolicy()

        def count_retry(_exc: BaseException) -> None:
            record_usage(name, "forward", calls=0, retries=1)

        async with call_slot():
            try:
                reply = await policy.call(
                    lambda: model.ainvoke(messages, config), on_retry=count_retry
                )
            except BaseException:
                record_usage(name, "forward", calls=0, failures=1)
                raise
        if not isinstance(reply, AIMessage):
            raise TypeError(
                f"the agent's model must return an AIMessage, got {type(reply).__name__}"
            )
        record_reply_usage(name, "forward", reply)
        return reply

    def _error_text(self, exc: Exception) -> str:
        handler = self.handle_tool_errors
        if handler is True:
            return TOOL_CALL_ERROR_TEMPLATE.format(error=repr(exc))
        if isinstance(handler, str):
            return handler
        return str(handler(exc))  # type: ignore[operator]

    async def _run_tool(self, call: Mapping[str, Any], config: RunnableConfig) -> ToolMessage:
        name, call_id = call.get("name", ""), call.get("id") or ""
        by_name = {t.name: t for t in self.tools}
        if name not in by_name:
            text = INVALID_TOOL_NAME_TEMPLATE.format(
                requested_tool=name, available_tools=", ".join(by_name)
            )
            return ToolMessage(text, tool_call_id=call_id, name=name, status="error")
        try:
            result = await by_name[name].ainvoke({**call, "type": "tool_call"}, config)
        except Exception as exc:
            if self.handle_tool_errors is False:
                raise
            return ToolMessage(
                self._error_text(exc), tool_call_id=call_id, name=name, status="error"
            )
        if isinstance(result, ToolMessage):
            return result
        return ToolMessage(str(result), tool_call_id=call_id, name=name)

    def _bound_model(self, descriptions: Mapping[str, str]) -> Any:
        model = self.model
        if self.tools:
            model = model.bind_tools(with_descriptions(self.tools, descriptions))
        if self.completion_args:
            model = model.bind(**self.completion_args)
        return model

    async def run_task(self, item: AgentTask, config: RunnableConfig) -> Trajectory:
        """Run the tool-calling loop on one task and return its trajectory."""
        model = self._bound_model(item.tool_descriptions)
        name = model_name_of(self.model)
        messages: list[BaseMessage] = []
        if item.system_prompt:
            messages.append(SystemMessage(item.system_prompt))
        messages.append(HumanMessage(item.task))
        start = len(messages)
        stopped = "step_limit"
        for step in range(self.max_steps):
            reply = await self._call_model(model, messages, config, name)
            messages.append(reply)
            if not reply.tool_calls:
                stopped = "final_answer"
                break
            if step == self.max_steps - 1:
                break  # the limit is reached: the requested tools are not run
            messages.extend(await gather_all([self._run_tool(c, config) for c in reply.tool_calls]))
        shown = {t.name: item.tool_descriptions.get(t.name, t.description) for t in self.tools}
        trajectory = trajectory_from_messages(
            item.task,
            messages[start:],
            system_prompt=item.system_prompt,
            stopped=stopped,  # type: ignore[arg-type]
            max_steps=self.max_steps,
            tools=shown,
            final_answer=STEP_LIMIT_ANSWER if stopped == "step_limit" else None,
        )
        if stopped == "step_limit" and self.on_step_limit == "raise":
            raise AgentStepLimitError(trajectory)
        return trajectory


__all__ = [
    "STEP_LIMIT_ANSWER",
    "AgentRunnable",
    "AgentStepLimitError",
    "as_tools",
    "model_name_of",
    "tool_description_role",
    "trainable_tool_descriptions",
    "trajectory_of",
    "with_descriptions",
]
