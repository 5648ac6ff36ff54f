"""Evaluators: ops that score a prediction and explain the score, with afnio's
semantics.

Each returns ``(score, explanation)``. ``explanation.backward()`` needs no argument:
the explanation is the loss. Its backward sends feedback to the prediction for every
item that failed ``success_fn``; items that passed send none (so upstream ops make no
backward call for them). The feedback is the text the evaluation function returned
with its score when it gave one, else the backward model writes it from the item's
explanation (afnio's behaviour).

On a minibatch a ``reduction_fn`` (``sum`` by default for the exact-match and LM-judge
evaluators, as in afnio) folds the item scores into one score and the explanation
says so; the feedback stays per item.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

from afnio_langchain.autodiff._backward_model import resolve_backward_model
from afnio_langchain.autodiff._conversation import build_conversation
from afnio_langchain.autodiff._function import FunctionCtx
from afnio_langchain.autodiff._llm_function import LLMFunction, VariableSpec, item_gradients
from afnio_langchain.autodiff._minibatch import MinibatchError, gather_items
from afnio_langchain.autodiff._prompts import (
    EVALUATION_DESCRIPTION,
    JUDGE_FIELDS,
    JUDGE_OUTPUT_INSTRUCTION,
    judge_backward_messages,
)
from afnio_langchain.autodiff._variable import Data, Variable, make_gradient
from afnio_langchain.models import Message, as_model_client, parse_score, request_fields

EvalResult = float | int | bool | tuple[float | int | bool, str]
Reduction = Callable[[list[Any]], Any]

EXACT_MATCH = "exact match"
LM_JUDGE = "using an LM as the judge"


def default_success(score: float) -> bool:
    """An item is a success when its score is at least 1 (True, 1, 10/10 normalised)."""
    return score >= 1.0


def _text(value: Any) -> str:
    return str(value.data) if isinstance(value, Variable) else str(value)


def _targets(value: Any, n: int, name: str = "target") -> list[Any]:
    """One target per prediction item.

    A single target (a str, a number, or a Variable holding one value) is used for
    every item. A list, or a Variable holding a minibatch, gives one target per item:
    afnio requires the lengths to match, so a one-item list is not repeated.

    Raises:
        TypeError: ``value`` is not a target.
        ValueError: A list of targets whose length is not the prediction's.
    """
    if isinstance(value, Variable):
        if not value.is_batched:
            return value.items() * n
        items = value.items()
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [value] * n
    elif isinstance(value, (list, tuple)) and all(
        isinstance(t, (str, int, float)) and not isinstance(t, bool) for t in value
    ):
        items = list(value)
    else:
        raise TypeError(
            f"{name} must be a Variable, a str (or number) or a list of them, got {type(value).__name__}"
        )
    if len(items) != n:
        raise ValueError(
            f"{name} has {len(items)} items but the prediction has {n}: give one {name} "
            f"per prediction item, or a single str or number for every item"
        )
    return items


def _number(score: Any) -> Any:
    return int(score) if isinstance(score, bool) else score


def _item_explanation(purpose: str, prediction: Any, target: Any, score: Any) -> str:
    if target is None:
        return (
            f"The evaluation function, designed for '{purpose}', assessed the <DATA> field "
            f"of the predicted variable ('{prediction}'), resulting in a score: {_shown(score)}."
        )
    return (
        f"The evaluation function, designed for '{purpose}', compared the <DATA> field of the "
        f"predicted variable ('{prediction}') with the <DATA> field of the target variable "
        f"('{target}'), resulting in a score: {_shown(score)}."
    )


def _shown(score: Any) -> Any:
    """A score as the explanation shows it: a whole float as an int (``1.0`` -> ``1``)."""
    return int(score) if isinstance(score, float) and score.is_integer() else score


def _reduced_explanation(purpose: str, reduction_purpose: str, score: Any, judge: bool) -> str:
    designed = "designed using an LM as the judge" if judge else f"designed for '{purpose}'"
    scores = "." if judge else ", generating individual scores for each pair."
    return (
        f"The evaluation function, {designed}, compared the <DATA> fields of the predicted "
        f"variable and the target variable across all samples in the batch{scores} These "
        f"scores were then aggregated using the reduction function '{reduction_purpose}', "
        f"resulting in a final aggregated score: {_shown(score)}."
    )


def _reduction_purpose(reduction_fn: Reduction, purpose: Any) -> str:
    if purpose is not None:
        text = _text(purpose)
        if not text.strip():
            raise ValueError("reduction_fn_purpose must not be empty")
        return text
    if reduction_fn is sum:
        return "summation"
    return getattr(reduction_fn, "__name__", "reduction")


def _outputs(
    ctx: FunctionCtx,
    scores: list[Any],
    explanations: list[str],
    batched: bool,
    role: str,
    reduction_fn: Reduction | None,
    reduced_explanation: Callable[[Any], str],
) -> tuple[Variable, Variable]:
    """The score and explanation Variables; per-item explanations stay on ``ctx``."""
    ctx.item_explanations = explanations
    ctx.reduced = batched and reduction_fn is not None
    if ctx.reduced:
        total = _number(reduction_fn(scores))  # type: ignore[misc]
        score_data: Data = total
        explanation_data: Data = reduced_explanation(total)
    else:
        score_data = scores if batched else scores[0]
        explanation_data = explanations if batched else explanations[0]
    score = Variable(score_data, role=f"{role} score")
    explanation = Variable(explanation_data, role=f"{role} explanation")
    explanation.is_evaluation = True
    return score, explanation


def _feedback_texts(ctx: FunctionCtx, grad_explanation: Variable | None) -> list[str]:
    """The loss text of each item that failed ``success_fn`` ("" for the others): its
    own explanation when the scores were reduced, else the explanation's gradient."""
    n = len(ctx.success)
    if grad_explanation is None:
        return [""] * n
    if ctx.reduced:
        texts = list(ctx.item_explanations)
    else:
        texts = [str(t) for t in grad_explanation.items()]
        if len(texts) == 1 and n > 1:
            texts = texts * n
    return ["" if ok else text for ok, text in zip(ctx.success, texts)]


