"""The textual autodiff engine: Variables, Functions, the backward engine and the ops."""

from afnio_langchain.autodiff.backward_model import (
    get_backward_model,
    set_backward_model,
    use_backward_model,
)
from afnio_langchain.autodiff.basic_ops import Add, ParseJson, Split, Sum, TextTransform
from afnio_langchain.autodiff.engine import (
    BackwardError,
    BackwardFailure,
    BackwardReport,
    run_backward,
)
from afnio_langchain.autodiff.evaluators import (
    DeterministicEvaluator,
    ExactMatchEvaluator,
    LMJudgeEvaluator,
)
from afnio_langchain.autodiff.function import AccumulateGrad, Function, FunctionCtx, Node
from afnio_langchain.autodiff.grad_mode import (
    enable_grad,
    is_grad_enabled,
    no_grad,
    set_grad_enabled,
)
from afnio_langchain.autodiff.lm_ops import ChatCompletion
from afnio_langchain.autodiff.partial import ItemFailureWarning, MinibatchError, failed_items
from afnio_langchain.autodiff.templating import MissingInputError, fill, placeholders
from afnio_langchain.autodiff.variable import Variable

__all__ = [
    "AccumulateGrad",
    "Add",
    "BackwardError",
    "BackwardFailure",
    "BackwardReport",
    "ChatCompletion",
    "DeterministicEvaluator",
    "ExactMatchEvaluator",
    "Function",
    "FunctionCtx",
    "ItemFailureWarning",
    "LMJudgeEvaluator",
    "MinibatchError",
    "MissingInputError",
    "Node",
    "ParseJson",
    "Split",
    "Sum",
    "TextTransform",
    "Variable",
    "enable_grad",
    "failed_items",
    "fill",
    "get_backward_model",
    "is_grad_enabled",
    "no_grad",
    "placeholders",
    "run_backward",
    "set_backward_model",
    "set_grad_enabled",
    "use_backward_model",
]
