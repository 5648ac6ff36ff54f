"""A ``langchain.agents`` middleware that makes an agent built with ``create_agent``
trainable without changing how it is built.

Needs ``pip install 'afnio-langchain[agents]'`` (langchain>=1.0).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

try:
    from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "afnio_langchain.agents._create_agent needs langchain>=1.0 (its "
        "create_agent middleware API): pip install 'afnio-langchain[agents]'"
    ) from exc

from langchain_core.messages import AIMessage, SystemMessage
from langchain_core.tools import BaseTool

from afnio_langchain.agents._recording import ModelCallRecord, TrainablePromptSource
from afnio_langchain.agents._runnable import with_descriptions
from afnio_langchain.autodiff import Variable


def _reply_of(response: Any) -> AIMessage | None:
    """The AIMessage of a model call's result (ModelResponse, AIMessage, or extended)."""
    if isinstance(response, AIMessage):
        return response
    inner = getattr(response, "model_response", response)
    for message in getattr(inner, "result", []) or []:
        if isinstance(message, AIMessage):
            return message
    return None


def _shown_tools(tools: Sequence[Any]) -> dict[str, str]:
    return {t.name: t.description for t in tools if isinstance(t, BaseTool)}


class TrainablePromptMiddleware(AgentMiddleware, TrainablePromptSource):
    """Sets an agent's system prompt (and tool descriptions) from Variables at every
    model call.

    Add it to ``create_agent(..., middleware=[...])``; the agent is built and run as
    usual. Before each model call the middleware reads the system prompt Variable's
    current value (replacing any ``system_prompt`` given to ``create_agent``) and the
    tool-description Variables' values (for the tools they name). Nothing is written
    into graph state: Variables never reach checkpoints. Wrap the agent in
    :class:`~afnio_langchain.agents.TrainableAgent` to get final answers as
    Variables connected to these prompts; inside such a run each model call (prompt
    text, messages, reply) is recorded for the trajectory.

    Args:
        system_prompt: The system prompt Variable (``requires_grad=True`` to train it).
        tool_descriptions: Tool name -> Variable holding that tool's description.

    Example:
        >>> from langchain.agents import create_agent
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.agents import TrainablePromptMiddleware
        >>> from afnio_langchain.testing import ToolCallingChatModel
        >>> model = ToolCallingChatModel(turns=["Hello!"])
        >>> prompt = Variable("Greet the user.", role="system prompt", requires_grad=True)
        >>> agent = create_agent(model, [], middleware=[TrainablePromptMiddleware(prompt)])
        >>> agent.invoke({"messages": [("user", "hi")]})["messages"][-1].content
        'Hello!'
        >>> model.calls[0].messages[0].content
        'Greet the user.'
    """

    def __init__(
        self,
        system_prompt: Variable,
        tool_descriptions: Mapping[str, Variable] | None = None,
    ) -> None:
        TrainablePromptSource.__init__(self, system_prompt, tool_descriptions)
        self.tools = []

    @property
    def name(self) -> str:
        return "TrainablePromptMiddleware"

    def _prepared(self, request: ModelRequest) -> ModelRequest:
        overrides: dict[str, Any] = {"system_message": SystemMessage(str(self.system_prompt.data))}
        if self.tool_descriptions:
            overrides["tools"] = with_descriptions(request.tools, self.current_descriptions())
        return request.override(**overrides)

    def _record(self, request: ModelRequest, response: Any) -> None:
        self.record(
            ModelCallRecord(
                system_prompt=request.system_prompt or "",
                tool_descriptions=_shown_tools(request.tools),
                messages=tuple(request.messages),
                response=_reply_of(response),
            )
        )

    def wrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], ModelResponse],
    ) -> Any:
        """Replace the system prompt (and tool descriptions), call the model, record."""
        request = self._prepared(request)
        response = handler(request)
        self._record(request, response)
        return response

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> Any:
        """Async :meth:`wrap_model_call`."""
        request = self._prepared(request)
        response = await handler(request)
        self._record(request, response)
        return response


__all__ = ["TrainablePromptMiddleware"]