class DeterministicEvaluator(LLMFunction):
    """Scores each item with a Python function, as afnio's does.

    ``eval_fn(prediction, target)`` gets each item's data and returns its score (a
    bool or a number), or ``(score, feedback_text)``. ``eval_fn_purpose`` says what it
    checks (it appears in the explanation). Items failing ``success_fn`` (score below
    1 by default) send feedback to the prediction: ``feedback_text`` when ``eval_fn``
    gave one (no model call), else what the backward model writes from the item's
    explanation. With ``reduction_fn`` (e.g. ``sum``) a minibatch gets one aggregated
    score.

    Args:
        prediction: The Variable to score (one value or a minibatch).
        target: The expected value(s): a Variable, a str or number, or a list of them
            (None when ``eval_fn`` needs none).
        eval_fn: ``(prediction, target) -> score | (score, feedback_text)``.
        eval_fn_purpose: What ``eval_fn`` checks (default: its name).
        success_fn: ``score -> bool`` per item: True items send no feedback.
        reduction_fn: Folds a minibatch's scores into one (None: one score per item).
        reduction_fn_purpose: What ``reduction_fn`` does (default "summation" for
            ``sum``, else its name).
        role: The outputs' roles are ``"<role> score"`` and ``"<role> explanation"``.
        backward_model: The model writing feedback (None: the process default).

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import DeterministicEvaluator
        >>> prediction = Variable(["4", "5"], role="answer")
        >>> score, why = DeterministicEvaluator.apply(prediction, "4", lambda p, t: p == t)
        >>> score.data
        [1, 0]
        >>> score, why = DeterministicEvaluator.apply(
        ...     prediction, ["4", "4"], lambda p, t: p == t, "exact match", reduction_fn=sum)
        >>> score.data
        1
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        prediction: Variable,
        target: Variable | str | list[str] | None,
        eval_fn: Callable[[Any, Any], EvalResult],
        eval_fn_purpose: str | Variable | None = None,
        success_fn: Callable[[Any], bool] | None = None,
        reduction_fn: Reduction | None = None,
        reduction_fn_purpose: str | Variable | None = None,
        role: str = "evaluation",
        backward_model: Any = None,
    ) -> tuple[Variable, Variable]:
        if not isinstance(prediction, Variable):
            raise TypeError(f"prediction must be a Variable, got {type(prediction).__name__}")
        if not callable(eval_fn):
            raise TypeError("eval_fn must be callable: eval_fn(prediction, target) -> score")
        if reduction_fn is not None and not callable(reduction_fn):
            raise TypeError("reduction_fn must be callable (e.g. sum) or None")
        purpose = _text(eval_fn_purpose) if eval_fn_purpose is not None else _name_of(eval_fn)
        if not purpose.strip():
            raise ValueError("eval_fn_purpose must not be empty")
        success = success_fn or default_success
        predictions = prediction.items()
        n = len(predictions)
        targets = [None] * n if target is None else _targets(target, n)
        scores, explanations, own_feedback = [], [], []
        for p, t in zip(predictions, targets):
            result = eval_fn(p, t)
            score, text = result if isinstance(result, tuple) else (result, None)
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                if isinstance(score, bool):
                    score = int(score)
                else:
                    raise TypeError(f"eval_fn must return a bool or a number, got {type(score).__name__}")
            scores.append(score)
            own_feedback.append(None if text is None else str(text))
            explanations.append(str(text) if text is not None else _item_explanation(purpose, p, t, score))
        ctx.success = [bool(success(s)) for s in scores]
        ctx.own_feedback = own_feedback
        ctx.purpose = purpose
        ctx.targets = targets
        ctx.backward_model = backward_model
        ctx.save_for_backward(prediction)
        reduction_purpose = (
            _reduction_purpose(reduction_fn, reduction_fn_purpose) if reduction_fn is not None else ""
        )
        return _outputs(
            ctx, scores, explanations, prediction.is_batched, role, reduction_fn,
            lambda total: _reduced_explanation(purpose, reduction_purpose, total, judge=False),
        )

    @classmethod
    async def abackward(
        cls, ctx: FunctionCtx, grad_score: Variable | None = None, grad_explanation: Variable | None = None
    ) -> tuple:
        needs = ctx.needs_input_grad
        nothing = tuple(None for _ in needs)
        if not needs or not needs[0]:
            return nothing
        (prediction,) = ctx.saved_variables
        losses = _feedback_texts(ctx, grad_explanation)
        if not any(losses):
            return nothing
        asks = [i for i, text in enumerate(losses) if text and ctx.own_feedback[i] is None]
        written: dict[int, str] = {}
        if asks:
            client = resolve_backward_model(ctx.backward_model, f"{cls.__name__}Backward0")
            role = prediction.role or "prediction"
            items = prediction.items()

            async def one(i: int) -> str:
                evaluation: list[Message] = [
                    {
                        "role": "user",
                        "content": EVALUATION_DESCRIPTION.format(
                            purpose=ctx.purpose, target="" if ctx.targets[i] is None else ctx.targets[i]
                        ),
                    }
                ]
                fields = await request_fields(
                    client,
                    judge_backward_messages(evaluation, losses[i], [("var_1", role, str(items[i]))]),
                    {"var_1": f"feedback on the {role}"},
                    purpose="backward",
                    where=f"{cls.__name__}Backward0 (item {i})",
                    schema_name="gradients",
                )
                return fields["var_1"]

            results, errors = await gather_items([one(i) for i in asks])
            if errors:
                if not prediction.is_batched:
                    raise next(iter(errors.values()))
                raise MinibatchError(
                    f"{cls.__name__}Backward0", results, {asks[k]: e for k, e in errors.items()}
                )
            written = dict(zip(asks, results))
        texts = [
            (ctx.own_feedback[i] if ctx.own_feedback[i] is not None else written.get(i, "")) if losses[i] else ""
            for i in range(len(losses))
        ]
        data: Data = texts if prediction.is_batched else texts[0]
        return (make_gradient(data, prediction),) + nothing[1:]


def _name_of(function: Callable[..., Any]) -> str:
    name = getattr(function, "__name__", "")
    return "the evaluation function" if not name or name == "<lambda>" else name


class ExactMatchEvaluator(DeterministicEvaluator):
    """Score 1 when the prediction equals the target, else 0 (afnio's exact match);
    ``case_sensitive=False`` ignores case, and surrounding whitespace is ignored. On a
    minibatch the scores are summed by default (``reduction_fn=sum``, afnio's
    default); pass ``reduction_fn=None`` for one score per item.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import ExactMatchEvaluator
        >>> score, why = ExactMatchEvaluator.apply(Variable("green", role="color"), "red")
        >>> score.data, why.data
        (0, "The evaluation function, designed for 'exact match', compared the <DATA> field of the predicted variable ('green') with the <DATA> field of the target variable ('red'), resulting in a score: 0.")
        >>> ExactMatchEvaluator.apply(Variable(["green", "blue"]), ["red", "blue"])[0].data
        1
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        prediction: Variable,
        target: Variable | str | list[str],
        reduction_fn: Reduction | None = sum,
        reduction_fn_purpose: str | Variable | None = "summation",
        case_sensitive: bool = True,
        success_fn: Callable[[Any], bool] | None = None,
        role: str = "exact match",
        backward_model: Any = None,
    ) -> tuple[Variable, Variable]:
        def same(p: Any, t: Any) -> int:
            a, b = str(p).strip(), str(t if t is not None else "").strip()
            return int(a == b if case_sensitive else a.casefold() == b.casefold())

        return DeterministicEvaluator.forward(
            ctx, prediction, target, same, EXACT_MATCH, success_fn, reduction_fn,
            reduction_fn_purpose if reduction_fn is not None else None, role, backward_model,
        )


