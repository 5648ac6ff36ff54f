"""The LangChain face: differentiable Runnables, glue for LCEL chains, chain conversion."""


from afnio_langchain.runnables._base import VariableRunnable
from afnio_langchain.runnables._chat import ChatCompletionRunnable
from afnio_langchain.runnables._coerce import as_variable, as_variables
from afnio_langchain.runnables._parameters import parameters
from afnio_langchain.runnables._parsers import VariableJsonOutputParser, VariableStrOutputParser
from afnio_langchain.runnables._pipeline import ChatPipeline
from afnio_langchain.runnables._prompts_file import (
    PromptsFileError,
    load_prompts,
    prompts_state,
    read_prompts_file,
    save_prompts,
)
from afnio_langchain.runnables._routing import UntrainedRouteWarning
from afnio_langchain.runnables._text_functions import TextFunction, as_differentiable
from afnio_langchain.runnables._trainable import TrainableChain, make_trainable

__all__ = [
    "ChatCompletionRunnable",
    "ChatPipeline",
    "PromptsFileError",
    "TextFunction",
    "TrainableChain",
    "UntrainedRouteWarning",
    "VariableJsonOutputParser",
    "VariableRunnable",
    "VariableStrOutputParser",
    "as_differentiable",
    "as_variable",
    "as_variables",
    "load_prompts",
    "make_trainable",
    "parameters",
    "prompts_state",
    "read_prompts_file",
    "save_prompts",
]
