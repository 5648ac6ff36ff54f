"""The LangChain face: differentiable Runnables, glue for LCEL chains, chain conversion."""

from afnio_langchain.runnables.agent import AgentRunnable
from afnio_langchain.runnables.chat import ChatCompletionRunnable
from afnio_langchain.runnables.glue import TextFunction, as_differentiable
from afnio_langchain.runnables.parameters import parameters
from afnio_langchain.runnables.parsers import VariableJsonOutputParser, VariableStrOutputParser
from afnio_langchain.runnables.trainable import TrainableChain, make_trainable

__all__ = [
    "AgentRunnable",
    "ChatCompletionRunnable",
    "TextFunction",
    "TrainableChain",
    "VariableJsonOutputParser",
    "VariableStrOutputParser",
    "as_differentiable",
    "make_trainable",
    "parameters",
]
