"""Running a chain on examples and scoring its outputs with a metric.

Used by the trainer (for minibatches, with grad, and for evaluations, without) and
on its own (:func:`evaluate`). A failing example (the chain or the metric raised)
scores 0 and keeps its error; it never stops the others. A metric that returns
anything but a score from 0 to 1 stops the scoring (:mod:`afnio_langchain.train._scores`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from afnio_langchain._aio import run_sync, start_each
from afnio_langchain.autodiff import describe_error, enable_grad, no_grad
from afnio_langchain.loop import (
    TARGET_KEYS,
    Example,
    GraphState,
    Metric,
    acall_metric,
    is_async_metric,
    is_langgraph_graph,
    metric_name,
    prediction_text,
)
from afnio_langchain.models import concurrency_limit
from afnio_langchain.train._scores import checked_result

InputFn = Callable[[Example], Any]
"""Builds the chain's input from an example."""


@dataclass(frozen=True)
class ItemResult:
    """One example's outcome.

    Attributes:
        score: The metric's score (0 when the chain or the metric failed).
        feedback: The metric's feedback, if any.
        output: The text of the chain's output ("" on error).
        error: What went wrong, or None.
        prediction: The chain's output itself (not serialised).

    Example:
        >>> from langchain_core.runnables import RunnableLambda
        >>> from afnio_langchain.train import evaluate, exact_match
        >>> chain = RunnableLambda(lambda x: {"a": "A", "b": "C"}[x["question"]])
        >>> examples = [{"question": q, "answer": q.upper()} for q in ("a", "b", "z")]
        >>> ok, wrong, failed = evaluate(chain, examples, exact_match).items
        >>> ok.score, ok.output, ok.error
        (1.0, 'A', None)
        >>> wrong.score, wrong.feedback
        (0.0, "The expected output was exactly 'B', but the output was 'C'.")
        >>> failed.score, failed.error
        (0.0, "KeyError: 'z'")
    """

    score: float
    feedback: str | None = None
    output: str = ""
    error: str | None = None
    prediction: Any = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "feedback": self.feedback,
            "output": self.output,
            "error": self.error,
        }


@dataclass(frozen=True)
class EvalResult:
    """Scores of a chain on a set of examples.

    Example:
        >>> from afnio_langchain.train import EvalResult, ItemResult
        >>> result = EvalResult((ItemResult(1.0), ItemResult(0.0, error="TimeoutError: ...")))
        >>> result.score, result.errors
        (0.5, 1)
    """

    items: tuple[ItemResult, ...] = ()

    @property
    def score(self) -> float | None:
        """The mean score (None for no examples)."""
        if not self.items:
            return None
        return sum(item.score for item in self.items) / len(self.items)

    @property
    def errors(self) -> int:
        return sum(1 for item in self.items if item.error is not None)

    @property
    def all_failed(self) -> bool:
        """True when every example failed (typically: the model cannot be reached)."""
        return bool(self.items) and self.errors == len(self.items)

    def first_error(self) -> str | None:
        return next((item.error for item in self.items if item.error), None)

    def to_dict(self, items: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"score": self.score, "examples": len(self.items), "errors": self.errors}
        if items:
            out["items"] = [item.to_dict() for item in self.items]
        return out


def takes_a_bare_value(chain: Any) -> bool:
    """Whether ``chain`` takes one value, not a dict: LangChain's input schema of a
    chain that starts by handing its whole input on (``{"context": retriever,
    "question": RunnablePassthrough()} | prompt | ...``) has the single field ``root``.

    Example:
        >>> from langchain_core.prompts import ChatPromptTemplate
        >>> from langchain_core.runnables import RunnablePassthrough
        >>> from afnio_langchain.train._evaluation import takes_a_bare_value
        >>> prompt = ChatPromptTemplate.from_messages([("human", "{context} {question}")])
        >>> rag = {"context": lambda q: "notes", "question": RunnablePassthrough()} | prompt
        >>> takes_a_bare_value(rag), takes_a_bare_value(prompt)
        (True, False)
    """
    return is_bare_value_schema(input_json_schema(chain))


def input_json_schema(chain: Any) -> dict[str, Any] | None:
    """The chain's LangChain input schema as JSON schema; None when LangChain cannot
    build it (which tells us nothing)."""
    try:
        schema = chain.get_input_schema().model_json_schema()
    except Exception:
        return None
    if not isinstance(schema, dict):
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        # A LangGraph graph's input schema is a reference to its state's definition.
        target = (schema.get("$defs") or {}).get(ref[len("#/$defs/"):])
        if isinstance(target, dict):
            return {**target, "$defs": schema["$defs"]}
    return schema


