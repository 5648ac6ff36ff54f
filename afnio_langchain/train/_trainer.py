"""``Trainer`` and ``fit``: the options of a training run, checked once, and the entry
points that start it.

The run itself (epochs, the validation-gated steps, stopping and budgets) is
:mod:`afnio_langchain.train._run`; its checkpointed state, started fresh or resumed,
is :mod:`afnio_langchain.train._run_state`.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from afnio_langchain.autodiff import Variable, use_backward_model
from afnio_langchain.loop import GATES, Example, Metric, metric_name
from afnio_langchain.models import concurrency_limit
from afnio_langchain.optim import TGD, Optimizer
from afnio_langchain.train._accounting import Prices
from afnio_langchain.train._checkpoint import run_lock
from afnio_langchain.train._evaluation import (
    EvalResult,
    InputFn,
    chain_inputs,
    input_fn_for,
    run_and_score,
)
from afnio_langchain.train._loading import count_llm_steps, trainable_chain
from afnio_langchain.train._preflight import backward_model_problem
from afnio_langchain.train._run import TrainingError, TrainingRun, TrainResult

__all__ = ["GATES", "Trainer", "TrainResult", "TrainingError", "fit"]


class Trainer:
    """Trains the prompts of a chain on examples with a metric.

    Args:
        chain: A LangChain Runnable whose output is a ``Variable`` (built from
            ``ChatCompletionRunnable`` steps or ``make_trainable``); a plain chain is
            converted with ``make_trainable`` when it has no trainable Variables.
        metric: ``metric(example, prediction) -> float | bool | MetricResult |
            (score, feedback)`` (see :mod:`afnio_langchain.train._metrics`), scores
            from 0 to 1.
        optimizer: An optimizer over the chain's parameters; by default a
            :class:`~afnio_langchain.optim.TGD` with ``optimizer_model``.
        optimizer_model: The model TGD uses to rewrite prompts.
        backward_model: The model writing gradients while training (set as the
            process default for the duration of :meth:`fit`); None keeps the current.
        params: The Variables to train (default: every trainable one in ``chain``).
        momentum: TGD momentum (earlier values shown to the optimizer).
        constraints: TGD constraints (rules every new value must follow).
        epochs: Passes over the training set.
        batch_size: Examples per step.
        shuffle: Shuffle the training set each epoch (reproducibly, from ``seed``).
        seed: The shuffling seed.
        gate: The validation gate (:class:`~afnio_langchain.loop.GatePolicy`, the
            one rule of ``fit`` and the DSPy teleprompter): ``"improve"`` (default)
            keeps a step only if the validation score rises; ``"no_worse"`` also
            keeps a tie, except a tie at zero; ``"off"`` keeps every step (the best
            values are restored at the end).
        patience: Stop after this many epochs without a better validation score.
        target_score: Stop once the validation score reaches this.
        skip_correct: Send no feedback for items already scored a success.
        success_threshold: The score at or above which an item is a success.
        evaluate_train: Score the whole training set before and after training.
        input_keys: Example keys given to the chain (default: all but the target).
        target_key: The example key holding the expected output (to leave it out
            of the chain input; default: the usual names).
        input_fn: Builds the chain input from an example (overrides the keys).
        checkpoint_path: The JSON checkpoint file, written after every step. A file
            already there is never overwritten: without ``resume``, :meth:`fit` refuses
            it (use another path, or delete it, to start afresh).
        resume: Continue from ``checkpoint_path`` if it exists.
        max_concurrency: Cap on model calls in flight.
        max_calls: Stop (after the current step) once this many calls were made, over
            every session of the run; a run it stopped, resumed with a larger one,
            runs its remaining steps.
        max_tokens: Stop (after the current step) once this many tokens (input plus
            output, every purpose) were used; resumable with a larger one likewise.
        max_cost: Stop once this many USD were spent (by the price table); resumable
            with a larger one likewise.
        prices: Price table (model -> USD per 1M input, output tokens).
        progress: Show a tqdm progress bar with scores, calls and cost (and one for
            :meth:`evaluate`).
        max_failed_steps: Raise :class:`TrainingError` after this many failed
            steps in a row (nothing could be run, backpropagated or stepped).
        info: Extra run description kept in the checkpoint and report.

    Example:
        >>> from langchain_core.runnables import RunnableLambda
        >>> from afnio_langchain import ChatCompletionRunnable, Variable
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> from afnio_langchain.train import Trainer, exact_match
        >>> model = ScriptedChatModel(
        ...     forward=lambda text: "4" if "digits" in text else "four",
        ...     feedback="Ask for digits.", optimizer="Answer with digits only.")
        >>> system = Variable("Answer the question.", role="system prompt", requires_grad=True)
        >>> chain = ChatCompletionRunnable(model=model, messages=[("system", system),
        ...                                                      ("user", "{question}")])
        >>> data = [{"question": "2+2?", "answer": "4"}] * 2
        >>> trainer = Trainer(chain, exact_match, optimizer_model=model, backward_model=model,
        ...                   params=[system], batch_size=2, progress=False)
        >>> result = trainer.fit(data, val=data)
        >>> result.baseline["val"], result.final["val"], system.data
        (0.0, 1.0, 'Answer with digits only.')
    """

    def __init__(
        self,
        chain: Any,
        metric: Metric,
        *,
        optimizer: Optimizer | None = None,
        optimizer_model: Any = None,
        backward_model: Any = None,
        params: Sequence[Variable] | None = None,
        momentum: int = 0,
        constraints: Sequence[str] = (),
        epochs: int = 1,
        batch_size: int = 4,
        shuffle: bool = True,
        seed: int = 0,
        gate: str = "improve",
        patience: int | None = None,
        target_score: float | None = None,
        skip_correct: bool = True,
        success_threshold: float = 1.0,
        evaluate_train: bool = True,
        input_keys: Sequence[str] | None = None,
        target_key: str | None = None,
        input_fn: InputFn | None = None,
        checkpoint_path: str | Path | None = None,
        resume: bool = False,
        max_concurrency: int | None = None,
        max_calls: int | None = None,
        max_tokens: int | None = None,
        max_cost: float | None = None,
        prices: Prices | None = None,
        progress: bool = True,
        max_failed_steps: int = 3,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        if not callable(metric):
            raise TypeError(f"metric must be callable: metric(example, prediction); got {type(metric).__name__}")
        _positive_int("epochs", epochs)
        _positive_int("batch_size", batch_size)
        _positive_int("max_failed_steps", max_failed_steps)
        for name, value in (
            ("patience", patience),
            ("max_calls", max_calls),
            ("max_tokens", max_tokens),
            ("max_concurrency", max_concurrency),
        ):
            if value is not None:
                _positive_int(name, value)
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if max_cost is not None and (not isinstance(max_cost, (int, float)) or max_cost <= 0):
            raise ValueError(f"max_cost must be a positive number, got {max_cost!r}")
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be an afnio_langchain Optimizer, got {type(optimizer).__name__}")
        if optimizer is None and optimizer_model is None:
            raise TypeError("Trainer needs optimizer_model=... (the model TGD rewrites prompts with) or optimizer=...")
        if optimizer is not None and params is None:
            params = optimizer.params
        self.chain, self.params = trainable_chain(chain, params)
        self.optimizer = optimizer or TGD(
            self.params, model=optimizer_model, momentum=momentum, constraints=constraints
        )
        if [id(p) for p in self.optimizer.params] != [id(p) for p in self.params]:
            raise ValueError("the optimizer must optimize exactly the trained parameters, in order")
        self.metric = _with_target_key(metric, target_key)
        self.backward_model = backward_model
        self.epochs = epochs
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.gate = gate
        self.patience = patience
        self.target_score = target_score
        self.skip_correct = skip_correct
        self.success_threshold = success_threshold
        self.evaluate_train = evaluate_train
        self.target_key = target_key
        self.input_fn = input_fn_for(chain, input_fn, input_keys, target_key)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.resume = resume
        self.max_concurrency = max_concurrency
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self.max_cost = max_cost
        self.prices = prices
        self.progress = progress
        self.max_failed_steps = max_failed_steps
        self.info = dict(info or {})

    # -- public ------------------------------------------------------------------------
    def fit(self, train: Sequence[Example], val: Sequence[Example] | None = None) -> TrainResult:
        """Train on ``train``, gating steps on ``val`` (if given). Resumes from the
        checkpoint when ``resume`` is set and it exists.

        Raises:
            TrainingError: No model can write the feedback (checked before any model
                call, see :meth:`check_setup`), the model cannot be reached, or steps
                keep failing.
            MetricScoreError: The metric returned something other than a score from 0
                to 1 (the last checkpoint is kept).
            CheckpointError: The checkpoint belongs to another run or is malformed, or
                it exists and ``resume`` is off (checked before any model call).
            ValueError: The examples cannot be turned into chain inputs.
        """
        path = self.checkpoint_path
        with run_lock(path) if path is not None else contextlib.nullcontext():
            run = TrainingRun(self, list(train), None if val is None else list(val))
            if run.state.stage != "finished":  # a finished run only hands its result back
                self.check_setup()
            return run.execute()

    def check_setup(self) -> None:
        """Refuse, before any model call, what :meth:`fit` would otherwise find out only
        after paid calls, where the chain shows it: no model to write the feedback
        (no ``backward_model``, no scoped or process default, none on the chain's
        steps). :meth:`fit` calls it; the command line calls it before it writes
        anything.

        Raises:
            TrainingError: The message says what to change.
        """
        problem = backward_model_problem(self.chain, self.params, self.backward_model)
        if problem is not None:
            raise TrainingError(problem)

    def evaluate(self, examples: Sequence[Example]) -> EvalResult:
        """Score the chain, as it is now, on ``examples`` (no gradients kept), with a
        progress bar when ``progress`` is set.

        Raises:
            MetricScoreError: The metric returned something other than a score from 0 to 1.
        """
        examples = list(examples)
        inputs = chain_inputs(examples, self.input_fn)
        with self._limits():
            return run_and_score(
                self.chain, self.metric, examples, inputs, grad=False,
                max_concurrency=self.max_concurrency, progress=self.progress,
            )

    def estimate_calls(
        self, n_train: int, n_val: int = 0, calls_per_example: int | None = None
    ) -> dict[str, int]:
        """An upper estimate of the model calls a run will make, by purpose, before it
        starts (fewer are made when items are already correct, steps stop early or
        proposals are accepted at once).

        Args:
            n_train: Training examples.
            n_val: Validation examples.
            calls_per_example: Model calls the chain makes per example; by default its
                LLM steps, counted in the chain.

        Example:
            >>> from afnio_langchain import ChatCompletionRunnable, Variable
            >>> from afnio_langchain.testing import ScriptedChatModel
            >>> from afnio_langchain.train import Trainer, exact_match
            >>> model = ScriptedChatModel(forward="x")
            >>> system = Variable("Be brief.", role="system prompt", requires_grad=True)
            >>> chain = ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{q}")])
            >>> Trainer(chain, exact_match, optimizer_model=model, epochs=2, batch_size=3).estimate_calls(6, 4)
            {'forward': 44, 'backward': 12, 'optimizer': 16, 'judge': 0}
        """
        if calls_per_example is None:
            calls_per_example = count_llm_steps(self.chain)
        steps = math.ceil(n_train / self.batch_size) * self.epochs if n_train else 0
        evaluated = (n_val + (2 * n_train if self.evaluate_train else 0)) + (
            steps * n_val if self.gate != "off" else self.epochs * n_val
        )
        scored = n_train * self.epochs + evaluated
        proposals = sum(
            len(group["params"]) * (int(group.get("max_proposals", 1)) + 1)
            for group in self.optimizer.param_groups
        )
        from afnio_langchain.train._metrics import LMJudge

        return {
            "forward": scored * calls_per_example,
            "backward": n_train * self.epochs * calls_per_example,
            "optimizer": steps * proposals,
            "judge": scored if isinstance(self.metric, LMJudge) else 0,
        }

    def config(self) -> dict[str, Any]:
        """The run's settings, JSON-ready (for reports)."""
        return {
            "metric": metric_name(self.metric),
            "optimizer": type(self.optimizer).__name__,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "gate": self.gate,
            "patience": self.patience,
            "target_score": self.target_score,
            "skip_correct": self.skip_correct,
            "success_threshold": self.success_threshold,
            "max_calls": self.max_calls,
            "max_tokens": self.max_tokens,
            "max_cost": self.max_cost,
            **self.info,
        }

    @contextlib.contextmanager
    def _limits(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            if self.max_concurrency is not None:
                stack.enter_context(concurrency_limit(self.max_concurrency))
            if self.backward_model is not None:
                stack.enter_context(use_backward_model(self.backward_model))
            yield


# -- helpers ---------------------------------------------------------------------------


def fit(
    chain: Any,
    train: Sequence[Example],
    val: Sequence[Example] | None = None,
    *,
    metric: Metric,
    **options: Any,
) -> TrainResult:
    """Train ``chain`` on ``train`` (gating on ``val``): ``Trainer(chain, metric,
    **options).fit(train, val)``. See :class:`Trainer` for the options."""
    return Trainer(chain, metric, **options).fit(train, val)


def _with_target_key(metric: Metric, target_key: str | None) -> Metric:
    """A built-in metric (``exact_match``, ``contains``, ``LMJudge``) that was given no
    target key of its own reads the trainer's ``target_key``."""
    from afnio_langchain.loop import Contains, ExactMatch
    from afnio_langchain.train._metrics import LMJudge

    if target_key is None or not isinstance(metric, (ExactMatch, Contains, LMJudge)):
        return metric
    if metric.target_key is not None:
        return metric
    own = copy.copy(metric)
    own.target_key = target_key
    return own


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")



