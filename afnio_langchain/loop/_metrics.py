"""Metrics: the one verdict type (:class:`MetricResult`) every face of the package
trains on, the one normaliser of what metrics return, and the built-in text metrics.

A metric is any callable ``metric(example, prediction)`` where ``example`` is the
example dict and ``prediction`` the chain's output (a ``Variable``, or a plain value
for chains without trainable steps). It returns a score (``float`` in [0, 1] by
convention, or ``bool``), a :class:`MetricResult`, a ``(score, feedback)`` tuple, a
mapping with ``score`` (and ``feedback``), or an object with those attributes (such
as DSPy's ``dspy.Prediction(score=..., feedback=...)``).
Feedback text becomes the gradient passed to ``prediction.backward(...)``; a metric
that gives none gets a default that shows the score (and the expected output, when
the example has one). Objects with an ``async def ascore(example, prediction)``
method are awaited instead of called (so LM judges run concurrently).
"""

from __future__ import annotations

import inspect
import json
import math
import re
import string
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from afnio_langchain.autodiff import Variable
from afnio_langchain.loop import _prompts as prompts

Example = dict[str, Any]
"""One example: a dict of named values (inputs and the expected output)."""

TARGET_KEYS = ("answer", "target", "label", "expected", "output")
"""Keys looked for, in order, when an example's expected output is needed."""

MetricValue = Union[float, bool, "MetricResult", tuple[float, str]]
Metric = Callable[[Example, Any], Union[MetricValue, Awaitable[MetricValue]]]


@dataclass(frozen=True)
class MetricResult:
    """A metric's verdict on one example.

    Attributes:
        score: The score, a finite number (1.0 means correct by convention).
        feedback: What the output should change (becomes the gradient), or None.

    Example:
        >>> from afnio_langchain.loop import MetricResult, as_metric_result
        >>> as_metric_result((0.5, "Too long."))
        MetricResult(score=0.5, feedback='Too long.')
        >>> as_metric_result(True).score
        1.0
    """

    score: float
    feedback: str | None = None

    def __post_init__(self) -> None:
        score = number_of(self.score)
        if score is None or not math.isfinite(score):
            raise TypeError(f"a metric score must be a finite number or bool, got {self.score!r}")
        object.__setattr__(self, "score", score)
        if self.feedback is not None and not isinstance(self.feedback, str):
            raise TypeError(f"metric feedback must be a str or None, got {type(self.feedback).__name__}")


_EXPECTED = (
    "a number, a bool, a MetricResult, a (score, feedback) tuple, a mapping with 'score' "
    "(and 'feedback'), or an object with those attributes (dspy.Prediction(score=..., "
    "feedback=...))"
)


def number_of(value: Any) -> float | None:
    """``value`` as a float when it is a number: a bool, an int or float, or any other
    numeric scalar (NumPy's ``np.bool_``, ``np.int64``, ``np.float32``, a 0-d array, a
    ``Decimal``: what converts with ``float()`` and is not text); else None.

    Example:
        >>> from afnio_langchain.loop._metrics import number_of
        >>> number_of(True), number_of(3), number_of("0.5")
        (1.0, 3.0, None)
    """
    if isinstance(value, (bool, int, float)):
        return float(value)
    if isinstance(value, (str, bytes, bytearray)) or not (
        hasattr(value, "__float__") or hasattr(value, "__index__")
    ):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def as_metric_result(value: Any) -> MetricResult:
    """Normalise what a metric returned (see the module docstring for the shapes).

    Empty feedback is no feedback (None).

    Raises:
        TypeError: Anything else (the message says what was returned and what is expected).

    Example:
        >>> from afnio_langchain.loop import as_metric_result
        >>> as_metric_result({"score": 0, "feedback": "Name the city."})
        MetricResult(score=0.0, feedback='Name the city.')
    """
    if isinstance(value, MetricResult):
        return value
    feedback: Any = None
    if isinstance(value, (bool, int, float)):
        score = value
    elif isinstance(value, tuple) and len(value) == 2:
        score, feedback = value
    elif isinstance(value, Mapping):
        if "score" not in value:
            raise TypeError(f"the metric returned a mapping without 'score'; expected {_EXPECTED}")
        score, feedback = value["score"], value.get("feedback")
    elif not isinstance(value, (str, bytes, tuple, list)) and hasattr(value, "score"):
        score, feedback = value.score, getattr(value, "feedback", None)
    elif number_of(value) is not None:  # NumPy's scalars; after the shapes that carry feedback
        score = value
    else:
        raise TypeError(
            f"the metric returned {type(value).__name__} ({value!r:.100}); expected {_EXPECTED}"
        )
    number = number_of(score)
    if number is None or not math.isfinite(number):
        raise TypeError(f"the metric's score must be a number or a bool (finite), got {score!r:.100}")
    text = None if feedback is None else str(feedback).strip() or None
    return MetricResult(number, text)


