"""``TextualGradientDescent``: textual gradient descent as a DSPy optimizer (Teleprompter).

Every predictor's ``signature.instructions`` becomes a trainable Variable, and each
step is the package's one validation-gated step
(:func:`afnio_langchain.loop.training_step`, the same as ``fit``'s): a minibatch of the
trainset runs under DSPy's trace and is scored by the metric; each failing run is
replayed as an autodiff graph (:mod:`afnio_langchain.dspy._graph`) and its feedback
sent back through the program's steps to every predictor's instructions;
:class:`~afnio_langchain.optim.TGD` rewrites them; and the rewrite is kept only when
the validation score says it is better (the one gate rule).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from afnio_langchain.dspy._compat import require_dspy

dspy = require_dspy("afnio_langchain.dspy.TextualGradientDescent")

from dspy.teleprompt.teleprompt import Teleprompter

from afnio_langchain.autodiff import get_backward_model
from afnio_langchain.dspy._compile_args import compile_options
from afnio_langchain.dspy._compile_run import CompileRun, score_text
from afnio_langchain.dspy._evaluation import EvalSettings, ExampleRun
from afnio_langchain.dspy._graph import value_text
from afnio_langchain.dspy._metric import Metric, check_metric
from afnio_langchain.dspy._protocol import feedback_client
from afnio_langchain.dspy._stats import CompileReport, StepRecord
from afnio_langchain.loop import GATES, GatePolicy
from afnio_langchain.models import track_usage

logger = logging.getLogger(__name__)


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
    scored on ``valset`` with ``dspy.Evaluate``. The gate
    (:class:`~afnio_langchain.loop.GatePolicy`, the same rule as ``fit``'s) keeps the
    rewrite only when that score is higher than the current one; otherwise it is undone.

    Examples that fail (the program raises, DSPy's adapter cannot parse a reply, the
    metric raises) score ``failure_score``, are counted and logged, and the compile
    goes on, as in ``dspy.Evaluate``; a compile that cannot run at all (no LM, no
    model for the feedback, examples without inputs) fails before any call.

    Model calls per step: one program run per minibatch example, one backward call
    per predictor call of each example with feedback, one optimizer call per
    predictor with feedback, and one program run per validation example.

    Args:
        metric: ``metric(example, prediction, trace=None)`` returning a number or a
            bool, or GEPA's ``metric(gold, pred, trace, pred_name, pred_trace)``
            returning ``dspy.Prediction(score=..., feedback=...)``.
        backward_model: The model that writes the textual gradients (a ``dspy.LM``, a
            LangChain chat model or a model client). Default: the process default of
            :func:`~afnio_langchain.set_backward_model`, else ``dspy.settings.lm``. A
            ``dspy.LM`` is asked through DSPy's adapter
            (:mod:`afnio_langchain.dspy._protocol`), other models through the
            package's JSON protocol.
        optimizer_model: The model that rewrites the instructions (default: the
            backward model).
        batch_size: Examples per step.
        num_epochs: Passes over the trainset.
        max_steps: Stop after this many steps (None: no limit; MIPROv2's
            ``num_trials`` in ``compile`` sets it too).
        success_threshold: A score at or above it counts as correct.
        skip_correct: Send no feedback for correct examples (their feedback costs
            calls and says little).
        gate: ``"improve"`` (default): keep a rewrite only when the validation score
            rises; ``"no_worse"``: also on a tie above zero; ``"off"``: keep every
            rewrite without validating.
        min_improvement: How much a rise must add to be kept.
        show_labels: Show the example's expected outputs in the feedback of
            score-only metrics.
        momentum: TGD momentum (earlier values and their feedback shown).
        constraints: Rules every new instruction must follow (TGD constraints).
        num_threads: Examples run at once (default: ``dspy.settings.num_threads``).
        max_errors: Failed examples in one pass that stop the compile (default:
            ``dspy.settings.max_errors``, as ``dspy.Evaluate``).
        failure_score: The score of a failed example (``dspy.Evaluate``'s).
        track_stats: Attach DSPy's statistics to the returned program
            (``results_best``, ``results_latest``, ``score``, ``trial_logs``...; see
            docs/dspy.md). ``candidate_programs`` and ``total_calls`` are always set.
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
        >>> program = dspy.Predict("question -> answer")
        >>> trainset = [dspy.Example(question="2+2?", answer="4").with_inputs("question")]
        >>> def metric(gold, pred, trace=None, pred_name=None, pred_trace=None):  # GEPA-style
        ...     right = gold.answer == pred.answer
        ...     return dspy.Prediction(score=float(right), feedback="" if right else "Use digits.")
        >>> coach = ScriptedChatModel(feedback="Ask for digits.", optimizer="Answer in digits.")
        >>> optimizer = TextualGradientDescent(metric, backward_model=coach, num_threads=1)
        >>> replies = [{"answer": "four"}] * 2 + [{"answer": "4"}]  # before, during, after
        >>> with dspy.context(lm=DummyLM(replies)):
        ...     optimized = optimizer.compile(program, trainset=trainset)
        >>> optimized.signature.instructions
        'Answer in digits.'
        >>> program.signature.instructions  # the student is left as it was
        'Given the fields `question`, produce the fields `answer`.'
        >>> optimizer.last_report.steps[0].accepted, optimized.total_calls
        (True, 3)
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
        gate: str = "improve",
        min_improvement: float = 0.0,
        show_labels: bool = True,
        momentum: int = 0,
        constraints: Sequence[str] | str = (),
        num_threads: int | None = None,
        max_errors: int | None = None,
        failure_score: float = 0.0,
        track_stats: bool = False,
        max_concurrency: int | None = None,
        seed: int = 0,
        **optimizer_args: Any,
    ) -> None:
        super().__init__()
        check_metric(metric)
        _positive_int("batch_size", batch_size)
        _positive_int("num_epochs", num_epochs)
        for name, value in (
            ("max_steps", max_steps),
            ("num_threads", num_threads),
            ("max_errors", max_errors),
            ("max_concurrency", max_concurrency),
        ):
            if value is not None:
                _positive_int(name, value)
        for name, value in (("success_threshold", success_threshold), ("failure_score", failure_score)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        self.gate_policy = GatePolicy(gate, min_improvement)  # checks both
        for name, value in (
            ("skip_correct", skip_correct),
            ("show_labels", show_labels),
            ("track_stats", track_stats),
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
        self.gate = gate
        self.min_improvement = float(min_improvement)
        self.show_labels = show_labels
        self.momentum = momentum
        self.constraints = constraints
        self.num_threads = num_threads
        self.max_errors = max_errors
        self.failure_score = float(failure_score)
        self.track_stats = track_stats
        self.max_concurrency = max_concurrency
        self.seed = seed
        self.optimizer_args = optimizer_args
        self.last_report: CompileReport | None = None

    # -- compile ---------------------------------------------------------------------------
    def compile(
        self,
        student: Any,
        *,
        trainset: list[Any],
        teacher: Any = None,
        valset: list[Any] | None = None,
        eval_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Return an optimized copy of ``student`` (the student is not changed).

        Takes the arguments of DSPy's instruction optimizers (COPRO, MIPROv2, GEPA),
        honoured where this optimizer has the same thing and refused, with the reason,
        where it has none (:mod:`afnio_langchain.dspy._compile_args`).

        Args:
            student: The DSPy program (``dspy.Module``) to optimize.
            trainset: ``dspy.Example``s with their inputs marked (``with_inputs``).
            teacher: Must be None: the instructions are learned from feedback, and no
                demos are bootstrapped from a teacher (GEPA refuses one too).
            valset: Examples that gate each rewrite (default: the trainset).
            eval_kwargs: ``dspy.Evaluate`` options for the validation passes
                (``num_threads``, ``max_errors``, ``failure_score``,
                ``display_progress``, ``display_table``, ``provide_traceback``...);
                threads, error limit and failure score apply to minibatches too.
            **kwargs: MIPROv2's ``num_trials``, ``seed``, ``provide_traceback``,
                ``max_bootstrapped_demos=0``, ``max_labeled_demos=0``,
                ``minibatch=False``...

        Raises:
            TypeError: ``student`` is not a DSPy module, an example is not a
                ``dspy.Example``, or an unknown argument.
            ValueError: Empty trainset, examples without inputs, a program with no
                predictors, a teacher, or an argument that cannot be honoured.
            RuntimeError: No LM for a predictor or no model for the feedback (raised
                before any call), or ``max_errors`` examples of one pass failed.
        """
        if not isinstance(student, dspy.Module):
            raise TypeError(f"student must be a dspy.Module, got {type(student).__name__}")
        if teacher is not None:
            raise ValueError(
                "TextualGradientDescent learns instructions from feedback and bootstraps no "
                "demos, so a teacher has nothing to do here (dspy.GEPA refuses one too): pass "
                "teacher=None"
            )
        options = compile_options(kwargs)
        trainset = _examples("trainset", trainset)
        valset = _examples("valset", valset) if valset is not None else trainset
        settings = EvalSettings.build(
            {
                "num_threads": self.num_threads,
                "max_errors": self.max_errors,
                "failure_score": self.failure_score,
                "provide_traceback": options.provide_traceback,
            },
            eval_kwargs,
        )
        program = student.deepcopy()
        predictors = program.named_predictors()
        if not predictors:
            raise ValueError("the student has no predictors (dspy.Predict modules) to optimize")
        backward_model = self._backward_model()
        _check_lms(predictors)
        optimizer_model = (
            feedback_client(self.optimizer_model) if self.optimizer_model is not None else backward_model
        )
        run = CompileRun(self, program, predictors, backward_model, optimizer_model, settings)
        seed = options.seed if options.seed is not None else self.seed
        max_steps = options.max_steps or self.max_steps
        with track_usage() as usage:
            run.execute(trainset, valset, seed, max_steps)
        self.last_report = run.report(usage.as_dict())
        run.log.attach(
            program,
            track_stats=self.track_stats,
            total_calls=run.metric_calls,
            prompt_model_calls=_calls(self.last_report.usage, "optimizer"),
        )
        logger.info(
            "Returning the program with validation score %s (the student's: %s)",
            score_text(self.last_report.best_score), score_text(self.last_report.initial_score),
        )
        program._compiled = True
        return program

    def _backward_model(self) -> Any:
        model = self.backward_model
        if model is None:
            model = get_backward_model() or dspy.settings.lm
        if model is None:
            raise RuntimeError(
                "TextualGradientDescent needs a model to write feedback: pass "
                "backward_model=..., call afnio_langchain.set_backward_model(...), or "
                "dspy.configure(lm=...) (nothing was run)"
            )
        return feedback_client(model)

    def _expected(self, example: Any) -> str | None:
        if not self.show_labels:
            return None
        try:
            labels = example.labels()
        except ValueError:  # inputs not marked: every field counts as input
            return None
        if not labels:
            return None
        if len(labels) == 1:
            return value_text(next(iter(labels.values())))
        return "; ".join(f"{k}: {value_text(v)}" for k, v in labels.items())


