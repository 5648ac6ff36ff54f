"""Running a DSPy program on examples and scoring it, the way ``dspy.Evaluate`` does.

Validation passes *are* ``dspy.Evaluate`` calls (with the optimizer's ``eval_kwargs``:
``num_threads``, ``max_errors``, ``failure_score``, ``display_progress``,
``display_table``, ``provide_traceback``, ``save_as_csv``...). Minibatch runs need
each example's DSPy trace (to replay it as a graph), so they run on DSPy's own
``ParallelExecutor`` (the engine of ``dspy.Evaluate``) with the same threads, error
limit and failure score. Either way an example whose program or metric raises (an
``AdapterParseError``, a metric bug) scores ``failure_score``, is counted and logged
by DSPy, and the others go on; only ``max_errors`` failures in one pass stop it, as
they stop ``dspy.Evaluate``.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from afnio_langchain.dspy._compat import require_dspy

dspy = require_dspy("afnio_langchain.dspy._evaluation")

from dspy.utils.parallelizer import ParallelExecutor

from afnio_langchain.dspy._metric import Metric, MetricResult, call_metric

EVALUATE_OPTIONS = frozenset(inspect.signature(dspy.Evaluate.__init__).parameters) - {
    "self",
    "kwargs",
    "devset",
    "metric",
}
"""The ``dspy.Evaluate`` options ``eval_kwargs`` may set (``devset`` and ``metric`` are the
optimizer's own: its ``valset`` and ``metric``)."""


@dataclass
class ExampleRun:
    """One example run through the program: prediction, trace, score and any error.

    Example:
        >>> import dspy
        >>> from afnio_langchain.dspy import call_metric
        >>> from afnio_langchain.dspy._evaluation import ExampleRun
        >>> example = dspy.Example(country="France", capital="Paris").with_inputs("country")
        >>> run = ExampleRun(example, prediction=dspy.Prediction(capital="Lyon"))
        >>> run.result = call_metric(lambda gold, pred, trace=None: gold.capital == pred.capital,
        ...                          example, run.prediction)
        >>> run.result.score, run.error, run.trace
        (0.0, None, [])
    """

    example: Any
    prediction: Any = None
    trace: list[Any] = field(default_factory=list)
    result: MetricResult = field(default_factory=lambda: MetricResult(0.0))
    error: BaseException | None = None


@dataclass
class EvaluationRun:
    """A validation pass: the mean score, per-example scores, failures, predictor calls."""

    score: float
    scores: list[float]
    errors: list[BaseException]
    program_calls: int

    def first_error(self) -> str | None:
        return None if not self.errors else f"{type(self.errors[0]).__name__}: {self.errors[0]}"


@dataclass(frozen=True)
class EvalSettings:
    """How examples are run and scored: ``dspy.Evaluate``'s options.

    Attributes:
        options: ``dspy.Evaluate`` keyword arguments (``num_threads``, ``max_errors``,
            ``failure_score``, ``provide_traceback``...); None values fall back to
            DSPy's settings, as in ``dspy.Evaluate``.
    """

    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, defaults: Mapping[str, Any], eval_kwargs: Mapping[str, Any] | None) -> EvalSettings:
        """``defaults`` (the optimizer's options) overridden by ``eval_kwargs``.

        Raises:
            TypeError: ``eval_kwargs`` is not a dict, or names an option ``dspy.Evaluate``
                does not have, or ``devset``/``metric``.
        """
        if eval_kwargs is None:
            eval_kwargs = {}
        if not isinstance(eval_kwargs, Mapping):
            raise TypeError(f"eval_kwargs must be a dict of dspy.Evaluate options, got {type(eval_kwargs).__name__}")
        own = sorted(set(eval_kwargs) & {"devset", "metric"})
        if own:
            raise TypeError(
                f"eval_kwargs cannot set {own}: the optimizer validates on valset= with its own metric"
            )
        unknown = sorted(set(eval_kwargs) - EVALUATE_OPTIONS)
        if unknown:
            raise TypeError(
                f"eval_kwargs has options dspy.Evaluate does not take: {unknown} "
                f"(it takes {sorted(EVALUATE_OPTIONS)})"
            )
        options = {k: v for k, v in defaults.items() if v is not None}
        options.update(eval_kwargs)
        return cls(options)

    @property
    def failure_score(self) -> float:
        return float(self.options.get("failure_score", 0.0))

    @property
    def max_errors(self) -> int:
        value = self.options.get("max_errors")
        return dspy.settings.max_errors if value is None else value


