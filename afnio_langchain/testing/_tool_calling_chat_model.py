"""``ToolCallingChatModel``: a scripted LangChain chat model that calls tools.

It plays an agent's part (``bind_tools``, replies with tool calls or a final answer)
and, like :class:`~afnio_langchain.testing.ScriptedChatModel`, answers the package's
backward, optimizer and judge calls, so agents can be trained offline.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import PrivateAttr

from afnio_langchain.models import message_text
from afnio_langchain.testing._scripted_chat_model import ScriptedCall, ScriptedChatModel

Turn = Union[str, Mapping[str, Any], Sequence[Mapping[str, Any]], AIMessage]
"""One scripted reply: a final answer (``str``), one tool call (``{"name": ..., "args":
{...}}``), several tool calls (a list of them), or a ready ``AIMessage``."""


@dataclass(frozen=True)
class AgentTurnRequest:
    """What a ``turns`` callable of :class:`ToolCallingChatModel` receives.

    Attributes:
        messages: The LangChain messages of the call (system prompt included when sent).
        tools: The tool schemas bound with ``bind_tools`` (OpenAI format).

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

    messages: list[BaseMessage]
    tools: list[dict[str, Any]]

    def _since_task(self) -> list[BaseMessage]:
        for k in range(len(self.messages) - 1, -1, -1):
            if isinstance(self.messages[k], HumanMessage):
                return self.messages[k + 1 :]
        return list(self.messages)

    @property
    def system_prompt(self) -> str:
        """The text of the first system message ('' when there is none)."""
        for message in self.messages:
            if isinstance(message, SystemMessage):
                return message_text(message)
        return ""

    @property
    def task(self) -> str:
        """The text of the last user message ('' when there is none)."""
        for message in reversed(self.messages):
            if isinstance(message, HumanMessage):
                return message_text(message)
        return ""

    @property
    def step(self) -> int:
        """How many model replies the current task already has (0 on its first call)."""
        return sum(isinstance(m, AIMessage) for m in self._since_task())

    @property
    def tool_results(self) -> list[ToolMessage]:
        """The tool messages received since the task."""
        return [m for m in self._since_task() if isinstance(m, ToolMessage)]

    @property
    def tool_descriptions(self) -> dict[str, str]:
        """Tool name -> the description the model was shown."""
        out = {}
        for schema in self.tools:
            function = schema.get("function", schema)
            out[str(function.get("name", ""))] = str(function.get("description", ""))
        return out


def _check_turn(turn: Any, where: str) -> None:
    if isinstance(turn, (str, AIMessage)):
        return
    calls = [turn] if isinstance(turn, Mapping) else turn
    if not isinstance(calls, Sequence) or not calls:
        raise TypeError(
            f"{where}: a turn must be a str, an AIMessage, a tool call dict "
            f"({{'name': ..., 'args': {{...}}}}) or a non-empty list of them, got {turn!r:.200}"
        )
    for call in calls:
        if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
            raise TypeError(
                f"{where}: a tool call must be a dict with a str 'name', got {call!r:.200}"
            )
        if not isinstance(call.get("args", {}), Mapping):
            raise TypeError(
                f"{where}: tool call 'args' must be a dict, got {call.get('args')!r:.200}"
            )