async def acall_metric(metric: Metric, example: Example, prediction: Any) -> Any:
    """Run ``metric`` on one example (awaiting ``ascore`` methods and coroutine results)
    and return what it returned, not yet normalised (see :func:`as_metric_result`).

    Example:
        >>> import asyncio
        >>> from afnio_langchain.loop import acall_metric
        >>> asyncio.run(acall_metric(lambda example, prediction: (0.5, "Shorter."), {}, "x"))
        (0.5, 'Shorter.')
    """
    method = getattr(metric, "ascore", None)
    if method is not None and inspect.iscoroutinefunction(method):
        return await method(example, prediction)
    value = metric(example, prediction)
    if inspect.isawaitable(value):
        value = await value
    return value


async def ascore(metric: Metric, example: Example, prediction: Any) -> MetricResult:
    """Run ``metric`` on one example (awaiting ``ascore`` methods and coroutine results)
    and normalise the result."""
    return as_metric_result(await acall_metric(metric, example, prediction))


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


class GraphState(dict):  # type: ignore[type-arg]
    """The state a LangGraph graph returned (``{"messages": [...], ...}``), as
    ``evaluate`` hands it to a metric: a plain dict to the metric, whose text
    (:func:`prediction_text`) is its last message's, as LangChain's agent docs read the
    answer (``result["messages"][-1]``). Other dicts with a ``messages`` key (a chain
    passing a history through) are not read that way: their text is the whole dict's
    (:func:`structured_text`).

    Example:
        >>> from langchain_core.messages import AIMessage, HumanMessage
        >>> from afnio_langchain.loop import GraphState, prediction_text
        >>> state = {"messages": [HumanMessage("Weather in SF?"), AIMessage("Sunny.")]}
        >>> prediction_text(GraphState(state)), prediction_text(state).startswith('{"messages": ')
        ('Sunny.', True)
    """


def is_langgraph_graph(runnable: Any) -> bool:
    """Whether ``runnable`` is a LangGraph graph (an agent from ``create_agent`` or
    ``create_react_agent``, a compiled ``StateGraph``), also behind ``with_config`` or
    ``bind``.

    Example:
        >>> from langchain_core.runnables import RunnableLambda
        >>> from afnio_langchain.loop import is_langgraph_graph
        >>> is_langgraph_graph(RunnableLambda(lambda x: x))
        False
    """
    graph = getattr(runnable, "bound", runnable)
    return type(graph).__module__.startswith("langgraph.")


