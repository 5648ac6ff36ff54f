"""afnio's ``cognitive`` API: :class:`Module` and :class:`Parameter` (programs written
as classes, as in afnio and PyTorch), the op modules (``ChatCompletion``, ``Add``...)
and :mod:`~afnio_langchain.cognitive.functional`.

Every op runs locally, on any model this package takes; a :class:`Module` is also a
LangChain Runnable.

Example:
    >>> import afnio_langchain.cognitive as cog
    >>> import afnio_langchain.cognitive.functional as F
    >>> issubclass(cog.ChatCompletion, cog.Module), callable(F.chat_completion)
    (True, True)
"""

from afnio_langchain.cognitive import functional
from afnio_langchain.cognitive._module import IncompatibleKeys, Module
from afnio_langchain.cognitive._modules import (
    Add,
    ChatCompletion,
    DeterministicEvaluator,
    ExactMatchEvaluator,
    LMJudgeEvaluator,
    Split,
    Sum,
)
from afnio_langchain.cognitive._parameter import Parameter
from afnio_langchain.cognitive.functional import (
    add,
    chat_completion,
    deterministic_evaluator,
    exact_match_evaluator,
    lm_judge_evaluator,
    split,
    sum,
)

__all__ = [
    "Add",
    "ChatCompletion",
    "DeterministicEvaluator",
    "ExactMatchEvaluator",
    "IncompatibleKeys",
    "LMJudgeEvaluator",
    "Module",
    "Parameter",
    "Split",
    "Sum",
    "add",
    "chat_completion",
    "deterministic_evaluator",
    "exact_match_evaluator",
    "functional",
    "lm_judge_evaluator",
    "split",
    "sum",
]
