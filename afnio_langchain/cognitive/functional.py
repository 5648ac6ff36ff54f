"""afnio's functional API: each op as a plain function (``F.add(x, y)`` is
``Add.apply(x, y)``), with afnio's argument order and defaults.

Example:
    >>> from afnio_langchain import Variable
    >>> import afnio_langchain.cognitive.functional as F
    >>> F.add(Variable([1, 2, 3]), Variable([4, 5, 6])).data
    [5, 7, 9]
    >>> F.exact_match_evaluator(Variable(["green", "blue"]), ["red", "blue"])[0].data
    1
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from typing import Any

from afnio_langchain.autodiff import (
    Add,
    ChatCompletion,
    DeterministicEvaluator,
    ExactMatchEvaluator,
    LMJudgeEvaluator,
    Split,
    Sum,
    Variable,
)

Reduction = Callable[[list[Any]], Any]


def add(x: Variable, y: Variable) -> Variable:
    """``Add.apply(x, y)``: numbers add, text concatenates."""
    return Add.apply(x, y)


def sum(x: Sequence[Variable]) -> Variable:  # noqa: A001 - afnio's name
    """``Sum.apply(x)``: numbers add, texts are wrapped in ``<ITEM>`` tags."""
    return Sum.apply(x)


def split(x: Variable, sep: str | Variable | None = None, maxsplit: int | Variable = -1) -> tuple[Variable, ...]:
    """``Split.apply(x, sep, maxsplit)``."""
    return Split.apply(x, sep, maxsplit)


def chat_completion(
    forward_model_client: Any,
    messages: Sequence[dict[str, Any]],
    inputs: dict[str, Any] | None = None,
    **completion_args: Any,
) -> Variable:
    """``ChatCompletion.apply(forward_model_client, messages, inputs, **completion_args)``."""
    return ChatCompletion.apply(forward_model_client, messages, inputs, **completion_args)


def deterministic_evaluator(
    prediction: Variable,
    target: Any,
    eval_fn: Callable[[Any, Any], Any],
    eval_fn_purpose: str | Variable | None = None,
    success_fn: Callable[[Any], bool] | None = None,
    reduction_fn: Reduction | None = None,
    reduction_fn_purpose: str | Variable | None = None,
) -> tuple[Variable, Variable]:
    """``DeterministicEvaluator.apply(...)`` with afnio's argument order."""
    return DeterministicEvaluator.apply(
        prediction, target, eval_fn, eval_fn_purpose, success_fn, reduction_fn, reduction_fn_purpose
    )


def exact_match_evaluator(
    prediction: Variable,
    target: Any,
    reduction_fn: Reduction | None = builtins.sum,
    reduction_fn_purpose: str | Variable | None = "summation",
) -> tuple[Variable, Variable]:
    """``ExactMatchEvaluator.apply(...)``: a minibatch's scores are summed by default."""
    return ExactMatchEvaluator.apply(prediction, target, reduction_fn, reduction_fn_purpose)


def lm_judge_evaluator(
    forward_model_client: Any,
    messages: Sequence[dict[str, Any]],
    prediction: Variable,
    target: Any = None,
    inputs: dict[str, Any] | None = None,
    success_fn: Callable[[Any], bool] | None = None,
    reduction_fn: Reduction | None = builtins.sum,
    reduction_fn_purpose: str | Variable | None = "summation",
    eval_mode: bool | Variable = True,
    **completion_args: Any,
) -> tuple[Variable, Variable]:
    """``LMJudgeEvaluator.apply(...)`` with afnio's argument order."""
    return LMJudgeEvaluator.apply(
        forward_model_client, messages, prediction, target, inputs, success_fn, reduction_fn,
        reduction_fn_purpose, eval_mode, **completion_args,
    )


__all__ = [
    "add",
    "chat_completion",
    "deterministic_evaluator",
    "exact_match_evaluator",
    "lm_judge_evaluator",
    "split",
    "sum",
]
