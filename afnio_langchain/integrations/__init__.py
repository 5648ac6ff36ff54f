"""Trainable prompts for agents built elsewhere: LangChain's ``create_agent`` (through a
middleware) and LangGraph agents with a callable prompt.

``TrainableAgent`` and the recording machinery need only langchain-core. The
middleware (:mod:`afnio_langchain.integrations.langchain_agents`) and the LangGraph
helpers (:mod:`afnio_langchain.integrations.langgraph`) are imported from their modules
and need ``pip install 'afnio-langchain[agents]'``.
"""

from afnio_langchain.integrations.recording import (
    ModelCallRecord,
    RunRecorder,
    TrainablePromptSource,
    recording,
)
from afnio_langchain.integrations.trainable_agent import TrainableAgent

__all__ = [
    "ModelCallRecord",
    "RunRecorder",
    "TrainableAgent",
    "TrainablePromptSource",
    "recording",
]
