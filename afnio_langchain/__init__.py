"""afnio-langchain: textual automatic differentiation for LangChain.

Text lives in :class:`Variable`; LLM calls are differentiable operations; after a
forward pass, LLM-written feedback flows back to every Variable that requires grad.
"""

from afnio_langchain.agents import AgentRunnable
from afnio_langchain.autodiff import (
    Variable,
    enable_grad,
    get_backward_model,
    is_grad_enabled,
    no_grad,
    set_backward_model,
    set_grad_enabled,
    use_backward_model,
)
from afnio_langchain.models import concurrency_limit, get_usage, track_usage
from afnio_langchain.runnables import ChatCompletionRunnable, make_trainable, parameters

__version__ = "0.1.0"

__all__ = [
    "AgentRunnable",
    "ChatCompletionRunnable",
    "Variable",
    "__version__",
    "concurrency_limit",
    "enable_grad",
    "get_backward_model",
    "get_usage",
    "is_grad_enabled",
    "make_trainable",
    "no_grad",
    "parameters",
    "set_backward_model",
    "set_grad_enabled",
    "track_usage",
    "use_backward_model",
]
