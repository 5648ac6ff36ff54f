"""Metrics: how well a chain's output fits an example, and what should change.

A metric is any callable ``metric(example, prediction)`` where ``example`` is the
example dict and ``prediction`` the chain's output (a ``Variable``, or a plain value
for chains without trainable steps). It returns a score (``float`` in [0, 1] by
convention, or ``bool``), a :class:`MetricResult`, or a ``(score, feedback)`` tuple.
Feedback text becomes the gradient passed to ``prediction.backward(...)``; a metric
that gives none gets a default that shows the score (and the expected output, when
the example has one). Objects with an ``async def ascore(example, prediction)``
method are awaited instead of called (so LM judges run concurrently).
"""

from __future__ import annotations

import inspect
import math
import re
import string
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from afnio_langchain._aio import run_sync
from afnio_langchain.autodiff.evaluators import parse_score
from afnio_langchain.autodiff.variable import Variable
from afnio_langchain.models import ModelClient, as_model_client
from afnio_langchain.models.structured import request_fields
from afnio_langchain.train import prompts
from afnio_langchain.train.data import TARGET_KEYS, Example

MetricValue = Union[float, bool, "MetricResult", tuple[float, str]]
Metric = Callable[[Example, Any], Union[MetricValue, Awaitable[MetricValue]]]


@dataclass(frozen=True)
class MetricResult:
    """A metric's verdict on one example.

    Attributes:
        score: The score, a finite number (1.0 means correct by convention).
        feedback: What the output should change (becomes the gradient), or None.

    Example:
        >>> from afnio_langchain.train import MetricResult, as_metric_result
        >>> as_metric_result((0.5, "Too long."))
        MetricResult(score=0.5, feedback='Too long.')
        >>> as_metric_result(True).score
        1.0
    """

    score: float
    feedback: str | None = None

    def __post_init__(self) -> None:
        score = self.score
        if isinstance(score, bool):
            score = float(score)
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            raise TypeError(f"a metric score must be a finite number or bool, got {self.score!r}")
        object.__setattr__(self, "score", float(score))
        if self.feedback is not None and not isinstance(self.feedback, str):
            raise TypeError(f"metric feedback must be a str or None, got {type(self.feedback).__name__}")


def as_metric_result(value: Any) -> MetricResult:
    """Normalise what a metric returned: a number or bool, a :class:`MetricResult`, or
    a ``(score, feedback)`` tuple.

    Raises:
        TypeError: Anything else (the message says what was returned).
    """
    if isinstance(value, MetricResult):
        return value
    if isinstance(value, bool) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return MetricResult(float(value))
    if isinstance(value, tuple) and len(value) == 2:
        score, feedback = value
        return MetricResult(score, None if feedback is None else str(feedback))
    raise TypeError(
        "a metric must return a number, a bool, a MetricResult or a (score, feedback) tuple; "
        f"got {type(value).__name__}: {value!r:.100}"
    )


async def ascore(metric: Metric, example: Example, prediction: Any) -> MetricResult:
    """Run ``metric`` on one example (awaiting ``ascore`` methods and coroutine results)
    and normalise the result."""
    method = getattr(metric, "ascore", None)
    if method is not None and inspect.iscoroutinefunction(method):
        value = await method(example, prediction)
    else:
        value = metric(example, prediction)
        if inspect.isawaitable(value):
            value = await value
    return as_metric_result(value)


def is_async_metric(metric: Metric) -> bool:
    """True when the metric is awaited (an ``ascore`` method or a coroutine function)."""
    method = getattr(metric, "ascore", None)
    return (method is not None and inspect.iscoroutinefunction(method)) or (
        inspect.iscoroutinefunction(metric)
        or inspect.iscoroutinefunction(type(metric).__call__)
    )


def metric_name(metric: Metric) -> str:
    """A readable name for reports (``name`` attribute, function or class name)."""
    name = getattr(metric, "name", None)
    if isinstance(name, str) and name:
        return name
    return getattr(metric, "__name__", None) or type(metric).__name__


def prediction_text(prediction: Any) -> str:
    """The text of a chain output: a Variable's data, a message's content, a str."""
    if isinstance(prediction, Variable):
        data = prediction.data
        return "\n".join(str(item) for item in data) if isinstance(data, list) else str(data)
    content = getattr(prediction, "content", None)
    if isinstance(content, str):
        return content
    return "" if prediction is None else str(prediction)


def find_target(example: Mapping[str, Any], target_key: str | None = None) -> Any:
    """The expected output of an example: ``example[target_key]``, or the first of
    :data:`~afnio_langchain.train.data.TARGET_KEYS` it has.

    Raises:
        KeyError: The example has no such key.
    """
    if target_key is not None:
        if target_key not in example:
            raise KeyError(f"the example has no key {target_key!r} (it has: {', '.join(example)})")
        return example[target_key]
    for key in TARGET_KEYS:
        if key in example:
            return example[key]
    raise KeyError(
        f"the example has none of the keys {', '.join(TARGET_KEYS)} (it has: {', '.join(example)}); "
        "pass target_key=..."
    )


