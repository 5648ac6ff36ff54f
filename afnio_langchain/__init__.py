"""afnio-langchain: textual automatic differentiation for LangChain.

Text lives in ``Variable``s; LLM calls are differentiable operations; after a forward
pass, LLM-written feedback (textual gradients) flows back to every Variable that
requires grad, and an optimizer rewrites them. Where things live:

    afnio_langchain            Variable, no_grad, set_backward_model, ChatCompletionRunnable,
                               make_trainable, parameters, AgentRunnable, get_usage
    afnio_langchain.autodiff   Function, ChatCompletion, Add/Sum/Split, evaluators
                               (ExactMatchEvaluator, LMJudgeEvaluator), LLMFunction
    afnio_langchain.optim      TGD (textual gradient descent), Optimizer
    afnio_langchain.runnables  ChatCompletionRunnable, make_trainable / TrainableChain,
                               TextFunction, VariableStrOutputParser, save_prompts
    afnio_langchain.train      fit, Trainer, metrics (exact_match, contains, LMJudge),
                               load_dataset, evaluate, write_report, ModelPool
    afnio_langchain.agents     AgentRunnable, TrainablePromptMiddleware (for create_agent),
                               TrainablePrompt (LangGraph), ToolCallMatch, TrajectoryJudge
    afnio_langchain.dspy       TextualGradientDescent, as_dspy_lm (extra: dspy)
    afnio_langchain.loop       MetricResult, the metric protocol every face trains on
    afnio_langchain.cognitive  afnio's Module (a LangChain Runnable too), Parameter, functional
    afnio_langchain.trainer    afnio's Trainer (fit with agent=..., train_dataloaders=...)
    afnio_langchain.utils      afnio's data tools (utils.data: DataLoader, samplers)
    afnio_langchain.models     model adapters, OpenAIClient, LocalModelServer, usage
    afnio_langchain.testing    ScriptedChatModel, OpenAICompatServer, Fault (for tests)
    afnio_langchain.cli        the afnio-langchain command (optimize, evaluate, demo)

afnio's top-level names are here too (``save``/``load``, ``set_backward_model_client``,
``functional``...), so afnio code runs with its imports changed. Start with the README;
each area has a page in docs/ (training, langchain, agents, dspy, afnio, reliability,
performance, extending, design).

Example:
    >>> from afnio_langchain import Variable, set_backward_model
    >>> from afnio_langchain.autodiff import ChatCompletion
    >>> from afnio_langchain.testing import ScriptedChatModel
    >>> model = ScriptedChatModel(forward="Ciao", feedback="Say it in capitals.")
    >>> set_backward_model(model)
    >>> system = Variable("Translate to Italian.", role="system prompt", requires_grad=True)
    >>> reply = ChatCompletion.apply(model, [{"role": "system", "content": [system]},
    ...                                      {"role": "user", "content": ["Hello"]}])
    >>> reply.backward("Use capitals.")
    >>> reply.data, system.grad[0].data
    ('Ciao', 'Say it in capitals.')
    >>> set_backward_model(None)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Names load on first use (PEP 562), so that `import afnio_langchain` and the command
# line start at once, and a Ctrl-C while the heavy dependencies load is caught.
_SUBMODULES = ("autodiff", "cognitive", "optim", "utils")
_LAZY = {
    "load": "afnio_langchain._serialization",
    "save": "afnio_langchain._serialization",
    "AgentRunnable": "afnio_langchain.agents",
    "functional": "afnio_langchain.cognitive",
    "concurrency_limit": "afnio_langchain.models",
    "get_usage": "afnio_langchain.models",
    "track_usage": "afnio_langchain.models",
    "ChatCompletionRunnable": "afnio_langchain.runnables",
    "make_trainable": "afnio_langchain.runnables",
    "parameters": "afnio_langchain.runnables",
    **{
        name: "afnio_langchain.autodiff"
        for name in (
            "Variable",
            "enable_grad",
            "get_backward_model",
            "get_backward_model_client",
            "is_grad_enabled",
            "no_grad",
            "set_backward_model",
            "set_backward_model_client",
            "set_grad_enabled",
            "use_backward_model",
        )
    },
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f"afnio_langchain.{name}")
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'afnio_langchain' has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES, *_LAZY])


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