class ToolCallingChatModel(ScriptedChatModel):
    """A scripted tool-calling chat model for offline tests of agents.

    ``turns`` scripts the agent's forward calls. A list gives, for each conversation,
    its first reply, then its second... (indexed by how many replies the current task
    already has, so concurrent runs each get their own sequence; past the end the last
    turn repeats). A callable receives an :class:`AgentTurnRequest` (the messages, the
    system prompt, the task, the tool results so far, the bound tools) and returns a
    turn. A turn is a final answer (``str``), a tool call
    (``{"name": "lookup", "args": {"id": 7}}``), a list of tool calls, or an
    ``AIMessage``. Backward, optimizer and judge calls are answered by ``feedback``,
    ``optimizer`` and ``judge`` as in :class:`ScriptedChatModel`; without ``turns``,
    forward calls are answered by ``forward``.

    Args:
        turns: The scripted replies of forward calls (see above).
        **kwargs: ``forward``, ``feedback``, ``optimizer``, ``judge``, ``latency`` as for
            :class:`ScriptedChatModel`.

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

    _ids: Any = PrivateAttr(default_factory=lambda: itertools.count(1))
    _id_lock: Any = PrivateAttr(default_factory=threading.Lock)

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        if self.turns is None or callable(self.turns):
            return
        if not isinstance(self.turns, list) or not self.turns:
            raise TypeError("turns must be a non-empty list of turns or a callable")
        for k, turn in enumerate(self.turns):
            _check_turn(turn, f"turns[{k}]")

    @property
    def _llm_type(self) -> str:
        return "afnio-tool-calling-scripted"

    def bind_tools(
        self,
        tools: Sequence[Any],
        *,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (LangChain tools, functions, pydantic models or schema dicts)."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    # -- answering ----------------------------------------------------------------------
    def _next_id(self) -> str:
        with self._id_lock:
            return f"call_{next(self._ids)}"

    def _as_message(self, turn: Any, where: str) -> AIMessage:
        _check_turn(turn, where)
        if isinstance(turn, AIMessage):
            return turn
        if isinstance(turn, str):
            return AIMessage(content=turn)
        calls = [turn] if isinstance(turn, Mapping) else list(turn)
        return AIMessage(
            content="",
            tool_calls=[
                {
                    "name": call["name"],
                    "args": dict(call.get("args", {})),
                    "id": call.get("id") or self._next_id(),
                    "type": "tool_call",
                }
                for call in calls
            ],
        )

    def _turn(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        call = ScriptedCall("forward", list(messages), dict(kwargs))
        with self._lock:
            self._calls.append(call)
        request = AgentTurnRequest(list(messages), list(kwargs.get("tools") or []))
        if callable(self.turns):
            return self._as_message(self.turns(request), "the turns callable's reply")
        index = min(request.step, len(self.turns) - 1)
        return self._as_message(self.turns[index], f"turns[{index}]")

    def _uses_turns(self, run_manager: Any) -> bool:
        return self.turns is not None and self._kind(run_manager) == "forward"

    def _with_usage(self, messages: list[BaseMessage], reply: AIMessage) -> AIMessage:
        text = message_text(reply) + "".join(json.dumps(c["args"]) for c in reply.tool_calls)
        usage = {
            "input_tokens": sum(len(message_text(m).split()) for m in messages),
            "output_tokens": len(text.split()),
        }
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        return reply.model_copy(update={"usage_metadata": usage})

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if not self._uses_turns(run_manager):
            return super()._generate(messages, stop, run_manager, **kwargs)
        if self.latency:
            time.sleep(self.latency)
        reply = self._with_usage(messages, self._turn(messages, kwargs))
        return ChatResult(generations=[ChatGeneration(message=reply)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if not self._uses_turns(run_manager):
            return await super()._agenerate(messages, stop, run_manager, **kwargs)
        if self.latency:
            await asyncio.sleep(self.latency)
        reply = self._with_usage(messages, self._turn(messages, kwargs))
        return ChatResult(generations=[ChatGeneration(message=reply)])

    @staticmethod
    def _chunk(reply: AIMessage) -> ChatGenerationChunk:
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content=reply.content,
                usage_metadata=reply.usage_metadata,
                tool_call_chunks=[
                    {
                        "name": c["name"],
                        "args": json.dumps(c["args"]),
                        "id": c["id"],
                        "index": i,
                        "type": "tool_call_chunk",
                    }
                    for i, c in enumerate(reply.tool_calls)
                ],
            )
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if not self._uses_turns(run_manager):
            yield from super()._stream(messages, stop, run_manager, **kwargs)
            return
        chunk = self._chunk(self._with_usage(messages, self._turn(messages, kwargs)))
        if run_manager:
            run_manager.on_llm_new_token(message_text(chunk.message), chunk=chunk)
        yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if not self._uses_turns(run_manager):
            async for chunk in super()._astream(messages, stop, run_manager, **kwargs):
                yield chunk
            return
        chunk = self._chunk(self._with_usage(messages, self._turn(messages, kwargs)))
        if run_manager:
            await run_manager.on_llm_new_token(message_text(chunk.message), chunk=chunk)
        yield chunk


ToolCallingScript = Union[list[Turn], Callable[[AgentTurnRequest], Turn]]

__all__ = ["AgentTurnRequest", "ToolCallingChatModel", "ToolCallingScript", "Turn"]
