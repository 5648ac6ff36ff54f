"""Test support for users and for this package: a scripted chat model that answers
forward, backward, optimizer and judge calls, and a loopback OpenAI-compatible server."""

from afnio_langchain.testing.scripted import ScriptedCall, ScriptedChatModel

__all__ = ["ScriptedCall", "ScriptedChatModel"]
