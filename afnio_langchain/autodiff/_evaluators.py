"""Evaluators: ops that score a prediction and explain the score.

Each returns ``(score, explanation)``. ``explanation.backward()`` needs no argument:
the explanation is the feedback. Items whose score passes ``success_fn`` send no
feedback back (so upstream ops skip their backward calls for them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from afnio_langchain.autodiff._conversation import build_conversation
from afnio_langchain.autodiff._function import Function, FunctionCtx
from afnio_langchain.autodiff._llm_function import LLMFunction, VariableSpec
from afnio_langchain.autodiff._minibatch import MinibatchError, gather_items
from afnio_langchain.autodiff._prompts import (
    JUDGE_FIELDS,
    JUDGE_OUTPUT_INSTRUCTION,
    judge_backward_messages,
)
from afnio_langchain.autodiff._variable import Variable, make_gradient
from afnio_langchain.models import Message, as_model_client, parse_score, request_fields

EvalResult = float | bool | tuple[float | bool, str]


def default_success(score: float) -> bool:
    """An item is a success when its score is at least 1 (True, 1.0, 10/10 normalised)."""
    return score >= 1.0


def _items(value: Variable | str | list[str], n: int, name: str) -> list[str]:
    if isinstance(value, Variable):
        items = [str(t) for t in value.items()]
    elif isinstance(value, str):
        items = [value]
    elif isinstance(value, list) and all(isinstance(t, str) for t in value):
        items = list(value)
    else:
        raise TypeError(f"{name} must be a Variable, a str or a list of str, got {type(value).__name__}")
    if len(items) == 1 and n > 1:
        items = items * n
    if len(items) != n:
        raise ValueError(f"{name} has {len(items)} items, the prediction has {n}")
    return items


def _outputs(scores: list[float], explanations: list[str], batched: bool, role: str) -> tuple:
    score = Variable(scores if batched else scores[0], role=f"{role} score")
    explanation = Variable(explanations if batched else explanations[0], role=f"{role} explanation")
    explanation.is_evaluation = True
    return score, explanation


class DeterministicEvaluator(Function):
    """Scores each item with a Python function.

    ``eval_fn(prediction, target)`` returns a score (bool or number) or
    ``(score, feedback_text)``. Failed items get ``feedback_text`` (or a default that
    shows the expected and actual answers) as their explanation.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import DeterministicEvaluator
        >>> prediction = Variable(["4", "5"], role="answer")
        >>> score, why = DeterministicEvaluator.apply(prediction, "4", lambda p, t: p == t)
        >>> score.data
        [1.0, 0.0]
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        prediction: Variable,
        target: Variable | str | list[str] | None,
        eval_fn: Callable[[str, str | None], EvalResult],
        success_fn: Callable[[float], bool] = default_success,
        role: str = "evaluation",
    ) -> tuple[Variable, Variable]:
        if not isinstance(prediction, Variable):
            raise TypeError(f"prediction must be a Variable, got {type(prediction).__name__}")
        if not callable(eval_fn):
            raise TypeError("eval_fn must be callable: eval_fn(prediction, target) -> score")
        predictions = [str(t) for t in prediction.items()]
        targets = [None] * len(predictions) if target is None else _items(target, len(predictions), "target")
        scores, explanations = [], []
        for p, t in zip(predictions, targets):
            result = eval_fn(p, t)
            score, text = result if isinstance(result, tuple) else (result, None)
            score = float(score)
            scores.append(score)
            if success_fn(score):
                explanations.append(text or "Correct.")
            else:
                explanations.append(
                    text or f"Expected {t!r} but the {prediction.role or 'prediction'} was {p!r}."
                )
        ctx.success = [success_fn(s) for s in scores]
        ctx.save_for_backward(prediction)
        return _outputs(scores, explanations, prediction.is_batched, role)

    @staticmethod
    def backward(ctx: FunctionCtx, grad_score: Variable | None, grad_explanation: Variable | None):
        return _pass_explanation(ctx, grad_explanation)


def _pass_explanation(ctx: FunctionCtx, grad_explanation: Variable | None) -> tuple:
    """Feedback for the prediction: the explanation of every failed item ("" for successes)."""
    needs = ctx.needs_input_grad
    if grad_explanation is None or not needs or not needs[0]:
        return tuple(None for _ in needs)
    texts = [
        "" if ok else str(text) for ok, text in zip(ctx.success, _items(grad_explanation, len(ctx.success), "feedback"))
    ]
    if not any(texts):
        return tuple(None for _ in needs)
    (prediction,) = ctx.saved_variables
    data: str | list[str] = texts if prediction.is_batched else texts[0]
    return (make_gradient(data, prediction),) + tuple(None for _ in needs[1:])


