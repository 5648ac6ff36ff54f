"""One call of ``Trainer.fit``: the baseline, the epochs of minibatch steps, stopping
(patience, target score, call/token/cost budgets) and the final evaluation.

Each step is the package's one validation-gated step
(:func:`afnio_langchain.loop.training_step`): the chain runs on the minibatch with
grad, every failed item's feedback goes back through its own graph, the optimizer
rewrites the parameters, and the gate keeps the rewrite only when the validation
score says so (else the parameters roll back). The run's state is checkpointed after
every step (:mod:`afnio_langchain.train._run_state`), so an interrupted run resumes
with no completed step lost.

The loop runs in the caller's thread (model calls run concurrently on the package's
event loop), so Ctrl-C stops it at once and leaves the last checkpoint.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from afnio_langchain.autodiff import Variable, describe_error
from afnio_langchain.loop import (
    Example,
    FeedbackPolicy,
    GatePolicy,
    MetricResult,
    ScoredItem,
    StepOutcome,
    Validation,
    expected_text,
    metric_name,
    training_step,
)
from afnio_langchain.models import UsageTracker, is_unrecoverable, track_usage
from afnio_langchain.train._accounting import (
    CostReport,
    estimate_cost,
    merge_usage,
    spent_budget,
    usage_from_pairs,
)
from afnio_langchain.train._checkpoint import TrainingState
from afnio_langchain.train._evaluation import EvalResult, chain_inputs, run_and_score
from afnio_langchain.train._run_state import (
    budget_stop,
    save_spend,
    save_state,
    start_state,
    steps_left,
)

if TYPE_CHECKING:
    from afnio_langchain.train._trainer import Trainer


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


class TrainingRun:
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
        self.state = start_state(trainer, train, val)
        self.state.sessions += 1
        self.base_usage = usage_from_pairs(self.state.usage["total"])
        self.base_eval = usage_from_pairs(self.state.usage["evaluation"])
        self.eval_usage = UsageTracker()
        self.live: UsageTracker | None = None
        self.session_start = time.monotonic()
        self.base_elapsed = self.state.elapsed_s
        self.failed_steps = 0
        self.feedback = FeedbackPolicy(
            metric_name(trainer.metric), trainer.skip_correct, trainer.success_threshold
        )
        self.gate = GatePolicy(trainer.gate)
        self.bar: Any = None

    # -- bookkeeping -------------------------------------------------------------------
    def _usage(self) -> UsageTracker:
        return merge_usage(self.base_usage, self.live or UsageTracker())

    def _cost(self) -> CostReport:
        return estimate_cost(self._usage(), self.t.prices)

    def _eval_usage_total(self) -> UsageTracker:
        return merge_usage(self.base_eval, self.eval_usage)

    def _elapsed(self) -> float:
        """Wall time of the whole run so far, this session included."""
        return self.base_elapsed + (time.monotonic() - self.session_start)

    def _save(self) -> None:
        save_state(
            self.state,
            self.t,
            usage=self._usage(),
            eval_usage=self._eval_usage_total(),
            elapsed_s=self._elapsed(),
        )

    def _save_spend(self) -> None:
        """On the way out of an interrupted or failed session: its spend, into the last
        checkpoint (never masking why the session ended)."""
        try:
            save_spend(
                self.t,
                usage=self._usage(),
                eval_usage=self._eval_usage_total(),
                elapsed_s=self._elapsed(),
                sessions=self.state.sessions,
            )
        except Exception:  # noqa: BLE001 - the session's own error is the one to report
            pass

    # -- the loop ----------------------------------------------------------------------
    def execute(self) -> TrainResult:
        t = self.t
        with t._limits(), track_usage() as live:
            self.live = live
            total = t.epochs * self.n_batches
            self.bar = tqdm(
                total=total,
                initial=min(total, (self.state.epoch - 1) * self.n_batches + self.state.batch),
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
            except BaseException:
                self._save_spend()
                raise
            finally:
                self.bar.close()
            self._save()
        return TrainResult(
            chain=t.chain,
            params=list(t.params),
            state=self.state,
            usage=self._usage(),
            eval_usage=self._eval_usage_total(),
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
                raise TrainingError(_all_failed(val, "validation", self.t.metric))
            state.current_val = state.best_val = val.score
            record["val_score"] = val.score
            record["val_errors"] = val.errors
            record["val_error_examples"] = _first_errors(val)
        if self.t.evaluate_train:
            train = self._evaluate(self.train, self.train_inputs, "training set (before training)")
            if train.all_failed:
                raise TrainingError(_all_failed(train, "training", self.t.metric))
            record["train_score"] = train.score
            record["train_errors"] = train.errors
            record["train_error_examples"] = _first_errors(train)
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
        self._end_epoch(partial=state.batch < len(batches) and state.stopped_by_budget)

    def _step(self, indices: list[int]) -> None:
        state, t = self.state, self.t
        examples = [self.train[i] for i in indices]
        inputs = [self.train_inputs[i] for i in indices]
        record: dict[str, Any] = {
            "step": state.steps_done + 1, "epoch": state.epoch, "batch": state.batch,
            "examples": indices,
        }
        state.history["steps"].append(record)
        validated: list[EvalResult] = []

        def minibatch() -> list[ScoredItem]:
            result = run_and_score(
                t.chain, t.metric, examples, inputs, grad=True,
                max_concurrency=t.max_concurrency, phase="train",
            )
            record["error_examples"] = _first_errors(result, indices)
            return [
                ScoredItem(
                    MetricResult(item.score, item.feedback),
                    item.prediction,
                    expected=expected_text(example, t.target_key),
                    error=item.error,
                )
                for example, item in zip(examples, result.items)
            ]

        def validate() -> Validation:
            val = self._evaluate(self.val, self.val_inputs, "validation set")
            validated.append(val)
            return Validation(val.score, val.errors)

        try:
            outcome = training_step(
                t.optimizer,
                minibatch,
                lambda item: _trainable_outputs(item.prediction),
                feedback=self.feedback,
                gate=self.gate,
                validate=validate if self.val is not None else None,
                current=state.current_val,
            )
        except Exception as exc:
            if not is_unrecoverable(exc):
                raise
            raise TrainingError(
                f"a model the step needs cannot be used: {describe_error(exc)}; no retry or "
                "later step can fix this: check its API key, its name and your access to it"
            ) from exc
        self._record(record, outcome, validated[0] if validated else None)

    def _record(self, record: dict[str, Any], outcome: StepOutcome, val: EvalResult | None) -> None:
        state, t = self.state, self.t
        record.update(train_score=outcome.train_score, size=len(outcome.items), errors=outcome.errors)
        record["feedback_items"] = outcome.feedback_items
        if outcome.feedback_items:
            record["backward_errors"] = outcome.backward_errors
        if outcome.report is not None:
            record["params"] = [r.to_dict() for r in outcome.report]
        if val is not None:
            record["val_score"] = val.score
            record["val_errors"] = val.errors
            record["val_error_examples"] = _first_errors(val)
        record["decision"] = outcome.decision
        if outcome.failed:
            return self._failed(outcome.decision.removeprefix("failed: "))
        self.failed_steps = 0
        if outcome.kept and self.val is None:
            state.best_values = [p.data for p in t.params]
        elif outcome.kept and val is not None:
            state.current_val = val.score
            if state.best_val is None or val.score >= state.best_val:
                state.best_val = val.score
                state.best_values = [p.data for p in t.params]

    def _failed(self, reason: str) -> None:
        self.failed_steps += 1
        if self.failed_steps >= self.t.max_failed_steps:
            self.state.batch += 1  # this step is done (it failed); do not retry it on resume
            self.state.steps_done += 1
            self._save()
            kept = (
                "The checkpoint was kept: fix the cause and resume"
                if self.t.checkpoint_path is not None
                else "Fix the cause and run again (pass checkpoint_path= to resume instead)"
            )
            raise TrainingError(
                f"{self.failed_steps} steps in a row failed; the last one: {reason}. {kept}"
            )

    def _end_epoch(self, partial: bool = False) -> None:
        """Record the epoch and move to the next. A ``partial`` epoch (a budget stopped
        it) is recorded but keeps its position, so that a resumed run with a larger
        budget runs its remaining steps; its record is then replaced by the whole one."""
        state, t = self.state, self.t
        if state.history["epochs"] and state.history["epochs"][-1].get("epoch") == state.epoch:
            state.history["epochs"].pop()  # this epoch's record up to a budget stop
        steps = [s for s in state.history["steps"] if s["epoch"] == state.epoch]
        sized = [(s["train_score"], s.get("size", 0)) for s in steps if s.get("train_score") is not None]
        total = sum(n for _, n in sized)
        previous_best = _last_best(state.history["epochs"])
        if self.val is not None and not self.gate.validates:
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
        if partial:
            state.stage = "final"
            self._save()
            return
        improved = state.best_val is not None and (previous_best is None or state.best_val > previous_best)
        state.stale_epochs = 0 if improved else state.stale_epochs + 1
        patient = state.stopped is None or state.stopped_by_budget  # a larger budget must not outlast patience
        if t.patience is not None and self.val is not None and state.stale_epochs >= t.patience and patient:
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
        left = steps_left(state, t, len(self.train))
        if left <= 0:
            return  # a budget reached on the last step stopped nothing
        spent = spent_budget(
            self._usage(), t.prices, max_calls=t.max_calls, max_tokens=t.max_tokens, max_cost=t.max_cost
        )
        if spent is not None:
            state.stopped = budget_stop(spent, left)

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
            # The checkpoint's "final" holds numbers only; the examples go with the epochs.
            state.history["epochs"][-1]["final_train_error_examples"] = _first_errors(train)
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


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The order of the ``n`` training examples in ``epoch``: a permutation drawn
    from ``(seed, epoch)``, the same on every run (so a resumed run sees the same
    minibatches).

    Example:
        >>> from afnio_langchain.train._run import epoch_order
        >>> epoch_order(5, seed=0, epoch=1) == epoch_order(5, seed=0, epoch=1)
        True
        >>> epoch_order(3, seed=0, epoch=1, shuffle=False)
        [0, 1, 2]
    """
    order = list(range(n))
    if shuffle:
        random.Random(f"afnio-epoch:{seed}:{epoch}").shuffle(order)
    return order


