"""Metrics over an agent's trajectory: which tools it called and with what arguments, how
many steps it took, whether its final answer is right, and an LM judge of the whole run.

Each is a metric in the sense of :mod:`afnio_langchain.loop`:
``metric(example, prediction) -> MetricResult`` whose feedback names what went wrong in
the run (it becomes the gradient sent back through the agent). ``prediction`` is the
output Variable of an agent (:class:`~afnio_langchain.agents._runnable.AgentRunnable`,
:class:`~afnio_langchain.agents.TrainableAgent`), a
:class:`~afnio_langchain.agents._trajectory.Trajectory`, or an agent's final
state (``{"messages": [...]}``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import HumanMessage

from afnio_langchain._aio import gather_all, run_sync
from afnio_langchain.agents import _prompts as prompts
from afnio_langchain.agents._trajectory import (
    ToolCallRecord,
    Trajectory,
    jsonable,
    tool_args_text,
    trajectory_from_messages,
    trajectory_of,
)
from afnio_langchain.loop import (
    Contains,
    ExactMatch,
    Example,
    Metric,
    MetricResult,
    ascore,
    find_target,
    metric_name,
    optional_reference,
)
from afnio_langchain.models import (
    ModelClient,
    as_model_client,
    message_text,
    parse_json_object,
    parse_score,
    request_fields,
)

ARG_MODES = ("subset", "exact", "ignore")


def as_trajectory(prediction: Any) -> Trajectory:
    """The trajectory of one agent run from an agent's output Variable, a Trajectory, or
    a final agent state ``{"messages": [...]}`` (the run after its last user message).

    Raises:
        TypeError: The prediction is none of these, or a minibatch output.
        ValueError: A Variable no agent produced.
    """
    if isinstance(prediction, Mapping) and isinstance(prediction.get("messages"), list):
        messages = prediction["messages"]
        start = max((k for k, m in enumerate(messages) if isinstance(m, HumanMessage)), default=-1)
        task = message_text(messages[start]) if start >= 0 else ""
        return trajectory_from_messages(
            task, messages[start + 1 :], structured_response=prediction.get("structured_response")
        )
    found = trajectory_of(prediction)
    if isinstance(found, list):
        raise TypeError(
            "a trajectory metric scores one run; got a minibatch output (score each item, "
            "e.g. run the agent with batch/abatch)"
        )
    return found


def _norm(value: Any) -> Any:
    """Values compared leniently: strings stripped and casefolded, numbers as numbers,
    numeric strings as numbers, containers element-wise."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            return text.casefold()
    if isinstance(value, Mapping):
        return {str(k): _norm(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return str(value)


def _expected_calls(spec: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(spec, (list, tuple)):
        raise TypeError(
            f"example[{key!r}] must be a list of tool calls ({{'name': ..., 'args': {{...}}}} "
            f"or tool names), got {type(spec).__name__}"
        )
    calls = []
    for k, item in enumerate(spec):
        if isinstance(item, str):
            calls.append({"name": item, "args": None})
        elif isinstance(item, Mapping) and isinstance(item.get("name"), str):
            args = item.get("args")
            if args is not None and not isinstance(args, Mapping):
                raise TypeError(f"example[{key!r}][{k}]['args'] must be a dict")
            calls.append({"name": item["name"], "args": None if args is None else dict(args)})
        else:
            raise TypeError(
                f"example[{key!r}][{k}] must be a tool name or a dict with 'name' (and "
                f"'args'), got {item!r:.100}"
            )
    return calls


class ToolCallMatch:
    """Did the agent call the expected tools with the expected arguments?

    ``example[expected_key]`` lists the expected calls: tool names, or
    ``{"name": ..., "args": {...}}`` dicts. The score is the share of expected calls
    the run made (with ``penalize_extra``, extra calls count against it:
    ``matched / (expected + extra)``); the feedback names missing calls, calls with
    wrong arguments and needless calls. An empty list means no tool should be called.

    Args:
        expected_key: The example key holding the expected calls.
        args: ``"subset"`` (the expected arguments must appear with equal values; strings
            compare case-insensitively, ``"42"`` equals ``42``), ``"exact"`` (the same
            arguments), or ``"ignore"`` (names only).
        ordered: The expected calls must happen in this order.
        penalize_extra: Count calls not in the expected list against the score.

    Example:
        >>> from langchain_core.messages import AIMessage, ToolMessage
        >>> from afnio_langchain.agents._trajectory import trajectory_from_messages
        >>> from afnio_langchain.agents import ToolCallMatch
        >>> run = trajectory_from_messages("Where is order 42?", [
        ...     AIMessage("", tool_calls=[{"name": "lookup_order", "args": {"order_id": "24"},
        ...                                "id": "1"}]),
        ...     ToolMessage("not found", tool_call_id="1"), AIMessage("No such order.")])
        >>> example = {"expected_tool_calls": [{"name": "lookup_order", "args": {"order_id": 42}}]}
        >>> result = ToolCallMatch()(example, run)
        >>> result.score
        0.0
        >>> print(result.feedback)
        The agent should have called the tool lookup_order with arguments {"order_id": 42}, but called it with {"order_id": "24"}.
    """

    name = "tool_calls"

    def __init__(
        self,
        expected_key: str = "expected_tool_calls",
        *,
        args: str = "subset",
        ordered: bool = False,
        penalize_extra: bool = True,
    ) -> None:
        if args not in ARG_MODES:
            raise ValueError(f"args must be one of {ARG_MODES}, got {args!r}")
        self.expected_key = expected_key
        self.args = args
        self.ordered = ordered
        self.penalize_extra = penalize_extra

    def _matches(self, expected: Mapping[str, Any], actual: ToolCallRecord) -> bool:
        if expected["name"] != actual.name:
            return False
        wanted = expected["args"]
        if wanted is None or self.args == "ignore":
            return True
        got = _norm(actual.args)
        want = _norm(wanted)
        if self.args == "exact":
            return got == want
        return all(k in got and got[k] == v for k, v in want.items())

    def _pair(self, expected: list[dict[str, Any]], actual: list[ToolCallRecord]) -> dict[int, int]:
        """Expected index -> actual index of the call matching it."""
        pairs: dict[int, int] = {}
        used: set[int] = set()
        start = 0
        for i, call in enumerate(expected):
            for j in range(start if self.ordered else 0, len(actual)):
                if j not in used and self._matches(call, actual[j]):
                    pairs[i] = j
                    used.add(j)
                    if self.ordered:
                        start = j + 1
                    break
        return pairs

    def __call__(self, example: Example, prediction: Any) -> MetricResult:
        if self.expected_key not in example:
            raise KeyError(
                f"ToolCallMatch needs example[{self.expected_key!r}] (the expected tool calls); "
                f"the example has: {', '.join(example)}"
            )
        expected = _expected_calls(example[self.expected_key], self.expected_key)
        actual = as_trajectory(prediction).tool_calls
        if not expected:
            if not actual:
                return MetricResult(1.0)
            calls = "; ".join(f"{c.name} {tool_args_text(c.args)}" for c in actual)
            score = 0.0 if self.penalize_extra else 1.0
            return MetricResult(
                score, prompts.TOOL_CALL_NONE_EXPECTED.format(count=len(actual), calls=calls)
            )
        pairs = self._pair(expected, actual)
        extra = [c for j, c in enumerate(actual) if j not in set(pairs.values())]
        notes = []
        for i, call in enumerate(expected):
            if i in pairs:
                continue
            args = (
                "(any)"
                if call["args"] is None
                else json.dumps(call["args"], ensure_ascii=False, sort_keys=True)
            )
            same_name = [c for c in extra if c.name == call["name"]]
            if same_name:
                notes.append(
                    prompts.TOOL_CALL_WRONG_ARGS.format(
                        name=call["name"], args=args, actual=tool_args_text(same_name[0].args)
                    )
                )
                extra.remove(same_name[0])
            else:
                notes.append(prompts.TOOL_CALL_MISSING.format(name=call["name"], args=args))
        if self.penalize_extra:
            counts = Counter((c.name, tool_args_text(c.args)) for c in extra)
            for (name, args), count in counts.items():
                note = prompts.TOOL_CALL_UNEXPECTED.format(name=name, args=args)
                notes.append(note if count == 1 else f"{note[:-1]} ({count} times).")
        if self.ordered and len(pairs) < len(expected) and notes:
            notes.append(
                prompts.TOOL_CALL_ORDER.format(order=", ".join(c["name"] for c in expected))
            )
        denominator = len(expected) + (len(extra) if self.penalize_extra else 0)
        score = len(pairs) / denominator
        return MetricResult(score, " ".join(notes) or None)

    def __repr__(self) -> str:
        return (
            f"ToolCallMatch(expected_key={self.expected_key!r}, args={self.args!r}, "
            f"ordered={self.ordered}, penalize_extra={self.penalize_extra})"
        )


class StepCount:
    """Did the agent finish within its step budget?

    The budget is ``example[budget_key]`` when the example has it, else ``max_steps``.
    The score is 1 within budget, ``budget / steps`` beyond it, and 0 for a run that
    hit its step limit without answering.

    Example:
        >>> from langchain_core.messages import AIMessage
        >>> from afnio_langchain.agents._trajectory import trajectory_from_messages
        >>> from afnio_langchain.agents import StepCount
        >>> run = trajectory_from_messages("hi", [AIMessage("hello")])
        >>> StepCount(max_steps=2)({}, run)
        MetricResult(score=1.0, feedback=None)
    """

    name = "steps"

    def __init__(self, max_steps: int | None = None, *, budget_key: str = "max_steps") -> None:
        if max_steps is not None and (
            not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1
        ):
            raise ValueError(f"max_steps must be a positive int or None, got {max_steps!r}")
        self.max_steps = max_steps
        self.budget_key = budget_key

    def __call__(self, example: Example, prediction: Any) -> MetricResult:
        run = as_trajectory(prediction)
        budget = example.get(self.budget_key, self.max_steps)
        if run.stopped == "step_limit":
            return MetricResult(
                0.0, prompts.STEP_LIMIT_FEEDBACK.format(limit=run.max_steps or run.num_steps)
            )
        if budget is None:
            raise KeyError(
                f"StepCount needs max_steps=... or example[{self.budget_key!r}] (the step budget)"
            )
        budget = int(budget)
        if run.num_steps <= budget:
            return MetricResult(1.0)
        return MetricResult(
            budget / run.num_steps,
            prompts.STEP_COUNT_FEEDBACK.format(steps=run.num_steps, budget=budget),
        )

    def __repr__(self) -> str:
        return f"StepCount(max_steps={self.max_steps!r}, budget_key={self.budget_key!r})"


class FinalAnswerMatch:
    """Is the run's final answer the expected one (exactly, or containing it)?

    A run that returned a structured response (``create_agent`` with a
    ``response_format``) is scored on it: an expected dict is compared field by field
    (``"contains"``: the expected fields, ``"exact"``: the same fields; values compare
    leniently, as :class:`ToolCallMatch`'s arguments do); an expected text is looked for
    in the response's JSON.

    Args:
        target_key: The example key holding the expected answer (default: the usual names).
        mode: ``"contains"`` or ``"exact"`` (see :class:`~afnio_langchain.train.Contains`,
            :class:`~afnio_langchain.train.ExactMatch`).

    Example:
        >>> from langchain_core.messages import AIMessage
        >>> from afnio_langchain.agents._trajectory import trajectory_from_messages
        >>> from afnio_langchain.agents import FinalAnswerMatch
        >>> run = trajectory_from_messages("Where is order 7?", [AIMessage("It has shipped.")])
        >>> FinalAnswerMatch()({"answer": "shipped"}, run).score
        1.0
        >>> run = trajectory_from_messages("Order 7?", [AIMessage('{"status": "Shipped"}')],
        ...                                structured_response={"status": "Shipped"})
        >>> FinalAnswerMatch()({"answer": {"status": "shipped"}}, run).score
        1.0
    """

    name = "final_answer"

    def __init__(self, target_key: str | None = None, *, mode: str = "contains") -> None:
        if mode not in ("contains", "exact"):
            raise ValueError(f"mode must be 'contains' or 'exact', got {mode!r}")
        self.target_key = target_key
        self.mode = mode
        self._inner = Contains(target_key) if mode == "contains" else ExactMatch(target_key)

    def __call__(self, example: Example, prediction: Any) -> MetricResult:
        run = as_trajectory(prediction)
        expected = find_target(example, self.target_key)
        if isinstance(expected, Mapping):
            return self._fields(expected, run)
        return self._inner(example, run.final_answer)

    def _fields(self, expected: Mapping[str, Any], run: Trajectory) -> MetricResult:
        got = jsonable(run.structured_response)
        if not isinstance(got, Mapping):
            got = parse_json_object(run.final_answer) or {}
        want, have = _norm(dict(expected)), _norm(dict(got))
        wrong = sorted(k for k, v in want.items() if have.get(k) != v)
        extra = sorted(set(have) - set(want)) if self.mode == "exact" else []
        if not wrong and not extra:
            return MetricResult(1.0)
        return MetricResult(
            (len(want) - len(wrong)) / max(1, len(want) + len(extra)),
            prompts.STRUCTURED_ANSWER_FEEDBACK.format(
                fields=", ".join(wrong + extra),
                expected=json.dumps(jsonable(dict(expected)), ensure_ascii=False, sort_keys=True),
                answer=run.final_answer[:500],
            ),
        )

    def __repr__(self) -> str:
        return f"FinalAnswerMatch(target_key={self.target_key!r}, mode={self.mode!r})"


class TrajectoryJudge:
    """An LM judge of the whole run: the task, every tool call with its arguments,
    results and errors, the step count and the final answer, against ``criteria`` (and
    the example's reference answer, when it has one). Its explanation is the feedback.

    Calls are made with purpose ``"judge"``; the reply is requested as JSON
    (``score`` from 0 to 1, ``explanation``) and parsed tolerantly (a score on a 0-10
    scale is divided by 10).

    Args:
        model: A LangChain chat model, an openai client (with ``model_name``), a
            ``dspy.LM`` or a :class:`~afnio_langchain.models.ModelClient`.
        criteria: What a good run is, in plain language.
        target_key: The example key holding a reference answer (default: the usual
            names; none shown when the example has none).
        model_name: The model name, needed with an ``openai`` client.
        **completion_args: Passed to the model.

    Example:
        >>> from langchain_core.messages import AIMessage
        >>> from afnio_langchain.agents._trajectory import trajectory_from_messages
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> from afnio_langchain.agents import TrajectoryJudge
        >>> judge = TrajectoryJudge(ScriptedChatModel(
        ...     judge='{"score": 0.5, "explanation": "It answered without looking the order up."}'))
        >>> judge({"input": "Where is order 7?"},
        ...       trajectory_from_messages("Where is order 7?", [AIMessage("Shipped.")]))
        MetricResult(score=0.5, feedback='It answered without looking the order up.')
    """

    name = "trajectory_judge"

    def __init__(
        self,
        model: Any,
        criteria: str = prompts.DEFAULT_TRAJECTORY_CRITERIA,
        *,
        target_key: str | None = None,
        model_name: str | None = None,
        **completion_args: Any,
    ) -> None:
        if model is None:
            raise TypeError("TrajectoryJudge needs model=... (a chat model or client)")
        if not isinstance(criteria, str) or not criteria.strip():
            raise ValueError("TrajectoryJudge criteria must be a non-empty str")
        self.client: ModelClient = as_model_client(model, model_name)
        self.criteria = criteria
        self.target_key = target_key
        self.completion_args = completion_args

    async def ascore(self, example: Example, prediction: Any) -> MetricResult:
        """Judge one run (one ``"judge"`` call, re-asked if the reply is unusable)."""
        run = as_trajectory(prediction)
        fields = await request_fields(
            self.client,
            prompts.trajectory_judge_messages(run, self.criteria, optional_reference(example, self.target_key)),
            {"score": "a number from 0 to 1", "explanation": "why, naming the steps at fault"},
            purpose="judge",
            where="TrajectoryJudge metric",
            schema_name="verdict",
            **self.completion_args,
        )
        score = parse_score(fields["score"])
        if 1.0 < score <= 10.0:
            score /= 10.0
        score = min(1.0, max(0.0, score))
        explanation = fields["explanation"].strip()
        return MetricResult(score, explanation if explanation and score < 1.0 else None)

    def __call__(self, example: Example, prediction: Any) -> MetricResult:
        return run_sync(lambda: self.ascore(example, prediction))

    def __repr__(self) -> str:
        return f"TrajectoryJudge(model={self.client.model_name!r})"


class TrajectoryMetrics:
    """Several metrics as one: the weighted mean of their scores and their feedback
    joined (each line labelled with the metric's name).

    Args:
        metrics: The metrics (any metric callables, e.g. the ones in this module).
        weights: One weight per metric (default: equal).

    Example:
        >>> from langchain_core.messages import AIMessage
        >>> from afnio_langchain.agents._trajectory import trajectory_from_messages
        >>> from afnio_langchain.agents._metrics import (
        ...     FinalAnswerMatch, StepCount, ToolCallMatch, TrajectoryMetrics)
        >>> metric = TrajectoryMetrics([ToolCallMatch(), FinalAnswerMatch(), StepCount(3)])
        >>> run = trajectory_from_messages("Where is order 7?", [AIMessage("It has shipped.")])
        >>> result = metric({"expected_tool_calls": ["lookup_order"], "answer": "shipped"}, run)
        >>> round(result.score, 3)
        0.667
        >>> print(result.feedback)
        [tool_calls] The agent never called the tool lookup_order with arguments (any), which this task needs.
    """

    name = "trajectory"

    def __init__(self, metrics: Sequence[Metric], weights: Sequence[float] | None = None) -> None:
        metrics = list(metrics)
        if not metrics or not all(callable(m) for m in metrics):
            raise TypeError("TrajectoryMetrics needs a non-empty list of metric callables")
        weights = [1.0] * len(metrics) if weights is None else [float(w) for w in weights]
        if len(weights) != len(metrics) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("weights must be one non-negative number per metric, not all zero")
        self.metrics = metrics
        self.weights = weights

    async def ascore(self, example: Example, prediction: Any) -> MetricResult:
        """Score with every metric (concurrently) and combine."""
        results = await gather_all([ascore(m, example, prediction) for m in self.metrics])
        score = sum(w * r.score for w, r in zip(self.weights, results)) / sum(self.weights)
        lines = [
            f"[{metric_name(m)}] {r.feedback}"
            for m, r in zip(self.metrics, results)
            if r.feedback and r.feedback.strip()
        ]
        return MetricResult(score, "\n".join(lines) or None)

    def __call__(self, example: Example, prediction: Any) -> MetricResult:
        return run_sync(lambda: self.ascore(example, prediction))

    def __repr__(self) -> str:
        return f"TrajectoryMetrics({self.metrics!r}, weights={self.weights!r})"


__all__ = [
    "FinalAnswerMatch",
    "StepCount",
    "ToolCallMatch",
    "TrajectoryJudge",
    "TrajectoryMetrics",
    "as_trajectory",
]
