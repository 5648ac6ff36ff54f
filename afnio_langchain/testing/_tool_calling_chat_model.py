"""``ToolCallingChatModel``: a scripted LangChain chat model that plays an agent's turns.

It plays an agent's part (``bind_tools``, replies with tool calls or a final answer, one
scripted sequence per conversation) and, like
:class:`~afnio_langchain.testing.ScriptedChatModel` (whose standard chat-model behaviour
it shares), answers the package's backward, optimizer and judge calls, so agents can be
trained offline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

from afnio_langchain.testing._scripted_chat_model import (
    ScriptedChatModel,
    ScriptedRequest,
    Turn,
    check_turn,
)

AgentTurnRequest = ScriptedRequest
"""What a ``turns`` callable of :class:`ToolCallingChatModel` receives: a
:class:`~afnio_langchain.testing.ScriptedRequest` (messages, system prompt, task, step,
tool results so far, bound tools, ``tool_choice``, ``response_format``).

Example:
    >>> from langchain_core.tools import tool
    >>> from afnio_langchain.agents import AgentRunnable
    >>> from afnio_langchain.testing import ToolCallingChatModel
    >>> @tool
    ... def lookup(order_id: int) -> str:
    ...     '''Look an order up.'''
    ...     return "shipped"
    >>> def turn(request):  # an AgentTurnRequest: messages, tools, step, tool results...
    ...     if not request.tool_results:
    ...         return {"name": "lookup", "args": {"order_id": 7}}
    ...     return f"{request.task} {request.tool_results[-1].content} (step {request.step})"
    >>> agent = AgentRunnable(model=ToolCallingChatModel(turns=turn), tools=[lookup])
    >>> agent.invoke("Order 7:").data
    'Order 7: shipped (step 1)'
"""


class ToolCallingChatModel(ScriptedChatModel):
    """A scripted tool-calling chat model for offline tests of agents.

    ``turns`` scripts the agent's forward calls. A list gives, for each conversation,
    its first reply, then its second... (indexed by how many replies the current task
    already has, so concurrent runs each get their own sequence; past the end the last
    turn repeats). A callable receives an :data:`AgentTurnRequest` (the messages, the
    system prompt, the task, the tool results so far, the bound tools) and returns a
    turn. A turn is a final answer (``str``), a tool call
    (``{"name": "lookup", "args": {"id": 7}}``), a list of tool calls, or an
    ``AIMessage``. Backward, optimizer and judge calls are answered by ``feedback``,
    ``optimizer`` and ``judge`` as in :class:`ScriptedChatModel`; without ``turns``,
    forward calls are answered by ``forward``. Everything else (usage, streaming,
    ``tool_choice``, structured output, ``stop``, copying) is
    :class:`ScriptedChatModel`'s.

    Args:
        turns: The scripted replies of forward calls (see above).
        **kwargs: ``forward``, ``feedback``, ``optimizer``, ``judge``, ``latency``,
            ``model_name`` and the standard settings, as for :class:`ScriptedChatModel`.

    Example:
        >>> from langchain_core.messages import HumanMessage
        >>> from langchain_core.tools import tool
        >>> from afnio_langchain.testing import ToolCallingChatModel
        >>> @tool
        ... def lookup(order_id: int) -> str:
        ...     '''Look an order up.'''
        ...     return "shipped"
        >>> model = ToolCallingChatModel(turns=[{"name": "lookup", "args": {"order_id": 7}},
        ...                                     "Order 7 has shipped."])
        >>> reply = model.bind_tools([lookup]).invoke([HumanMessage("Where is order 7?")])
        >>> reply.tool_calls[0]["name"], reply.tool_calls[0]["args"]
        ('lookup', {'order_id': 7})
        >>> model.calls[0].kwargs["tools"][0]["function"]["name"]
        'lookup'
    """

    turns: Any = None

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        if self.turns is None or callable(self.turns):
            return
        if not isinstance(self.turns, list) or not self.turns:
            raise TypeError("turns must be a non-empty list of turns or a callable")
        for k, turn in enumerate(self.turns):
            check_turn(turn, f"turns[{k}]")

    @property
    def _llm_type(self) -> str:
        return "afnio-tool-calling-scripted"

    def _script_reply(self, request: ScriptedRequest) -> Any:
        if self.turns is None or request.kind != "forward":
            return super()._script_reply(request)
        if callable(self.turns):
            return self.turns(request)
        return self.turns[min(request.step, len(self.turns) - 1)]


ToolCallingScript = Union[list[Turn], Callable[[AgentTurnRequest], Turn]]

__all__ = ["AgentTurnRequest", "ToolCallingChatModel", "ToolCallingScript", "Turn"]