def optional_reference(example: Mapping[str, Any], target_key: str | None = None) -> str | None:
    """The expected output as text for a judge, or None when the example has none and no
    ``target_key`` asked for one (a judge can grade without a reference).

    Raises:
        KeyError: ``target_key`` was given and the example lacks it.
    """
    try:
        return str(find_target(example, target_key))
    except KeyError:
        if target_key is not None:
            raise
        return None


_PUNCTUATION = string.punctuation + "\u2018\u2019\u201c\u201d\u00ab\u00bb"


def normalize_text(text: str) -> str:
    """Casefold, collapse whitespace and strip surrounding punctuation and quotes.

    Example:
        >>> from afnio_langchain.train.metrics import normalize_text
        >>> normalize_text('  "Positive." ')
        'positive'
    """
    return " ".join(text.split()).strip(_PUNCTUATION + " ").casefold()


class ExactMatch:
    """Score 1 when the output equals the example's target, else 0 with feedback
    showing both.

    Args:
        target_key: The example key holding the expected output (default: the first
            of ``answer``, ``target``, ``label``, ``expected``, ``output``).
        normalize: Compare after :func:`normalize_text` (case, spacing, surrounding
            punctuation); else compare the stripped texts exactly.

    Example:
        >>> from afnio_langchain.train import ExactMatch
        >>> metric = ExactMatch()
        >>> metric({"answer": "Paris"}, "paris.")
        MetricResult(score=1.0, feedback=None)
        >>> metric({"answer": "Paris"}, "Rome").feedback
        "The expected output was exactly 'Paris', but the output was 'Rome'."
    """

    name = "exact_match"

    def __init__(self, target_key: str | None = None, *, normalize: bool = True) -> None:
        self.target_key = target_key
        self.normalize = normalize

    def _same(self, output: str, target: str) -> bool:
        if self.normalize:
            return normalize_text(output) == normalize_text(target)
        return output.strip() == target.strip()

    def __call__(self, example: Example, prediction: Any) -> MetricResult:
        target = str(find_target(example, self.target_key))
        output = prediction_text(prediction)
        if self._same(output, target):
            return MetricResult(1.0)
        return MetricResult(
            0.0, prompts.EXACT_MATCH_FEEDBACK.format(target=target, output=_clip(output))
        )

    def __repr__(self) -> str:
        return f"ExactMatch(target_key={self.target_key!r}, normalize={self.normalize})"


class Contains:
    """Score 1 when the output contains the example's target (as a whole word or
    phrase, ignoring case when ``normalize``), else 0 with feedback.

    Example:
        >>> from afnio_langchain.train import Contains
        >>> Contains()({"answer": "Paris"}, "The capital is Paris.").score
        1.0
        >>> Contains()({"answer": "Paris"}, "It is Parisian.").score
        0.0
    """

    name = "contains"

    def __init__(self, target_key: str | None = None, *, normalize: bool = True) -> None:
        self.target_key = target_key
        self.normalize = normalize

    def __call__(self, example: Example, prediction: Any) -> MetricResult:
        target = str(find_target(example, self.target_key)).strip()
        output = prediction_text(prediction)
        flags = re.IGNORECASE if self.normalize else 0
        pattern = r"(?<!\w)" + re.escape(target) + r"(?!\w)"
        if target and re.search(pattern, output, flags):
            return MetricResult(1.0)
        return MetricResult(0.0, prompts.CONTAINS_FEEDBACK.format(target=target, output=_clip(output)))

    def __repr__(self) -> str:
        return f"Contains(target_key={self.target_key!r}, normalize={self.normalize})"


exact_match = ExactMatch()
""":class:`ExactMatch` with default options."""

contains = Contains()
""":class:`Contains` with default options."""


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
        >>> from afnio_langchain.train.metrics import grade_ratio
        >>> grade_ratio("7", 10), grade_ratio("3/4", 10), grade_ratio("pass", 10)
        (0.7, 0.75, 1.0)
    """
    value = parse_score(text)
    words = text.strip().lower()
    if "/" not in words and re.search(r"\d", words):
        value = value / scale
    return min(1.0, max(0.0, value))


def default_feedback(
    result: MetricResult, example: Example, metric: Metric, target_key: str | None = None
) -> str:
    """The metric's feedback, or a default showing the score (and the expected output)."""
    if result.feedback and result.feedback.strip():
        return result.feedback
    text = prompts.DEFAULT_FEEDBACK.format(score=result.score, metric=metric_name(metric))
    try:
        text += prompts.DEFAULT_FEEDBACK_TARGET.format(target=str(find_target(example, target_key)))
    except KeyError:
        pass
    return text


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
        from afnio_langchain.train.loading import import_object

        metric = import_object(name)
        if not callable(metric):
            raise TypeError(f"metric {name!r} is a {type(metric).__name__}, not a callable")
        return metric
    known = ", ".join([*BUILTIN_METRICS, "judge"])
    raise ValueError(f"unknown metric {name!r}: use one of {known}, or module:function")


def _clip(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
