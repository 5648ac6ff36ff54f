"""``TextualGradientDescent``: textual gradient descent as a DSPy optimizer (Teleprompter).

Every predictor's ``signature.instructions`` becomes a trainable Variable. Each step
runs a minibatch of the trainset under DSPy's trace, scores it with the metric,
replays each failing run as an autodiff graph (:mod:`afnio_langchain.dspy._graph`),
sends the metric's feedback back through the program's steps to every predictor's
instructions, and lets :class:`~afnio_langchain.optim.TGD` rewrite them. A rewrite is
kept only if the program scores at least as well on the validation set.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import logging
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from afnio_langchain.dspy._compat import require_dspy

dspy = require_dspy("afnio_langchain.dspy.TextualGradientDescent")

from dspy.teleprompt.teleprompt import Teleprompter

from afnio_langchain._aio import run_sync
from afnio_langchain.autodiff import (
    Variable,
    get_backward_model,
    run_backward,
)
from afnio_langchain.dspy import _prompts as prompts
from afnio_langchain.dspy._graph import build_graph, value_text
from afnio_langchain.dspy._metric import Metric, MetricResult, call_metric
from afnio_langchain.models import as_model_client, track_usage
from afnio_langchain.optim import TGD

logger = logging.getLogger(__name__)


@dataclass
class ExampleRun:
    """One example run through the program: prediction, trace, score and any error.

    Example:
        >>> import dspy
        >>> from afnio_langchain.dspy import call_metric
        >>> from afnio_langchain.dspy._teleprompter import ExampleRun
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
class StepRecord:
    """What one optimization step did.

    Attributes:
        step: The step number (from 1).
        epoch: The pass over the trainset it belongs to (from 1).
        batch_size: Examples in its minibatch.
        train_score: Mean metric score of the minibatch before the update.
        with_feedback: Examples whose feedback was sent backward (the others scored
            as correct, or were skipped).
        updated: Predictors whose instructions the optimizer rewrote.
        val_score: Validation score of the rewritten program (None: not validated).
        accepted: Whether the rewrite was kept (None: nothing was rewritten).
        note: Why nothing happened, when nothing did.

    Example:
        >>> import dspy
        >>> from dspy.utils import DummyLM
        >>> from afnio_langchain.dspy import TextualGradientDescent
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> coach = ScriptedChatModel(feedback="Ask for the capital city.",
        ...                           optimizer="Answer with the name of the capital city.")
        >>> trainset = [dspy.Example(country="France", capital="Paris").with_inputs("country")]
        >>> def metric(gold, pred, trace=None):
        ...     return gold.capital == pred.capital
        >>> optimizer = TextualGradientDescent(metric, backward_model=coach, num_threads=1)
        >>> replies = [{"capital": "France"}] * 2 + [{"capital": "Paris"}]
        >>> with dspy.context(lm=DummyLM(replies)):
        ...     _ = optimizer.compile(dspy.Predict("country -> capital"), trainset=trainset)
        >>> step = optimizer.last_report.steps[0]
        >>> step.train_score, step.with_feedback, step.updated, step.val_score, step.accepted
        (0.0, 1, ['self'], 1.0, True)
    """

    step: int
    epoch: int
    batch_size: int
    train_score: float
    with_feedback: int = 0
    updated: list[str] = field(default_factory=list)
    val_score: float | None = None
    accepted: bool | None = None
    note: str = ""