def _trainable_outputs(prediction: Any) -> list[Variable]:
    """The chain's output Variables that feedback flows back from: the output itself, or
    every field of a dict output (a JSON parser's, structured output's), each getting
    the item's feedback (:class:`~afnio_langchain.autodiff.ParseJson` sends one text
    given to several fields back once)."""
    if isinstance(prediction, dict):
        found = [v for v in prediction.values() if isinstance(v, Variable)]
        if not found:
            raise TrainingError(
                f"the chain returned a dict with no Variable in it (keys: "
                f"{', '.join(map(repr, prediction)) or 'none'}): its values must come from a "
                "trainable step (a JSON parser after a ChatCompletionRunnable, or a chain from "
                "make_trainable) so that feedback can flow back to its prompts"
            )
        outputs = [v for v in found if v.requires_grad and v.grad_fn is not None]
        if not outputs:
            raise TrainingError(_NOT_TRAINABLE)
        return outputs
    if not isinstance(prediction, Variable):
        raise TrainingError(
            f"the chain returned a {type(prediction).__name__}, not a Variable: its output must "
            "come from a trainable step (ChatCompletionRunnable, or a chain from make_trainable) "
            "so that feedback can flow back to its prompts"
        )
    if not prediction.requires_grad or prediction.grad_fn is None:
        raise TrainingError(_NOT_TRAINABLE)
    return [prediction]


