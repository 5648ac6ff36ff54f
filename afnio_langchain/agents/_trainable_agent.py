"""``TrainableAgent``: runs an agent built with ``create_agent`` or LangGraph and returns
its final answer as a Variable connected to the agent's trainable prompt.

The agent graph itself is not a node of the textual graph. Instead, each run happens
inside an :class:`~afnio_langchain.agents._op.AgentRun` op whose inputs are the
prompt Variables: the run's model calls are recorded (never in graph state, see
:mod:`afnio_langchain.agents._recording`), its trajectory is read from the messages
it returns, and ``backward(feedback)`` reaches the prompt through that op.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, convert_to_messages
from langchain_core.runnables import RunnableConfig

from afnio_langchain.agents._base import TASK_ROLE, AgentRunnableBase
from afnio_langchain.agents._op import AgentRunner, AgentTask
from afnio_langchain.agents._prompts import STEP_LIMIT_ANSWER
from afnio_langchain.agents._recording import (
    ModelCallRecord,
    TrainablePromptSource,
    recording,
)
from afnio_langchain.agents._trajectory import Trajectory, trajectory_from_messages
from afnio_langchain.autodiff import Variable
from afnio_langchain.models import message_text, record_reply_usage


def messages_of(state: Any, holder: str) -> list[BaseMessage]:
    """The ``messages`` list of an agent's graph state (a mapping or an object); a
    TypeError naming ``holder`` (what should have held it) otherwise."""
    messages = (
        state.get("messages") if isinstance(state, Mapping) else getattr(state, "messages", None)
    )
    if not isinstance(messages, list):
        raise TypeError(
            f"{holder} must hold a 'messages' list (as create_agent and LangGraph agents "
            f"keep), got {type(state).__name__}"
        )
    return messages


def _after(messages: list[BaseMessage], message_id: str) -> list[BaseMessage]:
    for k, message in enumerate(messages):
        if getattr(message, "id", None) == message_id:
            return messages[k + 1 :]
    raise RuntimeError("the agent's final state does not contain the task message it was given")


UNKNOWN_MODEL = "unknown model"
"""The model name usage is counted under when neither the reply nor the call names it."""


def _record_usage(messages: list[BaseMessage], calls: Sequence[ModelCallRecord]) -> None:
    """Count each model reply of the run under its model's name (from the reply, else
    from the recorded call)."""
    replies = [m for m in messages if isinstance(m, AIMessage)]
    for k, message in enumerate(replies):
        call = calls[min(k, len(calls) - 1)] if calls else None
        model = (
            (message.response_metadata or {}).get("model_name")
            or (call.model_name if call is not None else None)
            or UNKNOWN_MODEL
        )
        record_reply_usage(str(model), "forward", message)


def conversation_of(messages: Any) -> tuple[list[BaseMessage], HumanMessage]:
    """The history and the user's last message of an agent's ``{"messages": [...]}``
    input (LangChain messages, ``(role, text)`` pairs or role/content dicts).

    Raises:
        ValueError: The list is empty or does not end with a user message.
    """
    converted = convert_to_messages(messages) if isinstance(messages, list) else None
    if not converted or not isinstance(converted[-1], HumanMessage):
        raise ValueError(
            "an agent input {'messages': [...]} must end with the user's message (the task); "
            f"got {messages!r:.200}"
        )
    last = converted[-1]
    if last.id is None:
        last = last.model_copy(update={"id": f"afnio-task-{uuid.uuid4().hex}"})
    return converted[:-1], last


class TrainableAgent(AgentRunnableBase):
    """An externally built agent as a differentiable step: task in, final-answer
    Variable out, feedback back to the prompt Variables its ``prompt`` source holds.

    Args:
        agent: The compiled agent (``create_agent(...)`` with a
            :class:`~afnio_langchain.agents._create_agent.TrainablePromptMiddleware`,
            or a LangGraph agent whose prompt is a
            :class:`~afnio_langchain.agents._langgraph.TrainablePrompt`).
        prompt: That middleware or callable prompt (any
            :class:`~afnio_langchain.agents._recording.TrainablePromptSource`).
        backward_model: Model that writes gradients (default: the process one).
        output_role: Role of the output Variable.
        input_key: Key of the task in dict inputs.

    The input is a task (``str``, ``Variable``, dict with ``input_key``, or a list of
    tasks run concurrently), or the agent's own input ``{"messages": [...]}`` (the task
    is the last, user, message; the messages before it are sent along as history). Each
    run gets its own ``thread_id`` when the agent has a checkpointer and the config
    names none; a ``thread_id`` given in the config is kept (the thread's memory is
    used). The agent's runtime ``context`` (``create_agent(context_schema=...)``) is
    given as ``invoke(..., context=...)`` or under ``input["context"]``. ``trajectory_of(output)`` gives the runs; a run with a ``response_format``
    answers with its structured response (as JSON text).

    Example:
        >>> import warnings
        >>> from langchain.agents import create_agent
        >>> from langchain_core.tools import tool
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.agents import TrainableAgent
        >>> from afnio_langchain.agents import TrainablePromptMiddleware
        >>> from afnio_langchain.testing import ToolCallingChatModel
        >>> @tool
        ... def order_status(order_id: int) -> str:
        ...     '''The shipping status of an order.'''
        ...     return "shipped"
        >>> model = ToolCallingChatModel(
        ...     turns=[{"name": "order_status", "args": {"order_id": 7}}, "It has shipped."],
        ...     feedback="Ask for the delivery date as well.")
        >>> prompt = Variable("You are a support agent.", role="system prompt", requires_grad=True)
        >>> middleware = TrainablePromptMiddleware(prompt)
        >>> agent = create_agent(model, [order_status], middleware=[middleware])
        >>> trainable = TrainableAgent(agent=agent, prompt=middleware, backward_model=model)
        >>> answer = trainable.invoke("Where is order 7?")
        >>> answer.data
        'It has shipped.'
        >>> answer.backward("Give the delivery date too.")
        >>> prompt.grad[0].data
        'Ask for the delivery date as well.'
        >>> trainable.invoke({"messages": [{"role": "user", "content": "Where is order 7?"}]}).data
        'It has shipped.'
    """

    agent: Any
    prompt: Any

    def __init__(self, **kwargs: Any) -> None:
        if not isinstance(kwargs.get("prompt"), TrainablePromptSource):
            raise TypeError(
                "TrainableAgent needs prompt=... : the TrainablePromptMiddleware or "
                "TrainablePrompt the agent was built with"
            )
        agent = kwargs.get("agent")
        if agent is None or not hasattr(agent, "ainvoke"):
            raise TypeError("TrainableAgent needs agent=... : a compiled agent (a Runnable)")
        super().__init__(**kwargs)

    def prompt_variables(self) -> tuple[Variable, dict[str, Variable]]:
        """The Variables of the prompt source the agent reads."""
        return self.prompt.system_prompt, dict(self.prompt.tool_descriptions)

    def _config_for(self, config: RunnableConfig) -> RunnableConfig:
        configurable = dict(config.get("configurable") or {})
        if getattr(self.agent, "checkpointer", None) and "thread_id" not in configurable:
            configurable["thread_id"] = f"afnio-{uuid.uuid4().hex}"
        return {**config, "configurable": configurable}

    def prepare(
        self, input: Any, config: RunnableConfig
    ) -> tuple[AgentRunner, Variable | list[Variable]]:
        """Like the base, and also the agent's own input shape ``{"messages": [...]}``."""
        context = input.get("context") if isinstance(input, Mapping) else None
        if isinstance(input, Mapping) and self.input_key not in input and "messages" in input:
            history, last = conversation_of(input["messages"])
            runner = functools.partial(
                self.run_task, config=config, history=history, message=last, context=context
            )
            return runner, Variable(message_text(last), role=TASK_ROLE)
        runner, task = super().prepare(input, config)
        return functools.partial(runner, context=context), task

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, *, context: Any = None, **kwargs: Any
    ) -> Variable:
        """Run on ``input``; ``context`` is the agent's runtime context, as
        ``agent.invoke(..., context=...)`` takes it (also read from ``input["context"]``)."""
        return super().invoke(self._with_context(input, context), config, **kwargs)

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, *, context: Any = None, **kwargs: Any
    ) -> Variable:
        """Async :meth:`invoke`."""
        return await super().ainvoke(self._with_context(input, context), config, **kwargs)

    def _with_context(self, input: Any, context: Any) -> Any:
        if context is None:
            return input
        as_dict = dict(input) if isinstance(input, Mapping) else {self.input_key: input}
        return {**as_dict, "context": context}

    async def run_task(
        self,
        item: AgentTask,
        config: RunnableConfig,
        history: Sequence[BaseMessage] = (),
        message: HumanMessage | None = None,
        context: Any = None,
    ) -> Trajectory:
        """Run the agent on one task (after ``history``; ``message`` is the task's own
        message when the input gave one; ``context`` the agent's runtime context),
        recording its model calls, and read its trajectory."""
        task = message or HumanMessage(item.task, id=f"afnio-task-{uuid.uuid4().hex}")
        extra = {} if context is None else {"context": context}
        with recording(self.prompt) as run:
            state = await self.agent.ainvoke(
                {"messages": [*history, task]}, self._config_for(config), **extra
            )
        if isinstance(state, Mapping) and state.get("__interrupt__"):
            raise RuntimeError(
                "the agent paused for input (a LangGraph interrupt, such as "
                "HumanInTheLoopMiddleware's approval): a paused run has no answer to score "
                "or train on; train the agent without the interrupting middleware, or "
                "resume it with Command(resume=...) outside training"
            )
        calls = run.calls
        if not calls:
            raise RuntimeError(
                "the agent never read its trainable prompt: build it with "
                "create_agent(..., middleware=[TrainablePromptMiddleware(prompt)]) or "
                "create_react_agent(..., prompt=TrainablePrompt(prompt)), and give that "
                "same object to TrainableAgent(prompt=...)"
            )
        messages = _after(messages_of(state, "the state the agent returns"), str(task.id))
        _record_usage(messages, calls)
        last = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
        # LangGraph's prebuilt agent answers this text when it runs out of steps.
        out_of_steps = last is not None and message_text(last) == STEP_LIMIT_ANSWER
        structured = state.get("structured_response") if isinstance(state, Mapping) else None
        names = {name for call in calls for name in call.structured_output_tools}
        return trajectory_from_messages(
            item.task,
            messages,
            system_prompt=calls[0].system_prompt,
            tools=calls[0].tool_descriptions,
            stopped="step_limit" if out_of_steps else None,
            structured_response=structured,
            structured_tools=names or None,
        )


__all__ = ["TrainableAgent"]
