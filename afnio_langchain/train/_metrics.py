"""The LM judge metric and metric names (``exact_match``, ``contains``, ``judge``, or
``module:attribute``). The metric protocol itself (:class:`MetricResult` and the
built-in text metrics) lives in :mod:`afnio_langchain.loop`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from afnio_langchain._aio import run_sync
from afnio_langchain.loop import (
    TARGET_KEYS,
    Contains,
    ExactMatch,
    Example,
    Metric,
    MetricResult,
    optional_reference,
    prediction_text,
)
from afnio_langchain.models import ModelClient, as_model_client, parse_score, request_fields
from afnio_langchain.train import _prompts as prompts


class LMJudge:
    """A language model grades each output against criteria (and the example's
    target, when it has one) and says what should change: the score is the grade
    divided by ``scale``; the feedback becomes the gradient.

    Calls are made with purpose ``"judge"`` (counted apart from forward calls). The
    reply is requested as JSON and parsed tolerantly.

    Args:
        model: A LangChain chat model, an openai client (with ``model_name``), a
            ``dspy.LM`` or a :class:`~afnio_langchain.models.ModelClient`.
        criteria: What a good output is, in plain language.
        target_key: The example key holding a reference output; None looks for the
            usual keys and shows no reference when there is none.
        input_keys: Example keys shown to the judge as the input (default: all but
            the target).
        scale: The maximum grade (the judge answers 0..scale).
        model_name: The model name, needed with an ``openai`` client.
        **completion_args: Passed to the model (``temperature``...).

    Example:
        >>> from afnio_langchain.train import LMJudge
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> judge = LMJudge(ScriptedChatModel(judge='{"score": 6, "feedback": "Cite a source."}'),
        ...                 criteria="A factual, sourced answer.")
        >>> judge({"question": "Why is the sky blue?"}, "Because of the sea.")
        MetricResult(score=0.6, feedback='Cite a source.')
    """

    name = "lm_judge"

    def __init__(
        self,
        model: Any,
        criteria: str = prompts.JUDGE_DEFAULT_CRITERIA,
        *,
        target_key: str | None = None,
        input_keys: list[str] | None = None,
        scale: int = 10,
        model_name: str | None = None,
        **completion_args: Any,
    ) -> None:
        if model is None:
            raise TypeError("LMJudge needs model=... (a chat model or client)")
        if not isinstance(criteria, str) or not criteria.strip():
            raise ValueError("LMJudge criteria must be a non-empty str")
        if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
            raise ValueError(f"LMJudge scale must be a positive int, got {scale!r}")
        self.client: ModelClient = as_model_client(model, model_name)
        self.criteria = criteria
        self.target_key = target_key
        self.input_keys = input_keys
        self.scale = scale
        self.completion_args = completion_args

    async def ascore(self, example: Example, prediction: Any) -> MetricResult:
        """Grade one output (one ``"judge"`` call, re-asked if the reply is unusable)."""
        reference = optional_reference(example, self.target_key)
        reference_key = self.target_key or next((k for k in TARGET_KEYS if k in example), None)
        keys = self.input_keys or [k for k in example if k != reference_key]
        inputs = {k: str(example[k]) for k in keys if k in example}
        fields = await request_fields(
            self.client,
            prompts.judge_messages(
                self.criteria, inputs, prediction_text(prediction), reference, self.scale
            ),
            prompts.JUDGE_FIELDS,
            purpose="judge",
            where="LMJudge metric",
            schema_name="verdict",
            **self.completion_args,
        )
        score = grade_ratio(fields[prompts.JUDGE_SCORE_KEY], self.scale)
        feedback = fields[prompts.JUDGE_FEEDBACK_KEY].strip() or None
        return MetricResult(score, feedback)

    def __call__(self, example: Example, prediction: Any) -> MetricResult:
        return run_sync(lambda: self.ascore(example, prediction))

    def __repr__(self) -> str:
        return f"LMJudge(model={self.client.model_name!r}, scale={self.scale})"


def grade_ratio(text: str, scale: int) -> float:
    """A judge's grade as a score in [0, 1]: ``"7"`` on a scale of 10 is 0.7; a
    fraction (``"7/10"``) or a verdict word (``"pass"``) is taken as it is.

    Raises:
        ValueError: No grade in ``text``.

    Example:
        >>> from afnio_langchain.train._metrics import grade_ratio
        >>> grade_ratio("7", 10), grade_ratio("3/4", 10), grade_ratio("pass", 10)
        (0.7, 0.75, 1.0)
    """
    value = parse_score(text)
    words = text.strip().lower()
    if "/" not in words and re.search(r"\d", words):
        value = value / scale
    return min(1.0, max(0.0, value))


BUILTIN_METRICS: dict[str, Callable[..., Metric]] = {
    "exact_match": ExactMatch,
    "contains": Contains,
}


def resolve_metric(
    spec: str | Metric, *, target_key: str | None = None, judge_model: Any = None,
    criteria: str | None = None,
) -> Metric:
    """A metric from a name: ``exact_match``, ``contains``, ``judge`` (needs
    ``judge_model``), or ``module:attribute`` naming a callable; callables pass through.

    Raises:
        ValueError: Unknown name, or ``judge`` without a model.
        ImportError, AttributeError: ``module:attribute`` cannot be found.
        TypeError: The named object is not callable.

    Example:
        >>> from afnio_langchain.train import resolve_metric
        >>> resolve_metric("contains", target_key="label")
        Contains(target_key='label', normalize=True)
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise TypeError(f"a metric must be a name or a callable, got {type(spec).__name__}")
    name = spec.strip()
    if name in BUILTIN_METRICS:
        return BUILTIN_METRICS[name](target_key)
    if name in ("judge", "lm_judge"):
        if judge_model is None:
            raise ValueError("the judge metric needs a model (judge_model=..., --judge-model)")
        return LMJudge(
            judge_model, criteria or prompts.JUDGE_DEFAULT_CRITERIA, target_key=target_key
        )
    if ":" in name:
        from afnio_langchain.train._loading import import_object

        metric = import_object(name)
        if not callable(metric):
            raise TypeError(f"metric {name!r} is a {type(metric).__name__}, not a callable")
        return metric
    known = ", ".join([*BUILTIN_METRICS, "judge"])
    raise ValueError(f"unknown metric {name!r}: use one of {known}, or module:function")