# -- helpers ---------------------------------------------------------------------------


def _check_lms(predictors: list[tuple[str, Any]]) -> None:
    """Fail before any call when a predictor has no LM to run on."""
    if dspy.settings.lm is not None:
        return
    missing = [name for name, p in predictors if getattr(p, "lm", None) is None]
    if missing:
        raise RuntimeError(
            f"no LM is configured for the predictor(s) {missing}: call dspy.configure(lm=...) "
            "or predictor.set_lm(...) (nothing was run)"
        )


def _examples(name: str, examples: Any) -> list[Any]:
    if not isinstance(examples, (list, tuple)) or not examples:
        raise ValueError(f"{name} must be a non-empty list of dspy.Example")
    for i, example in enumerate(examples):
        if not isinstance(example, dspy.Example):
            raise TypeError(f"{name}[{i}] must be a dspy.Example, got {type(example).__name__}")
        if example._input_keys is None:
            raise ValueError(
                f"{name}[{i}] has no inputs marked: build it with .with_inputs(...) so the program "
                "knows what to run on (nothing was run)"
            )
    return list(examples)


def _calls(usage: dict[str, Any], purpose: str) -> int:
    return int(usage.get("by_purpose", {}).get(purpose, {}).get("calls", 0))


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


__all__ = ["GATES", "CompileReport", "ExampleRun", "StepRecord", "TextualGradientDescent"]
