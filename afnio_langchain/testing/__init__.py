"""Test support for users and for this package: fake chat models that answer forward,
backward, optimizer and judge calls (and tool calls), and a loopback OpenAI-compatible
HTTP server with injectable faults.

- :class:`ScriptedChatModel`: a LangChain chat model scripted per call kind (a standard
  chat model: usage, streaming, tools, structured output, ``stop``); script callables
  receive a :class:`ScriptedRequest`.
- :class:`ToolCallingChatModel`: the same, with scripted tool-calling turns for agents.
- :class:`OpenAICompatServer` and :class:`Fault`: a real HTTP server on 127.0.0.1 that
  speaks the chat-completions protocol (``request_text``, ``default_responder`` and
  ``count_tokens`` help write its responders).
- ``afnio_langchain.testing.fixtures``: a pytest plugin with an ``openai_server`` fixture.
"""

from afnio_langchain.testing._scripted_chat_model import (
    ScriptedCall,
    ScriptedChatModel,
    ScriptedRequest,
)
from afnio_langchain.testing._server import (
    Fault,
    OpenAICompatServer,
    completion_reply,
    count_tokens,
    default_responder,
    request_text,
)
from afnio_langchain.testing._tool_calling_chat_model import AgentTurnRequest, ToolCallingChatModel

__all__ = [
    "AgentTurnRequest",
    "Fault",
    "OpenAICompatServer",
    "ScriptedCall",
    "ScriptedChatModel",
    "ScriptedRequest",
    "ToolCallingChatModel",
    "completion_reply",
    "count_tokens",
    "default_responder",
    "request_text",
]