class LMJudgeEvaluator(LLMFunction):
    """An LLM judge, in afnio's form or with ``{name}`` fields of ``inputs`` only.

    ``messages`` (seed form) are filled from ``inputs`` and, in afnio's form, from
    ``prediction`` and ``target`` (the ``{prediction}`` and ``{target}`` fields), then
    sent to ``model``, which answers with a score and an explanation. Backward turns
    the explanation of each item that failed ``success_fn`` into feedback (items that
    passed make no call). With ``eval_mode=True`` (afnio's default when ``prediction``
    is given) only the prediction gets feedback; with ``False`` only the judge's
    ``messages`` and ``inputs``; left unset without ``prediction``, every Variable that
    requires grad. On a minibatch the scores are summed by default (afnio's
    ``reduction_fn=sum``; None for one score per item).

    Example:
        >>> from afnio_langchain import Variable, set_backward_model
        >>> from afnio_langchain.autodiff import LMJudgeEvaluator
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> judge = ScriptedChatModel(judge='{"score": 0, "explanation": "Too long."}')
        >>> answer = Variable("A very long answer", role="answer", requires_grad=True)
        >>> messages = [{"role": "user", "content": [Variable("Rate: {prediction}")]}]
        >>> score, why = LMJudgeEvaluator.apply(judge, messages, answer)
        >>> score.data, why.data
        (0.0, 'Too long.')
    """

    @staticmethod
    async def aforward(
        ctx: FunctionCtx,
        model: Any,
        messages: list[dict[str, Any]],
        prediction: Variable | None = None,
        target: Variable | str | list[str] | None = None,
        inputs: dict[str, Any] | None = None,
        success_fn: Callable[[Any], bool] | None = None,
        reduction_fn: Reduction | None = sum,
        reduction_fn_purpose: str | Variable | None = "summation",
        eval_mode: bool | Variable | None = None,
        role: str = "judge",
        backward_model: Any = None,
        **completion_args: Any,
    ) -> tuple[Variable, Variable]:
        client = as_model_client(model)
        fields = dict(inputs or {})
        named: dict[str, Any] = {}
        if prediction is not None:
            if not isinstance(prediction, Variable):
                raise TypeError(f"prediction must be a Variable, got {type(prediction).__name__}")
            named["prediction"] = prediction
        if target is not None:
            named["target"] = list(target) if isinstance(target, tuple) else target
        clash = sorted(set(named) & set(fields))
        if clash:
            raise ValueError(f"inputs must not contain {clash}: they are given as arguments")
        if isinstance(eval_mode, Variable):
            eval_mode = bool(eval_mode.data)
        if eval_mode is None and prediction is not None:
            eval_mode = True
        conversation = build_conversation(messages, {**named, **fields})
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
        success = success_fn or default_success
        ctx.conversation = conversation
        ctx.requests = requests
        ctx.success = [bool(success(s)) for s in scores]
        ctx.backward_model = backward_model
        ctx.eval_mode = eval_mode
        ctx.prediction = prediction
        reduction_purpose = (
            _reduction_purpose(reduction_fn, reduction_fn_purpose) if reduction_fn is not None else ""
        )
        return _outputs(
            ctx, scores, [str(r["explanation"]) for r in replies], conversation.batched, role,
            reduction_fn, lambda total: _reduced_explanation(LM_JUDGE, reduction_purpose, total, judge=True),
        )

    @staticmethod
    def item_feedback(
        ctx: FunctionCtx, grad_score: Variable | None = None, grad_explanation: Variable | None = None
    ) -> list[str]:
        """The explanation of each item that failed ``success_fn`` (the others send none)."""
        return _feedback_texts(ctx, grad_explanation)

    @staticmethod
    def backward_messages(
        ctx: FunctionCtx, item: int, variables: Sequence[VariableSpec], feedback: str
    ) -> list[Message]:
        """The judge backward prompt: the judge's request, its explanation, the variables."""
        return judge_backward_messages(ctx.requests[item], feedback, variables)

    @classmethod
    async def abackward(cls, ctx: FunctionCtx, *grad_outputs: Variable | None) -> tuple:
        feedback = cls.item_feedback(ctx, *grad_outputs)
        slots = ctx.conversation.slots
        needs = list(ctx.needs_input_grad[: len(slots)])
        if ctx.eval_mode is not None:
            for j, slot in enumerate(slots):
                is_prediction = ctx.prediction is not None and slot.variable is ctx.prediction
                needs[j] = needs[j] and (is_prediction if ctx.eval_mode else not is_prediction)
        masked = types.SimpleNamespace(needs_input_grad=tuple(needs), backward_model=ctx.backward_model)

        def request(i: int, variables: list[VariableSpec], text: str) -> list[Message]:
            return cls.backward_messages(ctx, i, variables, text)

        gradients = await item_gradients(masked, ctx.conversation, feedback, request, cls.__name__)  # type: ignore[arg-type]
        # A reduction_fn_purpose given as a Variable is an input too: it gets none.
        return tuple(gradients) + (None,) * (len(ctx.needs_input_grad) - len(slots))