@dataclass
class CompileReport:
    """The record of one ``compile``.

    Attributes:
        initial_score: Validation score of the student (None without validation).
        best_score: Validation score of the returned program (None without validation).
        steps: One :class:`StepRecord` per step.
        instructions: Predictor name -> the returned program's instructions.
        program_calls: Predictor calls the program made while compiling (training and
            validation runs; each is one model call unless DSPy's cache answered it).
        usage: Model calls and tokens by purpose and model, as
            :meth:`~afnio_langchain.models.UsageTracker.as_dict` (calls through this
            package's clients: backward, optimizer, and the program's own calls when
            it runs on :func:`~afnio_langchain.dspy.as_dspy_lm`).

    Example:
        >>> import dspy
        >>> from dspy.utils import DummyLM
        >>> from afnio_langchain.dspy import TextualGradientDescent
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> coach = ScriptedChatModel(feedback="Ask for the capital city.",
        ...                           optimizer="Answer with the name of the capital city.")
        >>> trainset = [dspy.Example(country="France", capital="Paris").with_inputs("country")]
        >>> def metric(gold, pred, trace=None):
        ...     return gold.capital == pred.capital
        >>> optimizer = TextualGradientDescent(metric, backward_model=coach, num_threads=1)
        >>> replies = [{"capital": "France"}] * 2 + [{"capital": "Paris"}]  # before, during, after
        >>> with dspy.context(lm=DummyLM(replies)):
        ...     _ = optimizer.compile(dspy.Predict("country -> capital"), trainset=trainset)
        >>> report = optimizer.last_report
        >>> report.initial_score, report.best_score, report.program_calls, report.instructions
        (0.0, 1.0, 3, {'self': 'Answer with the name of the capital city.'})
        >>> report.usage["by_purpose"]["optimizer"]["calls"], len(report.steps)
        (1, 1)
    """

    initial_score: float | None
    best_score: float | None
    steps: list[StepRecord]
    instructions: dict[str, str]
    program_calls: int
    usage: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


