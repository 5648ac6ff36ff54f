"""The fit loop: minibatches, epochs, validation-gated steps, checkpoints, early stopping.

One step: run the chain on a minibatch (with grad), score each output, send the
feedback of every failed item back through its graph (items already correct are
skipped by default), let the optimizer rewrite the parameters, then measure the
validation set and keep the step only if the score did not get worse (else the
parameters roll back). The run's state is written to a JSON checkpoint after every
step, so an interrupted run resumes with no completed step lost.

The loop itself runs in the caller's thread (model calls run concurrently on the
package's event loop), so Ctrl-C stops it at once and leaves the last checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from afnio_langchain._aio import run_sync
from afnio_langchain.autodiff import Variable, describe_error, run_backward, use_backward_model
from afnio_langchain.loop import Example, Metric, MetricResult, default_feedback, metric_name
from afnio_langchain.models import UsageTracker, concurrency_limit, track_usage
from afnio_langchain.optim import TGD, Optimizer
from afnio_langchain.train._accounting import (
    CostReport,
    Prices,
    estimate_cost,
    merge_usage,
    usage_from_pairs,
    usage_pairs,
)
from afnio_langchain.train._checkpoint import (
    CheckpointError,
    TrainingState,
    check_resumable,
    load_checkpoint,
    save_checkpoint,
)
from afnio_langchain.train._evaluation import (
    EvalResult,
    InputFn,
    chain_inputs,
    default_input_fn,
    run_and_score,
)
from afnio_langchain.train._loading import trainable_chain

GATES = ("no_worse", "improve", "off")
"""Validation gating: keep a step when the score does not drop / strictly rises / always."""


class TrainingError(RuntimeError):
    """Training cannot go on (the model is unreachable, steps keep failing...). The
    last checkpoint is kept, so the run can be resumed once the cause is fixed."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        chain: The trained chain (its parameters hold the best values found).
        params: The trained Variables, in order.
        state: The full run state (history, scores, values), as checkpointed.
        usage: Calls and tokens of the whole run (all sessions), per model and purpose.
        eval_usage: The part of ``usage`` spent on evaluations.
        cost: Money spent, from ``usage`` and the price table.
        wall_time_s: Wall time of the whole run (all sessions).
        checkpoint_path: Where the checkpoint is (None if not written).
        config: The run's settings, for reports.

    Example:
        >>> from afnio_langchain import ChatCompletionRunnable, Variable
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> from afnio_langchain.train import exact_match, fit
        >>> model = ScriptedChatModel(forward=lambda text: "4" if "digits" in text else "four",
        ...                           feedback="Ask for digits.", optimizer="Answer with digits.")
        >>> system = Variable("Answer the question.", role="system prompt", requires_grad=True)
        >>> chain = ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{q}")])
        >>> data = [{"q": "2+2?", "answer": "4"}]
        >>> result = fit(chain, data, val=data, metric=exact_match, optimizer_model=model,
        ...              backward_model=model, progress=False)
        >>> result.baseline["val"], result.final["val"], [p.data for p in result.params]
        (0.0, 1.0, ['Answer with digits.'])
        >>> result.usage.total().calls, result.eval_usage.total().calls, result.cost.total
        (7, 4, 0.0)
    """

    chain: Any
    params: list[Variable]
    state: TrainingState
    usage: UsageTracker
    eval_usage: UsageTracker
    cost: CostReport
    wall_time_s: float
    checkpoint_path: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline(self) -> dict[str, float | None]:
        return dict(self.state.baseline)

    @property
    def final(self) -> dict[str, float | None]:
        return dict(self.state.final)

    @property
    def history(self) -> dict[str, list[dict[str, Any]]]:
        return self.state.history

    @property
    def best_val(self) -> float | None:
        return self.state.best_val

    @property
    def stopped(self) -> str | None:
        return self.state.stopped


class Trainer:
    """Trains the prompts of a chain on examples with a metric.

    Args:
        chain: A LangChain Runnable whose output is a ``Variable`` (built from
            ``ChatCompletionRunnable`` steps or ``make_trainable``); a plain chain is
            converted with ``make_trainable`` when it has no trainable Variables.
        metric: ``metric(example, prediction) -> float | bool | MetricResult |
            (score, feedback)`` (see :mod:`afnio_langchain.train._metrics`).
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
        gate: ``"no_worse"``: keep a step only if the validation score does not
            drop; ``"improve"``: only if it rises; ``"off"``: keep every step (the
            best values are restored at the end).
        patience: Stop after this many epochs without a better validation score.
        target_score: Stop once the validation score reaches this.
        skip_correct: Send no feedback for items already scored a success.
        success_threshold: The score at or above which an item is a success.
        evaluate_train: Score the whole training set before and after training.
        input_keys: Example keys given to the chain (default: all but the target).
        target_key: The example key holding the expected output (to leave it out
            of the chain input; default: the usual names).
        input_fn: Builds the chain input from an example (overrides the keys).
        checkpoint_path: The JSON checkpoint file, written after every step.
        resume: Continue from ``checkpoint_path`` if it exists.
        max_concurrency: Cap on model calls in flight.
        max_calls: Stop (after the current step) once this many calls were made.
        max_tokens: Stop (after the current step) once this many tokens (input plus
            output, every purpose) were used.
        max_cost: Stop once this many USD were spent (by the price table).
        prices: Price table (model -> USD per 1M input, output tokens).
        progress: Show a tqdm progress bar with scores, calls and cost.
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
        gate: str = "no_worse",
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
        self.metric = metric
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
        self.input_fn = input_fn or default_input_fn(input_keys, target_key)
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
            TrainingError: The model cannot be reached, or steps keep failing.
            CheckpointError: The checkpoint belongs to another run or is malformed.
            ValueError: The examples cannot be turned into chain inputs.
        """
        run = _Run(self, list(train), None if val is None else list(val))
        return run.execute()

    def evaluate(self, examples: Sequence[Example]) -> EvalResult:
        """Score the chain, as it is now, on ``examples`` (no gradients kept)."""
        examples = list(examples)
        inputs = chain_inputs(examples, self.input_fn)
        with self._limits():
            return run_and_score(
                self.chain, self.metric, examples, inputs, grad=False,
                max_concurrency=self.max_concurrency,
            )

    def estimate_calls(
        self, n_train: int, n_val: int = 0, calls_per_example: int = 1
    ) -> dict[str, int]:
        """An upper estimate of the model calls a run will make, by purpose, before it
        starts (fewer are made when items are already correct, steps stop early or
        proposals are accepted at once).

        Args:
            n_train: Training examples.
            n_val: Validation examples.
            calls_per_example: Model calls the chain makes per example (its LLM steps).

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