class ExactMatchEvaluator(DeterministicEvaluator):
    """Score 1 when the prediction equals the target (after ``strip``, and ignoring case
    when ``case_sensitive=False``), else 0 with an explanation.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import ExactMatchEvaluator
        >>> score, why = ExactMatchEvaluator.apply(Variable("Paris", role="answer"), "Rome")
        >>> score.data, why.data
        (0.0, "Expected 'Rome' but the answer was 'Paris'.")
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        prediction: Variable,
        target: Variable | str | list[str],
        case_sensitive: bool = True,
        success_fn: Callable[[float], bool] = default_success,
        role: str = "exact match",
    ) -> tuple[Variable, Variable]:
        def same(p: str, t: str | None) -> bool:
            a, b = p.strip(), (t or "").strip()
            return a == b if case_sensitive else a.casefold() == b.casefold()

        return DeterministicEvaluator.forward(ctx, prediction, target, same, success_fn, role)


class LMJudgeEvaluator(LLMFunction):
    """An LLM judge: ``messages`` (seed form, with ``{name}`` fields from ``inputs``, e.g.
    ``{"prediction": response, "target": ...}``) are sent to ``model``, which answers
    with a score and an explanation. Backward turns the explanation of each failed item
    into feedback for every Variable that requires grad (the prediction, and the judge's
    own prompts if trainable); items passing ``success_fn`` make no call.

    Example:
        >>> from afnio_langchain import Variable, set_backward_model
        >>> from afnio_langchain.autodiff import LMJudgeEvaluator
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> judge = ScriptedChatModel(judge='{"score": 0, "explanation": "Too long."}')
        >>> answer = Variable("A very long answer", role="answer", requires_grad=True)
        >>> messages = [{"role": "user", "content": [Variable("Rate: {prediction}")]}]
        >>> score, why = LMJudgeEvaluator.apply(judge, messages, inputs={"prediction": answer})
        >>> score.data, why.data
        (0.0, 'Too long.')
    """

    @staticmethod
    async def aforward(
        ctx: FunctionCtx,
        model: Any,
        messages: list[dict[str, Any]],
        inputs: dict[str, Any] | None = None,
        success_fn: Callable[[float], bool] = default_success,
        role: str = "judge",
        backward_model: Any = None,
        **completion_args: Any,
    ) -> tuple[Variable, Variable]:
        client = as_model_client(model)
        conversation = build_conversation(messages, inputs)
        requests = [
            [*item, {"role": "user", "content": JUDGE_OUTPUT_INSTRUCTION}] for item in conversation.items
        ]
        replies, errors = await gather_items(
            [
                request_fields(
                    client,
                    request,
                    JUDGE_FIELDS,
                    purpose="judge",
                    where=f"LMJudgeEvaluator (item {i})",
                    schema_name="verdict",
                    **completion_args,
                )
                for i, request in enumerate(requests)
            ]
        )
        if errors:  # the other items' verdicts are kept on the error
            if not conversation.batched:
                raise errors[0]
            raise MinibatchError("LMJudgeEvaluator forward", replies, errors)
        scores = [parse_score(r["score"]) for r in replies]
        ctx.conversation = conversation
        ctx.requests = requests
        ctx.success = [success_fn(s) for s in scores]
        ctx.backward_model = backward_model
        return _outputs(scores, [r["explanation"] for r in replies], conversation.batched, role)

    @staticmethod
    def item_feedback(
        ctx: FunctionCtx, grad_score: Variable | None = None, grad_explanation: Variable | None = None
    ) -> list[str]:
        """The explanation of each item that failed ``success_fn`` (the others send none)."""
        n = ctx.conversation.size
        if grad_explanation is None:
            return ["" for _ in range(n)]
        texts = _items(grad_explanation, n, "feedback")
        return ["" if ok else str(t) for ok, t in zip(ctx.success, texts)]

    @staticmethod
    def backward_messages(
        ctx: FunctionCtx, item: int, variables: Sequence[VariableSpec], feedback: str
    ) -> list[Message]:
        """The judge backward prompt: the judge's request, its explanation, the variables."""
        return judge_backward_messages(ctx.requests[item], feedback, variables)
