"""A training run's checkpointed state: started fresh or resumed from the checkpoint
file, and written back after every step (through :mod:`afnio_langchain.train._checkpoint`).

A resumed run must be the same run: the fingerprint (the parameters' roles, hashes of
the data, batch size, seed and shuffling) is checked against the saved one, the
optimizer's state and the parameters' values are restored, and a finished run asked
for more epochs, or one a budget stopped given a larger budget, goes on training.
Without ``resume``, an existing checkpoint is never overwritten.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afnio_langchain.loop import Example, metric_name
from afnio_langchain.models import UsageTracker
from afnio_langchain.optim import Optimizer
from afnio_langchain.train._accounting import spent_budget, usage_from_pairs, usage_pairs
from afnio_langchain.train._checkpoint import (
    CheckpointError,
    TrainingState,
    check_resumable,
    data_digest,
    load_checkpoint,
    save_checkpoint,
)
from afnio_langchain.train._text import clipped

if TYPE_CHECKING:
    from afnio_langchain.train._trainer import Trainer


def run_fingerprint(
    trainer: Trainer, train: Sequence[Example], val: Sequence[Example] | None
) -> dict[str, Any]:
    """What identifies a run: a resumed run must match it."""
    return {
        "params": [p.role for p in trainer.params],
        "train": data_digest(train),
        "val": data_digest(val) if val is not None else None,
        "batch_size": trainer.batch_size,
        "seed": trainer.seed,
        "shuffle": trainer.shuffle,
        "metric": metric_name(trainer.metric),  # scores of two metrics do not compare
    }


def start_state(
    trainer: Trainer, train: Sequence[Example], val: Sequence[Example] | None
) -> TrainingState:
    """The state a run starts from: the checkpoint's (with ``resume`` and an existing
    checkpoint; the parameters and the optimizer are restored from it), else a fresh one.

    Raises:
        CheckpointError: The checkpoint belongs to another run, is malformed, or holds
            an optimizer state that does not fit; or it exists and ``resume`` is off
            (an earlier run's prompts and spend are never overwritten).
    """
    fingerprint = run_fingerprint(trainer, train, val)
    path = trainer.checkpoint_path
    if path is not None and path.exists() and not trainer.resume:
        raise CheckpointError(_occupied(path))
    if trainer.resume and path is not None and path.exists():
        state = load_checkpoint(path)
        check_resumable(state, fingerprint, str(path))
        _check_seeds(state, trainer, path)
        try:
            trainer.optimizer.load_state_dict(state.optimizer)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: the optimizer state does not fit: {exc}") from None
        for p, value in zip(trainer.params, state.values):
            p.data = value
        if state.stage == "finished" and state.epoch <= trainer.epochs and state.stopped is None:
            _reopen(state)  # more epochs were asked for than were run
        elif state.stopped_by_budget and state.stage in ("final", "finished"):
            _resume_budget_stop(state, trainer, steps_left(state, trainer, len(train)))
        return state
    values = [p.data for p in trainer.params]
    return TrainingState(
        fingerprint=fingerprint,
        roles=[p.role for p in trainer.params],
        initial_values=list(values),
        values=list(values),
        best_values=list(values),
        info=trainer.config(),
    )


def _check_seeds(state: TrainingState, trainer: Trainer, path: Path) -> None:
    """Refuse a resume that would discard an edit: a parameter whose text now is none
    of the checkpoint's run's texts for it (its seed, its last value, its best), as
    when the prompt in the chain was changed between the two sessions. A run resumed in
    the process that ran it holds one of them."""
    known = zip(state.initial_values, state.values, state.best_values)  # one per role
    for i, (p, (seed, last, best)) in enumerate(zip(trainer.params, known)):
        if p.data in (seed, last, best):
            continue
        raise CheckpointError(
            f"{path}: parameter {i} ({p.role!r}) is now {clipped(str(p.data), 60)!r}, but the "
            f"run in this checkpoint started from {clipped(str(seed), 60)!r}; resuming would "
            "replace the new text with the checkpoint's. To train the new text, start afresh "
            "(delete the checkpoint or use another folder); to continue the checkpoint's run, "
            "restore the text it started from"
        )


def _occupied(path: Path) -> str:
    """Why a run without ``resume`` refuses the existing file at its checkpoint path."""
    start_over = "use another checkpoint_path, or delete the file, to start afresh"
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        return f"{exc}; a new run does not overwrite it: {start_over}"
    larger = " with a larger max_calls, max_tokens or max_cost" if state.stopped_by_budget else ""
    return (
        f"{path} already holds the checkpoint of {state.describe()}; pass resume=True"
        f"{larger} to continue it, or {start_over}"
    )


def steps_left(state: TrainingState, trainer: Trainer, n_train: int) -> int:
    """The steps of the run's ``trainer.epochs`` not yet done, from ``state``'s position."""
    n_batches = math.ceil(n_train / trainer.batch_size)
    return trainer.epochs * n_batches - ((state.epoch - 1) * n_batches + state.batch)


def budget_stop(spent: tuple[str, str], steps: int) -> str:
    """The stop reason of a run whose budget ``spent`` (from ``spent_budget``) is used up
    with ``steps`` steps left: what was spent, and how to go on."""
    option, reason = spent
    return (
        f"{reason}; the budget is spent with {steps} step(s) left: resume with a larger "
        f"{option} to run them"
    )


def _resume_budget_stop(state: TrainingState, trainer: Trainer, steps: int) -> None:
    """A run a budget stopped trains on, from where it stopped, when the resumed run's
    budgets (counting what was already paid) have some left; else it stays stopped,
    and its reason says which budget is spent."""
    if steps <= 0:
        return
    spent = spent_budget(
        usage_from_pairs(state.usage["total"]), trainer.prices,
        max_calls=trainer.max_calls, max_tokens=trainer.max_tokens, max_cost=trainer.max_cost,
    )
    if spent is not None:
        state.stopped = budget_stop(spent, steps)
        return
    _reopen(state)


def _reopen(state: TrainingState) -> None:
    """Back to training a run that had stopped; its final evaluation is redone at the end."""
    state.stopped = None
    state.stage = "training"
    if state.history["epochs"]:
        state.history["epochs"][-1].pop("final_train_error_examples", None)


def save_state(
    state: TrainingState,
    trainer: Trainer,
    *,
    usage: UsageTracker,
    eval_usage: UsageTracker,
    elapsed_s: float,
) -> Path | None:
    """Record the parameters, the optimizer, the usage and the time in ``state``, and
    write it to the trainer's checkpoint (if it has one)."""
    state.values = [p.data for p in trainer.params]
    state.optimizer = portable_state_dict(trainer.optimizer)
    state.usage = _usage_record(usage, eval_usage)
    state.elapsed_s = elapsed_s
    if trainer.checkpoint_path is None:
        return None
    return save_checkpoint(trainer.checkpoint_path, state)


def save_spend(
    trainer: Trainer,
    *,
    usage: UsageTracker,
    eval_usage: UsageTracker,
    elapsed_s: float,
    sessions: int,
) -> None:
    """Write what a session spent (calls, tokens, time) into the run's last checkpoint,
    its progress left as that checkpoint has it: an interrupted step is redone on
    resume, but the calls it made were paid for and count towards the budgets."""
    path = trainer.checkpoint_path
    if path is None or not Path(path).exists():
        return
    state = load_checkpoint(path)
    state.usage = _usage_record(usage, eval_usage)
    state.elapsed_s = elapsed_s
    state.sessions = sessions
    save_checkpoint(path, state)


def _usage_record(usage: UsageTracker, eval_usage: UsageTracker) -> dict[str, Any]:
    """The usage a checkpoint holds: the whole run's, and the evaluations' share."""
    return {"total": usage_pairs(usage), "evaluation": usage_pairs(eval_usage)}


def portable_state_dict(optimizer: Optimizer) -> dict[str, Any]:
    """The optimizer's state dict without model-call options (which stay with the
    optimizer built for the resumed run and may hold credentials)."""
    state = optimizer.state_dict()
    for group in state.get("param_groups", []):
        for key in ("completion_args", "model_name"):
            group.pop(key, None)
    return state