class _Run:
    """One call of :meth:`Trainer.fit`: the loop and its bookkeeping."""

    def __init__(self, trainer: Trainer, train: list[Example], val: list[Example] | None) -> None:
        if not train:
            raise ValueError("the training set is empty")
        if val is not None and not val:
            raise ValueError("the validation set is empty (pass val=None to train without one)")
        self.t = trainer
        self.train = train
        self.val = val
        self.train_inputs = chain_inputs(train, trainer.input_fn, "train")
        self.val_inputs = chain_inputs(val, trainer.input_fn, "val") if val is not None else None
        self.n_batches = math.ceil(len(train) / trainer.batch_size)
        self.state = self._initial_state()
        self.state.sessions += 1
        self.base_usage = usage_from_pairs(self.state.usage["total"])
        self.base_eval = usage_from_pairs(self.state.usage["evaluation"])
        self.eval_usage = UsageTracker()
        self.live: UsageTracker | None = None
        self.session_start = time.monotonic()
        self.base_elapsed = self.state.elapsed_s
        self.failed_steps = 0
        self.bar: Any = None

    # -- state -------------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        return {
            "params": [p.role for p in self.t.params],
            "train": _digest(self.train),
            "val": _digest(self.val) if self.val is not None else None,
            "batch_size": self.t.batch_size,
            "seed": self.t.seed,
            "shuffle": self.t.shuffle,
        }

    def _initial_state(self) -> TrainingState:
        t = self.t
        fingerprint = self._fingerprint()
        path = t.checkpoint_path
        if t.resume and path is not None and path.exists():
            state = load_checkpoint(path)
            check_resumable(state, fingerprint, str(path))
            try:
                t.optimizer.load_state_dict(state.optimizer)
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"{path}: the optimizer state does not fit: {exc}") from None
            for p, value in zip(t.params, state.values):
                p.data = value
            if state.stage == "finished" and state.epoch <= t.epochs and state.stopped is None:
                state.stage = "training"  # more epochs were asked for than were run
            return state
        values = [p.data for p in t.params]
        return TrainingState(
            fingerprint=fingerprint,
            roles=[p.role for p in t.params],
            initial_values=list(values),
            values=list(values),
            best_values=list(values),
            info=t.config(),
        )

    def _usage(self) -> UsageTracker:
        return merge_usage(self.base_usage, self.live or UsageTracker())

    def _cost(self) -> CostReport:
        return estimate_cost(self._usage(), self.t.prices)

    def _save(self) -> None:
        state = self.state
        state.values = [p.data for p in self.t.params]
        state.optimizer = _portable_state_dict(self.t.optimizer)
        state.usage = {
            "total": usage_pairs(self._usage()),
            "evaluation": usage_pairs(merge_usage(self.base_eval, self.eval_usage)),
        }
        state.elapsed_s = self.base_elapsed + (time.monotonic() - self.session_start)
        if self.t.checkpoint_path is not None:
            save_checkpoint(self.t.checkpoint_path, state)

    # -- the loop ----------------------------------------------------------------------
    def execute(self) -> TrainResult:
        t = self.t
        with t._limits(), track_usage() as live:
            self.live = live
            self.bar = tqdm(
                total=t.epochs * self.n_batches,
                initial=min(t.epochs * self.n_batches, (self.state.epoch - 1) * self.n_batches + self.state.batch),
                desc="optimizing",
                unit="step",
                disable=not t.progress,
                dynamic_ncols=True,
            )
            try:
                if self.state.stage == "baseline":
                    self._baseline()
                while self.state.stage == "training":
                    self._epoch()
                if self.state.stage == "final":
                    self._final()
            finally:
                self.bar.close()
            self._save()
        return TrainResult(
            chain=t.chain,
            params=list(t.params),
            state=self.state,
            usage=self._usage(),
            eval_usage=merge_usage(self.base_eval, self.eval_usage),
            cost=self._cost(),
            wall_time_s=self.state.elapsed_s,
            checkpoint_path=t.checkpoint_path,
            config=t.config(),
        )

    def _evaluate(self, examples: list[Example], inputs: list[Any], what: str) -> EvalResult:
        self.bar.set_description(f"evaluating {what}")
        with track_usage() as usage:
            result = run_and_score(
                self.t.chain, self.t.metric, examples, inputs, grad=False,
                max_concurrency=self.t.max_concurrency, phase="eval",
            )
        self.eval_usage = merge_usage(self.eval_usage, usage)
        self.bar.set_description("optimizing")
        return result

    def _baseline(self) -> None:
        state = self.state
        record: dict[str, Any] = {"epoch": 0, "train_score": None, "val_score": None}
        if self.val is not None:
            val = self._evaluate(self.val, self.val_inputs, "validation set (before training)")
            if val.all_failed:
                raise TrainingError(f"the chain failed on every validation example: {val.first_error()}")
            state.current_val = state.best_val = val.score
            record["val_score"] = val.score
            record["val_errors"] = val.errors
        if self.t.evaluate_train:
            train = self._evaluate(self.train, self.train_inputs, "training set (before training)")
            if train.all_failed:
                raise TrainingError(f"the chain failed on every training example: {train.first_error()}")
            record["train_score"] = train.score
            record["train_errors"] = train.errors
        state.baseline = {"train": record["train_score"], "val": record["val_score"]}
        state.history["epochs"].append(record)
        state.stage = "training"
        self._postfix()
        self._save()

    def _epoch(self) -> None:
        state, t = self.state, self.t
        if state.epoch > t.epochs:
            state.stage = "final"
            return
        order = epoch_order(len(self.train), t.seed, state.epoch, t.shuffle)
        batches = [order[i : i + t.batch_size] for i in range(0, len(order), t.batch_size)]
        while state.batch < len(batches) and state.stopped is None:
            self._step(batches[state.batch])
            state.batch += 1
            state.steps_done += 1
            self.bar.update(1)
            self._postfix()
            self._check_stop()
            self._save()
        self._end_epoch()

    def _step(self, indices: list[int]) -> None:
        state, t = self.state, self.t
        examples = [self.train[i] for i in indices]
        inputs = [self.train_inputs[i] for i in indices]
        record: dict[str, Any] = {
            "step": state.steps_done + 1, "epoch": state.epoch, "batch": state.batch,
            "examples": indices,
        }
        state.history["steps"].append(record)
        t.optimizer.zero_grad()
        result = run_and_score(
            t.chain, t.metric, examples, inputs, grad=True, max_concurrency=t.max_concurrency,
            phase="train",
        )
        record.update(train_score=result.score, size=len(examples), errors=result.errors)
        if result.all_failed:
            return self._failed(record, f"the chain failed on every example: {result.first_error()}")
        roots = []
        for example, item in zip(examples, result.items):
            if item.error is not None or (t.skip_correct and item.score >= t.success_threshold):
                continue
            _check_trainable_output(item.prediction)
            roots.append((item.prediction, default_feedback(_as_result(item), example, t.metric, t.target_key)))
        record["feedback_items"] = len(roots)
        if not roots:
            record["decision"] = "no feedback: every item already correct" if not result.errors else "no feedback"
            self.failed_steps = 0
            return
        failures = run_sync(lambda: _abackward_each(roots))
        record["backward_errors"] = len(failures)
        if len(failures) == len(roots):
            t.optimizer.zero_grad()
            return self._failed(record, f"every backward pass failed: {failures[0]}")
        before = [p.data for p in t.params]
        try:
            t.optimizer.step()
        except Exception as exc:  # nothing was written (optimizers write only when all succeed)
            t.optimizer.zero_grad()
            return self._failed(record, f"the optimizer step failed: {describe_error(exc)}")
        finally:
            t.optimizer.zero_grad()
        report = t.optimizer.last_step
        record["params"] = [r.to_dict() for r in report] if report is not None else []
        self.failed_steps = 0
        if report is None or not report.any_updated:
            record["decision"] = "no update: every proposal was rejected or skipped"
            return
        self._gate(record, before)

    def _gate(self, record: dict[str, Any], before: list[Any]) -> None:
        state, t = self.state, self.t
        if self.val is None or t.gate == "off":
            record["decision"] = "accepted"
            if self.val is None:
                state.best_values = [p.data for p in t.params]
            return
        val = self._evaluate(self.val, self.val_inputs, "validation set")
        record["val_score"] = val.score
        record["val_errors"] = val.errors
        current = state.current_val if state.current_val is not None else -math.inf
        keep = val.score >= current if t.gate == "no_worse" else val.score > current
        if keep:
            record["decision"] = "accepted"
            state.current_val = val.score
            if state.best_val is None or val.score >= state.best_val:
                state.best_val = val.score
                state.best_values = [p.data for p in t.params]
        else:
            for p, value in zip(t.params, before):
                p.data = value
            record["decision"] = (
                f"rolled back: validation {val.score:.3f} {'<' if t.gate == 'no_worse' else '<='} "
                f"{current:.3f}"
            )

    def _failed(self, record: dict[str, Any], reason: str) -> None:
        record["decision"] = f"failed: {reason}"
        self.failed_steps += 1
        if self.failed_steps >= self.t.max_failed_steps:
            self.state.batch += 1  # this step is done (it failed); do not retry it on resume
            self.state.steps_done += 1
            self._save()
            raise TrainingError(
                f"{self.failed_steps} steps in a row failed; the last one: {reason}. The "
                "checkpoint was kept: fix the cause and resume"
            )

    def _end_epoch(self) -> None:
        state, t = self.state, self.t
        steps = [s for s in state.history["steps"] if s["epoch"] == state.epoch]
        sized = [(s["train_score"], s.get("size", 0)) for s in steps if s.get("train_score") is not None]
        total = sum(n for _, n in sized)
        previous_best = _last_best(state.history["epochs"])
        if self.val is not None and t.gate == "off":
            val = self._evaluate(self.val, self.val_inputs, "validation set")
            state.current_val = val.score
            if state.best_val is None or val.score > state.best_val:
                state.best_val = val.score
                state.best_values = [p.data for p in t.params]
        state.history["epochs"].append(
            {
                "epoch": state.epoch,
                "train_score": sum(s * n for s, n in sized) / total if total else None,
                "val_score": state.current_val,
                "best_val": state.best_val,
                "steps": len(steps),
                "accepted": sum(1 for s in steps if s.get("decision") == "accepted"),
                "rolled_back": sum(1 for s in steps if str(s.get("decision", "")).startswith("rolled back")),
            }
        )
        improved = state.best_val is not None and (previous_best is None or state.best_val > previous_best)
        state.stale_epochs = 0 if improved else state.stale_epochs + 1
        if t.patience is not None and self.val is not None and state.stale_epochs >= t.patience and state.stopped is None:
            state.stopped = f"early stopping: no better validation score for {state.stale_epochs} epoch(s)"
        state.epoch += 1
        state.batch = 0
        if state.stopped is not None or state.epoch > t.epochs:
            state.stage = "final"
        self._save()

    def _check_stop(self) -> None:
        state, t = self.state, self.t
        if t.target_score is not None and state.current_val is not None and state.current_val >= t.target_score:
            state.stopped = f"target score reached: validation {state.current_val:.3f} >= {t.target_score}"
            return
        usage = self._usage().total()
        if t.max_calls is not None and usage.calls >= t.max_calls:
            state.stopped = f"budget: {usage.calls} calls >= max_calls {t.max_calls}"
        elif t.max_tokens is not None and usage.input_tokens + usage.output_tokens >= t.max_tokens:
            tokens = usage.input_tokens + usage.output_tokens
            state.stopped = f"budget: {tokens} tokens >= max_tokens {t.max_tokens}"
        elif t.max_cost is not None and self._cost().total >= t.max_cost:
            state.stopped = f"budget: ${self._cost().total:.4f} >= max_cost ${t.max_cost}"

    def _final(self) -> None:
        state, t = self.state, self.t
        if self.val is not None:
            for p, value in zip(t.params, state.best_values):
                p.data = value
            state.current_val = state.best_val
        else:
            state.best_values = [p.data for p in t.params]
        final: dict[str, float | None] = {"val": state.best_val, "train": None}
        if t.evaluate_train:
            train = self._evaluate(self.train, self.train_inputs, "training set (after training)")
            final["train"] = train.score
            final["train_errors"] = train.errors
        state.final = final
        state.stage = "finished"
        self._postfix()
        self._save()

    def _postfix(self) -> None:
        state = self.state
        steps = state.history["steps"]
        last = steps[-1].get("train_score") if steps else state.baseline.get("train")
        usage = self._usage().total()
        self.bar.set_postfix(
            train=_fmt(last), val=_fmt(state.current_val), best=_fmt(state.best_val),
            calls=usage.calls, cost=f"${self._cost().total:.4f}", refresh=False,
        )


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


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The order of the ``n`` training examples in ``epoch``: a permutation drawn
    from ``(seed, epoch)``, the same on every run (so a resumed run sees the same
    minibatches).

    Example:
        >>> from afnio_langchain.train._trainer import epoch_order
        >>> epoch_order(5, seed=0, epoch=1) == epoch_order(5, seed=0, epoch=1)
        True
        >>> epoch_order(3, seed=0, epoch=1, shuffle=False)
        [0, 1, 2]
    """
    order = list(range(n))
    if shuffle:
        random.Random(f"afnio-epoch:{seed}:{epoch}").shuffle(order)
    return order


async def _abackward_each(roots: list[tuple[Variable, str]]) -> list[str]:
    """One backward pass per root, concurrently, so one failure loses only its item."""
    import asyncio

    outcomes = await asyncio.gather(
        *(run_backward([(root, feedback)]) for root, feedback in roots), return_exceptions=True
    )
    failures = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):
                raise outcome
            failures.append(describe_error(outcome))
    return failures


def _check_trainable_output(prediction: Any) -> None:
    if not isinstance(prediction, Variable):
        raise TrainingError(
            f"the chain returned a {type(prediction).__name__}, not a Variable: its output must "
            "come from a trainable step (ChatCompletionRunnable, or a chain from make_trainable) "
            "so that feedback can flow back to its prompts"
        )
    if not prediction.requires_grad or prediction.grad_fn is None:
        raise TrainingError(
            "the chain's output does not depend on any trainable Variable (requires_grad=True), "
            "so feedback cannot reach a prompt"
        )


def _as_result(item: Any) -> Any:
    return MetricResult(item.score, item.feedback)


def _portable_state_dict(optimizer: Optimizer) -> dict[str, Any]:
    """The optimizer's state dict without model-call options (which stay with the
    optimizer built for the resumed run and may hold credentials)."""
    state = optimizer.state_dict()
    for group in state.get("param_groups", []):
        for key in ("completion_args", "model_name"):
            group.pop(key, None)
    return state


def _digest(examples: Sequence[Example] | None) -> str:
    text = json.dumps(list(examples or []), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _last_best(epochs: list[dict[str, Any]]) -> float | None:
    for record in reversed(epochs):
        if record.get("epoch", 0) > 0 and record.get("best_val") is not None:
            return record["best_val"]
        if record.get("epoch") == 0:
            return record.get("val_score")
    return None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")



