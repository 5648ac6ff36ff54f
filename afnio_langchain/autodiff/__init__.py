"""The textual autodiff engine: Variables, Functions, the backward engine and the ops.

- Recording: :class:`Function` (``forward``/``backward``, ``apply``) records each op
  in the graph (``_function.py``: ``Function._record``).
- Scheduling: :func:`run_backward` orders the graph and runs backward nodes
  concurrently (``_engine.py``).
- LLM ops: :class:`LLMFunction` is the base of ops whose gradients an LLM writes
  (:class:`ChatCompletion`, :class:`LMJudgeEvaluator`); its prompt kit
  (:func:`build_conversation`, :func:`chat_backward_messages`, :func:`neutralize`...)
  is public so a new LLM op is one subclass. The backward prompts are in ``_prompts.py``.
- Streaming between minibatch stages: items flow forward (:class:`ForwardHandoff`,
  ``_forward_streams.py``) and backward (``_item_streams.py``) one by one.
"""

from afnio_langchain.autodiff._backward_model import (
    get_backward_model,
    get_backward_model_client,
    set_backward_model,
    set_backward_model_client,
    use_backward_model,
)
from afnio_langchain.autodiff._basic_ops import Add, ParseJson, Split, Sum, TextTransform
from afnio_langchain.autodiff._chat_completion import ChatCompletion, stream_text_to
from afnio_langchain.autodiff._conversation import Conversation, Slot, build_conversation
from afnio_langchain.autodiff._engine import (
    BackwardError,
    BackwardFailure,
    BackwardReport,
    run_backward,
)
from afnio_langchain.autodiff._evaluators import (
    DeterministicEvaluator,
    ExactMatchEvaluator,
    LMJudgeEvaluator,
)
from afnio_langchain.autodiff._forward_streams import ForwardHandoff
from afnio_langchain.autodiff._function import AccumulateGrad, Function, FunctionCtx, Node
from afnio_langchain.autodiff._grad_mode import (
    enable_grad,
    is_grad_enabled,
    no_grad,
    set_grad_enabled,
)
from afnio_langchain.autodiff._llm_function import (
    DEFAULT_OUTPUT_ROLE,
    LLMFunction,
    VariableSpec,
    item_gradients,
)
from afnio_langchain.autodiff._minibatch import (
    ItemFailureWarning,
    MinibatchError,
    cut_off_items,
    describe_error,
    failed_items,
    unfinished_items,
)
from afnio_langchain.autodiff._prompts import (
    PROMPT_TAGS,
    chat_backward_messages,
    format_conversation,
    format_variables,
    neutralize,
    tag_attribute,
)
from afnio_langchain.autodiff._templating import (
    MissingInputError,
    escape_fields,
    fill,
    from_fstring,
    placeholders,
    to_fstring,
)
from afnio_langchain.autodiff._variable import Data, Variable, validate_data

__all__ = [
    "DEFAULT_OUTPUT_ROLE",
    "PROMPT_TAGS",
    "AccumulateGrad",
    "Add",
    "BackwardError",
    "BackwardFailure",
    "BackwardReport",
    "ChatCompletion",
    "Conversation",
    "Data",
    "DeterministicEvaluator",
    "ExactMatchEvaluator",
    "ForwardHandoff",
    "Function",
    "FunctionCtx",
    "ItemFailureWarning",
    "LLMFunction",
    "LMJudgeEvaluator",
    "MinibatchError",
    "MissingInputError",
    "Node",
    "ParseJson",
    "Slot",
    "Split",
    "Sum",
    "TextTransform",
    "Variable",
    "VariableSpec",
    "build_conversation",
    "chat_backward_messages",
    "cut_off_items",
    "describe_error",
    "enable_grad",
    "escape_fields",
    "failed_items",
    "fill",
    "format_conversation",
    "format_variables",
    "from_fstring",
    "get_backward_model",
    "get_backward_model_client",
    "is_grad_enabled",
    "item_gradients",
    "neutralize",
    "no_grad",
    "placeholders",
    "run_backward",
    "set_backward_model",
    "set_backward_model_client",
    "set_grad_enabled",
    "stream_text_to",
    "tag_attribute",
    "to_fstring",
    "unfinished_items",
    "use_backward_model",
    "validate_data",
]
