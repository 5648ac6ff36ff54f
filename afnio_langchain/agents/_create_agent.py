"""A ``langchain.agents`` middleware that makes an agent built with ``create_agent``
trainable without changing how it is built.

Needs ``pip install 'afnio-langchain[agents]'`` (langchain>=1.0).

What the middleware records is what the model received: it watches the model call
itself (a LangChain callback hook scoped to that one call), so a middleware that runs
inside it and rewrites the system prompt is seen, and one that drops the trainable
prompt is refused with an error that says which order to use.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from uuid import UUID

try:
    from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
    from langchain.agents.structured_output import AutoStrategy, ProviderStrategy, ToolStrategy
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "afnio_langchain.agents._create_agent needs langchain>=1.0 (its "
        "create_agent middleware API): pip install 'afnio-langchain[agents]'"
    ) from exc

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage
from langchain_core.tools import BaseTool
from langchain_core.tracers.context import register_configure_hook

from afnio_langchain.agents._recording import ModelCallRecord, TrainablePromptSource
from afnio_langchain.agents._runnable import model_name_of, with_descriptions
from afnio_langchain.autodiff import Variable
from afnio_langchain.models import message_text

PROMPT_SEPARATOR = "\n\n"
"""Between the trainable prompt and a system prompt it composes with."""

DROPPED_PROMPT_ERROR = (
    "The model never received the trainable system prompt ({prompt!r}); it received "
    "{received!r}. A middleware listed after TrainablePromptMiddleware replaced the system "
    "prompt. List TrainablePromptMiddleware after it, last in create_agent(middleware=[...]): "
    "it then keeps that middleware's prompt and puts the trainable one first."
)


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


def _bound_tools(schemas: Any) -> dict[str, str] | None:
    """Tool name -> description from the tool schemas a model call was bound with
    (OpenAI, Anthropic or bare function shapes); None when there are none to read."""
    if not isinstance(schemas, list):
        return None
    out = {}
    for schema in schemas:
        if not isinstance(schema, Mapping):
            continue
        function = schema.get("function", schema)
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            out[function["name"]] = str(function.get("description", ""))
    return out


def structured_output_tools(response_format: Any) -> tuple[str, ...]:
    """The names of the tools through which ``create_agent`` returns a structured
    response for ``response_format`` (none for the provider strategy)."""
    if response_format is None or isinstance(response_format, ProviderStrategy):
        return ()
    if not isinstance(response_format, ToolStrategy):
        schema = response_format.schema if isinstance(response_format, AutoStrategy) else response_format
        response_format = ToolStrategy(schema=schema)
    return tuple(spec.name for spec in response_format.schema_specs)


# -- what the model received -----------------------------------------------------------
class _SentToModel(BaseCallbackHandler):
    """Collects the chat model runs started inside one model call of the agent."""

    run_inline = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started: dict[UUID, tuple[list[BaseMessage], dict[str, Any]]] = {}
        self.ended: list[UUID] = []

    def on_chat_model_start(
        self,
        serialized: Any,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        invocation_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        with self._lock:
            self.started[run_id] = (list(messages[0]) if messages else [], dict(invocation_params or {}))

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self.ended.append(run_id)

    def request_for(self, reply: AIMessage | None) -> tuple[list[BaseMessage], dict[str, Any]] | None:
        """The messages and invocation parameters of the run that gave ``reply`` (else
        of the last run that ended)."""
        with self._lock:
            reply_id = getattr(reply, "id", None) or ""
            for run_id, sent in self.started.items():
                if reply_id.endswith(str(run_id)):
                    return sent
            if self.ended and self.ended[-1] in self.started:
                return self.started[self.ended[-1]]
            return None


_SENT: contextvars.ContextVar[_SentToModel | None] = contextvars.ContextVar(
    "afnio_sent_to_model", default=None
)
register_configure_hook(_SENT, inheritable=True)


def _system_text(messages: Sequence[BaseMessage]) -> str:
    """The text of the leading system message(s) of a model request."""
    texts = []
    for message in messages:
        if not isinstance(message, SystemMessage):
            break
        texts.append(message_text(message))
    return PROMPT_SEPARATOR.join(texts)


class TrainablePromptMiddleware(AgentMiddleware, TrainablePromptSource):
    """Sets an agent's system prompt (and tool descriptions) from Variables at every
    model call.

    Add it to ``create_agent(..., middleware=[...])``; the agent is built and run as
    usual. Before each model call the middleware reads the system prompt Variable's
    current value and the tool-description Variables' values (for the tools they name).
    Nothing is written into graph state: Variables never reach checkpoints. Wrap the
    agent in :class:`~afnio_langchain.agents.TrainableAgent` to get final answers as
    Variables connected to these prompts; inside such a run each model call is recorded
    for the trajectory, with the system prompt and tools *the model received*.

    How it composes with the system prompt the request already carries:

    - none, or the text the Variable held when the middleware was made (typically
      ``create_agent(system_prompt=...)`` that the Variable was made from): the
      Variable's current text replaces it;
    - any other text (a different ``system_prompt``, or one a middleware listed
      *before* this one set, e.g. ``@dynamic_prompt``): the Variable's text comes
      first, then that text, so the user's prompt is kept.

    List it *after* middleware that rewrite the system prompt. A middleware listed after
    it runs inside it; if that one replaces the system prompt so that the model never
    receives the Variable's text, the call fails with a RuntimeError naming the order
    to use (gradients must be about text the model saw).

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
        >>> agent = create_agent(model, [], system_prompt="Greet the user.",
        ...                      middleware=[TrainablePromptMiddleware(prompt)])
        >>> agent.invoke({"messages": [("user", "hi")]})["messages"][-1].content
        'Hello!'
        >>> model.calls[0].messages[0].content
        'Greet the user.'
        >>> agent = create_agent(model, [], system_prompt="The user is Ada.",
        ...                      middleware=[TrainablePromptMiddleware(prompt)])
        >>> _ = agent.invoke({"messages": [("user", "hi")]})
        >>> model.calls[-1].messages[0].content
        'Greet the user.\\n\\nThe user is Ada.'
    """

    def __init__(
        self,
        system_prompt: Variable,
        tool_descriptions: Mapping[str, Variable] | None = None,
    ) -> None:
        TrainablePromptSource.__init__(self, system_prompt, tool_descriptions)
        self.tools = []
        self._made_from = str(system_prompt.data)

    @property
    def name(self) -> str:
        return "TrainablePromptMiddleware"

    def _system_message(self, request: ModelRequest) -> SystemMessage:
        text = str(self.system_prompt.data)
        current = request.system_message
        current_text = message_text(current) if current is not None else ""
        if not current_text.strip() or current_text == self._made_from or current_text == text:
            return SystemMessage(text)
        return SystemMessage(text + PROMPT_SEPARATOR + current_text)

    def _prepared(self, request: ModelRequest) -> ModelRequest:
        overrides: dict[str, Any] = {"system_message": self._system_message(request)}
        if self.tool_descriptions:
            overrides["tools"] = with_descriptions(request.tools, self.current_descriptions())
        return request.override(**overrides)

    def _record(self, request: ModelRequest, response: Any, sent: _SentToModel) -> None:
        reply = _reply_of(response)
        names = structured_output_tools(request.response_format)
        system_prompt = request.system_prompt or ""
        tools = _shown_tools(request.tools)
        received = sent.request_for(reply)
        if received is not None:
            messages, params = received
            system_prompt = _system_text(messages)
            tools = _bound_tools(params.get("tools")) or tools
            if str(self.system_prompt.data) not in system_prompt:
                raise RuntimeError(
                    DROPPED_PROMPT_ERROR.format(
                        prompt=str(self.system_prompt.data)[:200], received=system_prompt[:200]
                    )
                )
        self.record(
            ModelCallRecord(
                system_prompt=system_prompt,
                tool_descriptions={k: v for k, v in tools.items() if k not in names},
                messages=tuple(request.messages),
                response=reply,
                structured_output_tools=names,
                model_name=model_name_of(request.model),
            )
        )

    def wrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], ModelResponse],
    ) -> Any:
        """Set the system prompt (and tool descriptions), call the model, record."""
        request = self._prepared(request)
        sent = _SentToModel()
        token = _SENT.set(sent)
        try:
            response = handler(request)
        finally:
            _SENT.reset(token)
        self._record(request, response, sent)
        return response

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> Any:
        """Async :meth:`wrap_model_call`."""
        request = self._prepared(request)
        sent = _SentToModel()
        token = _SENT.set(sent)
        try:
            response = await handler(request)
        finally:
            _SENT.reset(token)
        self._record(request, response, sent)
        return response


__all__ = ["PROMPT_SEPARATOR", "TrainablePromptMiddleware", "structured_output_tools"]