def is_bare_value_schema(schema: dict[str, Any] | None) -> bool:
    """Whether an input JSON schema is that of a chain taking one value (its single
    field is LangChain's ``root``; see :func:`takes_a_bare_value`)."""
    return (
        schema is not None
        and schema.get("type") == "object"
        and schema.get("required") == ["root"]
        and list(schema.get("properties") or {}) == ["root"]
    )


def input_fn_for(
    chain: Any,
    input_fn: InputFn | None,
    input_keys: Sequence[str] | None,
    target_key: str | None,
) -> InputFn:
    """``input_fn``, else :func:`default_input_fn` for ``chain`` (a bare value when it
    takes one)."""
    return input_fn or default_input_fn(input_keys, target_key, bare=takes_a_bare_value(chain))


def default_input_fn(
    input_keys: Sequence[str] | None = None, target_key: str | None = None, *, bare: bool = False
) -> InputFn:
    """The chain input of an example: the ``input_keys`` fields, or every field but
    the target (``target_key``, else the first of the usual target keys present);
    with ``bare`` (a chain that takes one value, see :func:`takes_a_bare_value`), the
    value of the one such field.

    Example:
        >>> from afnio_langchain.train._evaluation import default_input_fn
        >>> default_input_fn()({"question": "2+2?", "answer": "4"})
        {'question': '2+2?'}
        >>> default_input_fn(bare=True)({"question": "2+2?", "answer": "4"})
        '2+2?'
    """
    keys = list(input_keys) if input_keys is not None else None

    def build(example: Example) -> Any:
        if keys is not None:
            missing = [k for k in keys if k not in example]
            if missing:
                raise KeyError(f"the example has no key(s) {', '.join(map(repr, missing))}")
            fields = {k: example[k] for k in keys}
        else:
            target = target_key or next((k for k in TARGET_KEYS if k in example), None)
            fields = {k: v for k, v in example.items() if k != target}
        if not bare or "root" in fields:  # a row naming "root" means a dict with that field
            return fields
        if len(fields) != 1:
            raise ValueError(
                f"the chain takes one value, not a dict (its input is handed on whole, as "
                f"by RunnablePassthrough), and the example gives {len(fields)} input fields "
                f"({', '.join(sorted(fields))}): name the one to pass with input_keys=[...] "
                "(the CLI's --input-keys)"
            )
        return next(iter(fields.values()))

    return build


def chain_inputs(examples: Sequence[Example], input_fn: InputFn, name: str = "examples") -> list[Any]:
    """``input_fn`` applied to every example.

    Raises:
        ValueError: An example cannot be turned into an input (says which).
    """
    inputs = []
    for i, example in enumerate(examples):
        if not isinstance(example, dict):
            raise TypeError(f"{name}[{i}] must be a dict, got {type(example).__name__}")
        try:
            inputs.append(input_fn(example))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{name}[{i}]: cannot build the chain input: {exc}") from None
    return inputs


async def arun_chain(
    chain: Any,
    inputs: list[Any],
    *,
    grad: bool,
    max_concurrency: int | None = None,
    phase: str = "eval",
    on_done: Callable[[], Any] | None = None,
) -> list[Any]:
    """Run ``chain`` on every input concurrently; failures come back as exceptions.

    Each input runs through the whole chain as its own task (at most
    ``max_concurrency`` at a time), rather than through ``abatch``, which runs a
    sequence stage by stage: there every stage waits for the slowest item of the stage
    before, so a minibatch takes the sum of the stages' slowest calls instead of its
    slowest item's path. ``on_done`` is called as each input finishes (a progress bar).
    """
    config: dict[str, Any] = {
        "run_name": f"afnio_train_{phase}",
        "tags": ["afnio-train", phase],
        "metadata": {"afnio_phase": phase},
    }
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency is not None else None

    async def one(value: Any) -> Any:
        try:
            if slots is None:
                return await chain.ainvoke(value, config=config)
            async with slots:
                return await chain.ainvoke(value, config=config)
        finally:
            if on_done is not None:
                on_done()

    with enable_grad() if grad else no_grad():
        tasks = await start_each([one(value) for value in inputs])
        return list(await asyncio.gather(*tasks, return_exceptions=True))