def run_examples(
    program: Any, examples: list[Any], metric: Metric, settings: EvalSettings
) -> list[ExampleRun]:
    """Run and score every example under its own DSPy trace, on DSPy's executor.

    Raises:
        RuntimeError: ``max_errors`` examples failed (the first error is chained).
    """
    runs = [ExampleRun(example) for example in examples]

    def one(item: _Item) -> None:
        run = runs[item.index]
        with dspy.context(trace=[]):
            try:
                run.prediction = program(**run.example.inputs())
                run.result = call_metric(metric, run.example, run.prediction)
            except Exception as exc:
                run.error = exc
                run.result = MetricResult(settings.failure_score)
                raise  # DSPy's executor counts and logs it, as dspy.Evaluate does
            finally:
                run.trace = list(dspy.settings.trace)

    executor = ParallelExecutor(
        num_threads=settings.options.get("num_threads"),
        max_errors=settings.max_errors,
        provide_traceback=settings.options.get("provide_traceback"),
        disable_progress_bar=True,
    )
    items = [_Item(i, example) for i, example in enumerate(examples)]
    job = _in_callers_context(one)
    _stop_on_max_errors(lambda: executor.execute(job, items), lambda: [r.error for r in runs], settings)
    return runs


def evaluate_program(
    program: Any, devset: list[Any], metric: Metric, settings: EvalSettings
) -> EvaluationRun:
    """Score ``program`` on ``devset`` with ``dspy.Evaluate`` (and the settings' options),
    counting its failures and predictor calls.

    Raises:
        RuntimeError: ``max_errors`` examples failed (the first error is chained).
    """
    lock = threading.Lock()
    errors: list[BaseException] = []
    calls: list[int] = []

    def run(**inputs: Any) -> Any:
        with dspy.context(trace=[]):
            try:
                return program(**inputs)
            except Exception as exc:
                with lock:
                    errors.append(exc)
                raise
            finally:
                with lock:
                    calls.append(len(dspy.settings.trace))

    def score(example: Any, prediction: Any) -> float:
        try:
            return call_metric(metric, example, prediction).score
        except Exception as exc:
            with lock:
                errors.append(exc)
            raise

    evaluate = dspy.Evaluate(devset=devset, metric=score, **settings.options)
    program_run = _in_callers_context(run)
    result = _stop_on_max_errors(lambda: evaluate(program_run), lambda: errors, settings)
    scores = [float(s) for _, _, s in result.results]
    return EvaluationRun(sum(scores) / len(scores), scores, list(errors), sum(calls))


@dataclass(frozen=True)
class _Item:
    """An example and its position; shown as the example in DSPy's error logs."""

    index: int
    example: Any

    def __repr__(self) -> str:
        return repr(self.example)


def _in_callers_context(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with the caller's contextvars in DSPy's worker threads.

    DSPy's executor carries only its own settings and callback ancestry into a worker;
    the package's usage scopes, grad mode and concurrency limit are contextvars too.
    Each call runs in a copy of the worker's context, to which the caller's variables
    the worker lacks are added (DSPy's own are left as the executor set them).
    """
    parent = contextvars.copy_context()

    def call(*args: Any, **kwargs: Any) -> Any:
        here = contextvars.copy_context()

        def body() -> Any:
            for var, value in parent.items():
                if var not in here:
                    var.set(value)
            return function(*args, **kwargs)

        return here.run(body)

    return call


def _stop_on_max_errors(
    execute: Callable[[], Any],
    errors: Callable[[], list[BaseException | None]],
    settings: EvalSettings,
) -> Any:
    try:
        return execute()
    except Exception:
        failed = [e for e in errors() if e is not None]
        if len(failed) < settings.max_errors:
            raise
        first = failed[0]
        raise RuntimeError(
            f"{len(failed)} examples failed, reaching max_errors={settings.max_errors} (where "
            f"dspy.Evaluate stops too; raise it with max_errors=...); the first error: "
            f"{type(first).__name__}: {first}"
        ) from first


__all__ = [
    "EVALUATE_OPTIONS",
    "EvalSettings",
    "EvaluationRun",
    "ExampleRun",
    "evaluate_program",
    "run_examples",
]