_NOT_TRAINABLE = (
    "the chain's output does not depend on any trainable Variable (requires_grad=True), "
    "so feedback cannot reach a prompt"
)


ERRORS_KEPT = 5
"""Per-example errors kept in each history record (index and message)."""


def _first_errors(result: EvalResult, indices: list[int] | None = None) -> list[dict[str, Any]]:
    """The first :data:`ERRORS_KEPT` failed examples: their index (in the training or
    validation set) and the error."""
    failed = [(i, item.error) for i, item in enumerate(result.items) if item.error is not None]
    return [
        {"index": indices[i] if indices is not None else i, "error": error}
        for i, error in failed[:ERRORS_KEPT]
    ]


def _all_failed(result: EvalResult, what: str, metric: Any) -> str:
    """Why every example of a set failed: the metric when it was the metric."""
    first = result.first_error() or ""
    if all((item.error or "").startswith("metric") for item in result.items):
        return (
            f"the metric {metric_name(metric)} failed on every {what} example: "
            f"{first.split(': ', 1)[-1]}"
        )
    return f"the chain failed on every {what} example: {first}"


def _last_best(epochs: list[dict[str, Any]]) -> float | None:
    for record in reversed(epochs):
        if record.get("epoch", 0) > 0 and record.get("best_val") is not None:
            return record["best_val"]
        if record.get("epoch") == 0:
            return record.get("val_score")
    return None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