def score_items(
    metric: Metric,
    examples: Sequence[Example],
    predictions: Sequence[Any],
    *,
    numbered: bool = True,
    on_done: Callable[[], Any] | None = None,
) -> list[ItemResult]:
    """Score every prediction. Plain metrics run here, one by one (so an interrupt
    raised by one stops the run at once); async metrics run concurrently.

    A metric that raises fails its item; one that returns anything but a score from 0
    to 1 stops the scoring (``numbered``: the message shows the item's index, which is
    its position in the set the user passed). ``on_done`` is called as each item is
    scored.

    Raises:
        MetricScoreError: The metric returned something other than a score from 0 to 1.
    """
    results: list[ItemResult | None] = [None] * len(examples)
    pending = []
    for i, prediction in enumerate(predictions):
        if isinstance(prediction, BaseException):
            results[i] = ItemResult(0.0, error=describe_error(prediction))
            if on_done is not None:
                on_done()
        else:
            pending.append(i)
    if is_async_metric(metric):

        async def one(i: int) -> Any:
            try:
                return await acall_metric(metric, examples[i], predictions[i])
            finally:
                if on_done is not None:
                    on_done()

        async def run_all() -> list[Any]:
            return await asyncio.gather(*(one(i) for i in pending), return_exceptions=True)

        verdicts = run_sync(run_all) if pending else []
    else:
        verdicts = []
        for i in pending:
            try:
                verdicts.append(metric(examples[i], predictions[i]))
            except Exception as exc:  # a broken metric fails this item, not the run
                verdicts.append(exc)
            if on_done is not None:
                on_done()
    for i, verdict in zip(pending, verdicts):
        output = prediction_text(predictions[i])
        if isinstance(verdict, BaseException):
            if not isinstance(verdict, Exception):
                raise verdict
            results[i] = ItemResult(
                0.0, output=output, error=f"metric {metric_name(metric)} failed: {describe_error(verdict)}",
                prediction=predictions[i],
            )
        else:
            result = checked_result(verdict, metric, examples[i], i, numbered=numbered)
            results[i] = ItemResult(
                result.score, result.feedback, output=output, prediction=predictions[i]
            )
    return [r for r in results if r is not None]


def run_and_score(
    chain: Any,
    metric: Metric,
    examples: Sequence[Example],
    inputs: list[Any],
    *,
    grad: bool,
    max_concurrency: int | None = None,
    phase: str = "eval",
    progress: bool = False,
    desc: str = "evaluating",
) -> EvalResult:
    """Run the chain on ``inputs`` and score the outputs against ``examples``; with
    ``progress``, a tqdm bar (on stderr) counts the examples run, then those scored.

    Raises:
        MetricScoreError: The metric returned something other than a score from 0 to 1.
    """
    with tqdm(
        total=len(inputs), desc=desc, unit="example", disable=not progress, dynamic_ncols=True
    ) as bar:
        predictions = run_sync(
            lambda: arun_chain(
                chain, inputs, grad=grad, max_concurrency=max_concurrency, phase=phase,
                on_done=bar.update,
            )
        )
        if is_langgraph_graph(chain):  # an agent: scored on its answer
            predictions = [
                GraphState(p) if type(p) is dict and isinstance(p.get("messages"), list) else p
                for p in predictions
            ]
        bar.reset(total=len(predictions))
        bar.set_description(f"{desc}: scoring")
        # In a minibatch the positions are not those of the training set: say no index.
        items = score_items(
            metric, examples, predictions, numbered=phase != "train", on_done=bar.update
        )
    return EvalResult(tuple(items))


def evaluate(
    chain: Any,
    examples: Sequence[Example],
    metric: Metric,
    *,
    input_fn: InputFn | None = None,
    input_keys: Sequence[str] | None = None,
    target_key: str | None = None,
    max_concurrency: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Score ``chain`` on ``examples`` with ``metric`` (no gradients are kept).

    Args:
        chain: Any LangChain Runnable (its output is handed to the metric as it is).
        examples: The examples (dicts).
        metric: ``metric(example, prediction)``, returning a score from 0 to 1.
        input_fn: Builds the chain input from an example (overrides the keys).
        input_keys: Example keys given to the chain (default: all but the target).
        target_key: The example key holding the expected output.
        max_concurrency: Cap on model calls in flight.
        progress: Show a tqdm progress bar (on stderr), as ``fit`` does.

    Raises:
        MetricScoreError: The metric returned something other than a score from 0 to
            1 (a metric that raises fails only its example).

    Example:
        >>> from langchain_core.runnables import RunnableLambda
        >>> from afnio_langchain.train import evaluate, exact_match
        >>> chain = RunnableLambda(lambda x: x["question"].upper())
        >>> result = evaluate(chain, [{"question": "a", "answer": "A"},
        ...                           {"question": "b", "answer": "c"}], exact_match,
        ...                   progress=False)
        >>> result.score, [item.output for item in result.items]
        (0.5, ['A', 'B'])
    """
    inputs = chain_inputs(examples, input_fn_for(chain, input_fn, input_keys, target_key))
    with concurrency_limit(max_concurrency) if max_concurrency is not None else nullcontext():
        return run_and_score(
            chain, metric, examples, inputs, grad=False, max_concurrency=max_concurrency,
            progress=progress,
        )