def prediction_text(prediction: Any) -> str:
    """The text of a chain output: a Variable's data, a message's content, a str; a
    :class:`GraphState`'s last message's text; a dict (a JSON parser's fields) as
    :func:`structured_text` writes it.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.loop import prediction_text
        >>> prediction_text({"city": Variable("Rome"), "age": Variable("42")})
        '{"age": "42", "city": "Rome"}'
    """
    if isinstance(prediction, Variable):
        data = prediction.data
        return "\n".join(str(item) for item in data) if isinstance(data, list) else str(data)
    if isinstance(prediction, GraphState):
        messages = prediction.get("messages")
        if isinstance(messages, list) and messages:
            prediction = messages[-1]
            if isinstance(prediction, Mapping) and "content" in prediction:
                return str(prediction["content"])
    elif isinstance(prediction, Mapping):
        return structured_text(prediction)
    content = getattr(prediction, "content", None)
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: LangChain's message text joins them
        text = getattr(prediction, "text", None)
        return str(text() if callable(text) else text or "")
    return "" if prediction is None else str(prediction)


def structured_text(value: Mapping[str, Any]) -> str:
    """A dict output or target as one comparable text: JSON with sorted keys, each
    field as text the way a JSON parser's fields hold it (a string as it is, a Variable's
    text, any other value as JSON), so ``{"age": 42}`` in a dataset matches a parsed
    reply's ``"42"``.

    Example:
        >>> from afnio_langchain.loop import structured_text
        >>> structured_text({"name": "Ada", "age": 36}) == structured_text({"age": "36", "name": "Ada"})
        True
    """

    def field(item: Any) -> str:
        if isinstance(item, Variable):
            return prediction_text(item)
        return item if isinstance(item, str) else json.dumps(item, ensure_ascii=False, default=str)

    return json.dumps({str(k): field(v) for k, v in value.items()}, ensure_ascii=False, sort_keys=True)


def target_text(target: Any) -> str:
    """An example's target as text: a dict as :func:`structured_text` writes it (to
    compare with a dict output), anything else as ``str``."""
    return structured_text(target) if isinstance(target, Mapping) else str(target)


def find_target(example: Mapping[str, Any], target_key: str | None = None) -> Any:
    """The expected output of an example: ``example[target_key]``, or the first of
    :data:`TARGET_KEYS` it has.

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
    if target_key is not None:
        return target_text(find_target(example, target_key))
    return expected_text(example)


_PUNCTUATION = string.punctuation + "\u2018\u2019\u201c\u201d\u00ab\u00bb"


def normalize_text(text: str) -> str:
    """Casefold, collapse whitespace and strip surrounding punctuation and quotes.

    Example:
        >>> from afnio_langchain.loop import normalize_text
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
        >>> from afnio_langchain.loop import ExactMatch
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
        target = target_text(find_target(example, self.target_key))
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
        >>> from afnio_langchain.loop import Contains
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
        target = target_text(find_target(example, self.target_key)).strip()
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


def feedback_text(result: MetricResult, metric: str, expected: str | None = None) -> str:
    """The feedback a scored item sends backward: the metric's own text, or (when it
    gave none) a note of the score on ``metric`` and the ``expected`` output, if known.
    The one wording of both faces (``fit`` and the DSPy teleprompter).

    Example:
        >>> from afnio_langchain.loop import MetricResult, feedback_text
        >>> feedback_text(MetricResult(0.0, "Name the city."), "exact_match")
        'Name the city.'
        >>> feedback_text(MetricResult(0.25), "exact_match", expected="42")
        "This output scored 0.25 out of 1 on the metric exact_match. The expected output was '42'."
    """
    if result.feedback and result.feedback.strip():
        return result.feedback
    text = prompts.DEFAULT_FEEDBACK.format(score=result.score, metric=metric)
    if expected is not None:
        text += prompts.DEFAULT_FEEDBACK_TARGET.format(target=expected)
    return text


def default_feedback(
    result: MetricResult, example: Example, metric: Metric, target_key: str | None = None
) -> str:
    """:func:`feedback_text` for an example dict (its target read with :func:`find_target`)."""
    return feedback_text(result, metric_name(metric), expected_text(example, target_key))


def expected_text(example: Mapping[str, Any], target_key: str | None = None) -> str | None:
    """The expected output of an example dict as text, or None when it has none."""
    try:
        return target_text(find_target(example, target_key))
    except KeyError:
        return None


def _clip(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
