"""Test support for users and for this package: a scripted chat model that answers
forward, backward, optimizer and judge calls, and a loopback OpenAI-compatible server."""

from afnio_langchain.testing.scripted import ScriptedCall, ScriptedChatModel
from afnio_langchain.testing.tool_calling import AgentTurnRequest, ToolCallingChatModel

__all__ = ["AgentTurnRequest", "ScriptedCall", "ScriptedChatModel", "ToolCallingChatModel"]