class TextualGradientDescent(Teleprompter):
    """Optimize the instructions of every predictor of a DSPy program with textual
    gradients.

    One step: run a minibatch of ``trainset`` (each example under its own DSPy trace,
    ``num_threads`` at once), score each prediction with ``metric``, and for each
    example not scored as correct build the run's graph (one node per predictor call,
    wired by the values passed between predictors) and send the feedback backward:
    the metric's feedback text (GEPA-style metrics) or a note of the score with the
    example's expected outputs. Every predictor that contributed to a wrong output
    receives feedback on its instructions; :class:`~afnio_langchain.optim.TGD` then
    rewrites them (one optimizer call per predictor with feedback), the new
    instructions are written with ``signature.with_instructions``, and the program is
    scored on ``valset``: the rewrite is kept when the score is at least the best so
    far plus ``min_improvement``, and undone otherwise.

    Model calls per step: one program run per minibatch example, one backward call
    per predictor call of each example with feedback, one optimizer call per
    predictor with feedback, and one program run per validation example.

    Args:
        metric: ``metric(example, prediction, trace=None)`` returning a number or a
            bool, or GEPA's ``metric(gold, pred, trace, pred_name, pred_trace)``
            returning ``dspy.Prediction(score=..., feedback=...)``.
        backward_model: The model that writes the textual gradients (a ``dspy.LM``, a
            LangChain chat model or a model client). Default: the process default of
            :func:`~afnio_langchain.set_backward_model`, else ``dspy.settings.lm``.
        optimizer_model: The model that rewrites the instructions (default: the
            backward model).
        batch_size: Examples per step.
        num_epochs: Passes over the trainset.
        max_steps: Stop after this many steps (None: no limit).
        success_threshold: A score at or above it counts as correct.
        skip_correct: Send no feedback for correct examples (their feedback costs
            calls and says little).
        validate: Gate each rewrite on the validation score (``valset``, or the
            trainset when no valset is given). False keeps every rewrite.
        min_improvement: How much a rewrite must add to the best validation score to
            be kept (0: ties are kept).
        show_labels: Show the example's expected outputs in the feedback of
            score-only metrics.
        momentum: TGD momentum (earlier values and their feedback shown).
        constraints: Rules every new instruction must follow (TGD constraints).
        num_threads: Examples run at once (default: ``dspy.settings.num_threads``).
        max_concurrency: Cap on backward calls in flight.
        seed: Seed of the minibatch shuffling.
        **optimizer_args: Further :class:`~afnio_langchain.optim.TGD` options
            (``max_proposals``, ``condense_threshold``, ``temperature``...).

    Raises:
        TypeError: ``metric`` is not callable, or an option has the wrong type.
        ValueError: An option is out of range.

    Example:
        >>> import dspy
        >>> from dspy.utils import DummyLM
        >>> from afnio_langchain.dspy import TextualGradientDescent
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> coach = ScriptedChatModel(feedback="Ask for the name of the capital city.",
        ...                           optimizer="Answer with the name of the capital city.")
        >>> program = dspy.Predict("country -> capital")
        >>> trainset = [dspy.Example(country="France", capital="Paris").with_inputs("country")]
        >>> def metric(gold, pred, trace=None):
        ...     return gold.capital == pred.capital
        >>> optimizer = TextualGradientDescent(metric, backward_model=coach, num_threads=1)
        >>> with dspy.context(lm=DummyLM({"France": {"capital": "France"}})):
        ...     optimized = optimizer.compile(program, trainset=trainset)
        >>> optimized.signature.instructions
        'Answer with the name of the capital city.'
        >>> program.signature.instructions  # the student is left as it was
        'Given the fields `country`, produce the fields `capital`.'
        >>> optimizer.last_report.steps[0].accepted
        True
    """

    def __init__(
        self,
        metric: Metric,
        *,
        backward_model: Any = None,
        optimizer_model: Any = None,
        batch_size: int = 4,
        num_epochs: int = 1,
        max_steps: int | None = None,
        success_threshold: float = 1.0,
        skip_correct: bool = True,
        validate: bool = True,
        min_improvement: float = 0.0,
        show_labels: bool = True,
        momentum: int = 0,
        constraints: Sequence[str] | str = (),
        num_threads: int | None = None,
        max_concurrency: int | None = None,
        seed: int = 0,
        **optimizer_args: Any,
    ) -> None:
        super().__init__()
        if not callable(metric):
            raise TypeError(f"metric must be callable, got {type(metric).__name__}")
        _positive_int("batch_size", batch_size)
        _positive_int("num_epochs", num_epochs)
        for name, value in (
            ("max_steps", max_steps),
            ("num_threads", num_threads),
            ("max_concurrency", max_concurrency),
        ):
            if value is not None:
                _positive_int(name, value)
        for name, value in (
            ("success_threshold", success_threshold),
            ("min_improvement", min_improvement),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if min_improvement < 0:
            raise ValueError(f"min_improvement must be >= 0, got {min_improvement}")
        for name, value in (
            ("skip_correct", skip_correct),
            ("validate", validate),
            ("show_labels", show_labels),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        self.metric = metric
        self.backward_model = backward_model
        self.optimizer_model = optimizer_model
        self.batch_size = batch_size
        self.num_epochs = num_epochs
        self.max_steps = max_steps
        self.success_threshold = float(success_threshold)
        self.skip_correct = skip_correct
        self.validate = validate
        self.min_improvement = float(min_improvement)
        self.show_labels = show_labels
        self.momentum = momentum
        self.constraints = constraints
        self.num_threads = num_threads
        self.max_concurrency = max_concurrency
        self.seed = seed
        self.optimizer_args = optimizer_args
        self.last_report: CompileReport | None = None
        self._program_calls = 0

    # -- compile ---------------------------------------------------------------------------
    def compile(
        self,
        student: Any,
        *,
        trainset: list[Any],
        teacher: Any = None,
        valset: list[Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Return an optimized copy of ``student`` (the student is not changed).

        Args:
            student: The DSPy program (``dspy.Module``) to optimize.
            trainset: ``dspy.Example``s with their inputs marked (``with_inputs``).
            teacher: Not used (instructions are learned from feedback, not from a
                teacher's demonstrations); accepted for DSPy's API.
            valset: Examples that gate each rewrite (default: the trainset).

        Raises:
            TypeError: ``student`` is not a DSPy module, or an unknown argument.
            ValueError: Empty trainset, or a program with no predictors.
            RuntimeError: Every example of a minibatch failed (the first error is
                chained), or no backward model is available.
        """
        if kwargs:
            raise TypeError(
                f"TextualGradientDescent.compile got unknown arguments {sorted(kwargs)}"
            )
        if not isinstance(student, dspy.Module):
            raise TypeError(f"student must be a dspy.Module, got {type(student).__name__}")
        trainset = _examples("trainset", trainset)
        valset = _examples("valset", valset) if valset is not None else trainset
        if teacher is not None:
            logger.warning("TextualGradientDescent does not use a teacher; it was ignored")

        program = student.deepcopy()
        predictors = program.named_predictors()
        if not predictors:
            raise ValueError("the student has no predictors (dspy.Predict modules) to optimize")
        params = {
            name: Variable(
                predictor.signature.instructions,
                role=prompts.INSTRUCTIONS_ROLE.format(predictor=name),
                requires_grad=True,
            )
            for name, predictor in predictors
        }
        by_id = {id(p): name for name, p in predictors}
        variables = {id(p): params[name] for name, p in predictors}
        backward_model = self._backward_model()
        optimizer = TGD(
            list(params.values()),
            model=as_model_client(self.optimizer_model)
            if self.optimizer_model is not None
            else backward_model,
            momentum=self.momentum,
            constraints=self.constraints,
            **self.optimizer_args,
        )

        steps: list[StepRecord] = []
        self._program_calls = 0
        with track_usage() as usage:
            best = self._score(program, valset) if self.validate else None
            initial = best
            order = list(range(len(trainset)))
            rng = random.Random(self.seed)
            for epoch in range(1, self.num_epochs + 1):
                rng.shuffle(order)
                for start in range(0, len(order), self.batch_size):
                    if self.max_steps is not None and len(steps) >= self.max_steps:
                        break
                    batch = [trainset[i] for i in order[start : start + self.batch_size]]
                    record, best = self._step(
                        len(steps) + 1,
                        epoch,
                        program,
                        batch,
                        valset,
                        best,
                        params,
                        predictors,
                        by_id,
                        variables,
                        backward_model,
                        optimizer,
                    )
                    steps.append(record)
        self.last_report = CompileReport(
            initial_score=initial,
            best_score=best,
            steps=steps,
            instructions={name: p.signature.instructions for name, p in predictors},
            program_calls=self._program_calls,
            usage=usage.as_dict(),
        )
        program._compiled = True
        return program

    def _step(
        self,
        number: int,
        epoch: int,
        program: Any,
        batch: list[Any],
        valset: list[Any],
        best: float | None,
        params: dict[str, Variable],
        predictors: list[tuple[str, Any]],
        by_id: dict[int, str],
        variables: dict[int, Variable],
        backward_model: Any,
        optimizer: TGD,
    ) -> tuple[StepRecord, float | None]:
        runs = self._run(program, batch)
        record = StepRecord(number, epoch, len(batch), _mean(r.result.score for r in runs))
        roots: list[tuple[Variable, str]] = []
        for run in runs:
            if run.error is not None or not self._needs_feedback(run.result):
                continue
            graph = build_graph(
                run.trace, run.prediction, variables, by_id, backward_model=backward_model
            )
            if graph.roots:
                record.with_feedback += 1
                text = self._feedback(run)
                roots.extend((root, text) for root in graph.roots)
        if not roots:
            record.note = "no example needed feedback"
            return record, best

        run_sync(lambda: run_backward(roots, max_concurrency=self.max_concurrency))
        before = {name: p.signature.instructions for name, p in predictors}
        optimizer.step()
        optimizer.zero_grad()
        record.updated = [name for name, var in params.items() if var.data != before[name]]
        if not record.updated:
            record.note = "the optimizer proposed no acceptable rewrite"
            return record, best
        _write(predictors, {name: str(var.data) for name, var in params.items()})
        if not self.validate:
            record.accepted = True
            return record, best
        score = self._score(program, valset)
        record.val_score = score
        record.accepted = best is None or score >= best + self.min_improvement
        if record.accepted:
            return record, score
        for name, var in params.items():  # undo: back to the instructions before the step
            var.data = before[name]
        _write(predictors, before)
        return record, best

    # -- pieces --------------------------------------------------------------------------
    def _backward_model(self) -> Any:
        model = self.backward_model
        if model is None:
            model = get_backward_model() or dspy.settings.lm
        if model is None:
            raise RuntimeError(
                "TextualGradientDescent needs a model to write feedback: pass "
                "backward_model=..., call afnio_langchain.set_backward_model(...), or "
                "dspy.configure(lm=...)"
            )
        return as_model_client(model)

    def _needs_feedback(self, result: MetricResult) -> bool:
        return not (self.skip_correct and result.score >= self.success_threshold)

    def _feedback(self, run: ExampleRun) -> str:
        score, threshold = _number(run.result.score), _number(self.success_threshold)
        if run.result.feedback:
            return prompts.METRIC_FEEDBACK.format(
                score=score, threshold=threshold, feedback=run.result.feedback
            )
        text = prompts.SCORE_FEEDBACK.format(score=score, threshold=threshold)
        labels = _labels(run.example) if self.show_labels else ""
        return f"{text}\n{prompts.EXPECTED_OUTPUT.format(labels=labels)}" if labels else text

    def _run(self, program: Any, examples: list[Any]) -> list[ExampleRun]:
        """Run and score every example, ``num_threads`` at once (contextvars carried)."""
        threads = self.num_threads or dspy.settings.num_threads or 1

        def one(example: Any) -> ExampleRun:
            run = ExampleRun(example)
            with dspy.context(trace=[]):
                try:
                    run.prediction = program(**example.inputs())
                    run.result = call_metric(self.metric, example, run.prediction)
                except Exception as exc:
                    run.error = exc
                    logger.warning("example failed: %s: %s", type(exc).__name__, exc)
                run.trace = list(dspy.settings.trace)
            return run

        if threads == 1 or len(examples) == 1:
            runs = [one(e) for e in examples]
        else:
            with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
                futures = [pool.submit(contextvars.copy_context().run, one, e) for e in examples]
                runs = [f.result() for f in futures]
        self._program_calls += sum(len(r.trace) for r in runs)
        errors = [r.error for r in runs if r.error is not None]
        if errors and len(errors) == len(runs):
            raise RuntimeError(
                f"all {len(runs)} examples failed; the first error: "
                f"{type(errors[0]).__name__}: {errors[0]}"
            ) from errors[0]
        return runs

    def _score(self, program: Any, examples: list[Any]) -> float:
        return _mean(run.result.score for run in self._run(program, examples))


# -- helpers ---------------------------------------------------------------------------


def _write(predictors: list[tuple[str, Any]], instructions: dict[str, str]) -> None:
    for name, predictor in predictors:
        if predictor.signature.instructions != instructions[name]:
            predictor.signature = predictor.signature.with_instructions(instructions[name])


def _examples(name: str, examples: Any) -> list[Any]:
    if not isinstance(examples, (list, tuple)) or not examples:
        raise ValueError(f"{name} must be a non-empty list of dspy.Example")
    for i, example in enumerate(examples):
        if not isinstance(example, dspy.Example):
            raise TypeError(f"{name}[{i}] must be a dspy.Example, got {type(example).__name__}")
    return list(examples)


def _labels(example: Any) -> str:
    try:
        labels = example.labels()
    except ValueError:  # inputs not marked: every field counts as input
        return ""
    return "\n".join(f"{k}: {value_text(v)}" for k, v in labels.items())


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _number(value: float) -> str:
    return f"{value:g}"


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


__all__ = ["CompileReport", "ExampleRun", "StepRecord", "TextualGradientDescent"]
