"""afnio-langchain: textual automatic differentiation for LangChain.

Text lives in :class:`Variable`; LLM calls are differentiable operations; after a
forward pass, LLM-written feedback flows back to every Variable that requires grad.

afnio's top-level names are here too (``afnio_langchain.optim``, ``cognitive``,
``functional``, ``save``/``load``, ``set_backward_model_client``...), so afnio code runs
with its imports changed; see docs/afnio.md.
"""

from afnio_langchain import autodiff, cognitive, optim, utils
from afnio_langchain._serialization import load, save
from afnio_langchain.agents import AgentRunnable
from afnio_langchain.autodiff import (
    Variable,
    enable_grad,
    get_backward_model,
    get_backward_model_client,
    is_grad_enabled,
    no_grad,
    set_backward_model,
    set_backward_model_client,
    set_grad_enabled,
    use_backward_model,
)
from afnio_langchain.cognitive import functional
from afnio_langchain.models import concurrency_limit, get_usage, track_usage
from afnio_langchain.runnables import ChatCompletionRunnable, make_trainable, parameters

__version__ = "0.1.0"

__all__ = [
    "AgentRunnable",
    "ChatCompletionRunnable",
    "Variable",
    "__version__",
    "autodiff",
    "cognitive",
    "concurrency_limit",
    "enable_grad",
    "functional",
    "get_backward_model",
    "get_backward_model_client",
    "get_usage",
    "is_grad_enabled",
    "load",
    "make_trainable",
    "no_grad",
    "optim",
    "parameters",
    "save",
    "set_backward_model",
    "set_backward_model_client",
    "set_grad_enabled",
    "track_usage",
    "use_backward_model",
    "utils",
]
