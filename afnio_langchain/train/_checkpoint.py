"""Training checkpoints: the whole state of a run as versioned JSON, written atomically
after every step and validated against a pydantic schema when read back. No pickle;
no secret (API keys are never part of the state, and values of key variables are
redacted).

A checkpoint is data: parameter values, progress, scores, history, usage, the
optimizer's per-parameter state. It never holds configuration a resumed run would
take from it: request options, headers, constraints and limits come from the resumed
run's own code and flags.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from typing_extensions import Required, TypedDict

from afnio_langchain.autodiff import Data, validate_data
from afnio_langchain.train._accounting import BUDGET_STOP
from afnio_langchain.train._files import LockHeldError, atomic_write_json, exclusive_lock
from afnio_langchain.train._text import clipped

CHECKPOINT_FORMAT = "afnio_langchain.checkpoint"
CHECKPOINT_VERSION = 1
STAGES = ("baseline", "training", "final", "finished")
"""Where a run is: nothing evaluated yet; stepping; training done, final evaluation
pending; finished."""

Stage = Literal["baseline", "training", "final", "finished"]
Count = Annotated[int, Field(ge=0)]
Score = Annotated[float, Field(allow_inf_nan=False)]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not belong to this run; says why."""


class History(TypedDict):
    """A run's records: one per epoch (epoch 0: before training) and one per step."""

    epochs: list[dict[str, Any]]
    steps: list[dict[str, Any]]


class UsageRow(TypedDict, total=False):
    """Usage of one (model, purpose) pair (see ``train._accounting.usage_pairs``)."""

    model: Required[str]
    purpose: Required[str]
    calls: Count
    input_tokens: Count
    output_tokens: Count
    retries: Count
    failures: Count
    cut_off: Count


class SavedUsage(TypedDict):
    total: list[UsageRow]
    evaluation: list[UsageRow]


class TrainingState(BaseModel):
    """Everything a run needs to continue exactly where it stopped.

    Attributes:
        fingerprint: What the run was started on (parameter roles, hashes of the
            data, batch size, seed, shuffling); a resumed run must match it.
        roles: The parameters' roles, in order.
        initial_values: The parameters' values before training.
        values: Their current values.
        best_values: The values with the best validation score so far.
        best_val: That score (None without a validation set).
        current_val: The validation score of ``values`` (None if not measured).
        baseline: Scores before training: ``{"train": ..., "val": ...}``.
        final: Scores after training (set in the final stage).
        epoch: The current epoch, from 1.
        batch: The next minibatch of the current epoch, from 0.
        steps_done: Completed steps over the whole run.
        stage: One of :data:`STAGES`.
        stale_epochs: Epochs in a row without a better validation score.
        history: ``{"epochs": [...], "steps": [...]}`` records.
        optimizer: The optimizer's JSON state dict.
        usage: ``{"total": [...], "evaluation": [...]}`` usage rows.
        elapsed_s: Wall time spent so far, over all sessions.
        sessions: How many times :meth:`~afnio_langchain.train.Trainer.fit` ran on it.
        stopped: Why training ended early (None if it did not).
        info: Free-form run description (model specs, metric name...).

    Example:
        >>> import tempfile
        >>> from afnio_langchain import ChatCompletionRunnable, Variable
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> from afnio_langchain.train import exact_match, fit
        >>> from afnio_langchain.train import load_checkpoint
        >>> model = ScriptedChatModel(forward="four", feedback="Ask for digits.", optimizer="Use digits.")
        >>> system = Variable("Answer the question.", role="system prompt", requires_grad=True)
        >>> chain = ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{q}")])
        >>> data = [{"q": "2+2?", "answer": "4"}]
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = fit(chain, data, metric=exact_match, optimizer_model=model, backward_model=model,
        ...             progress=False, checkpoint_path=f"{folder}/run.json")
        ...     state = load_checkpoint(f"{folder}/run.json")  # a TrainingState
        >>> state.stage, state.steps_done, state.roles, state.initial_values, state.values
        ('finished', 1, ['system prompt'], ['Answer the question.'], ['Use digits.'])
    """

    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=False)

    fingerprint: dict[str, Any]
    roles: list[str]
    initial_values: list[Any]
    values: list[Any]
    best_values: list[Any]
    best_val: Score | None = None
    current_val: Score | None = None
    baseline: dict[str, int | Score | None] = Field(default_factory=dict)
    final: dict[str, int | Score | None] = Field(default_factory=dict)
    epoch: int = Field(default=1, ge=1)
    batch: Count = 0
    steps_done: Count = 0
    stage: Stage = "baseline"
    stale_epochs: Count = 0
    history: History = Field(default_factory=lambda: {"epochs": [], "steps": []})
    optimizer: dict[str, Any] = Field(default_factory=dict)
    usage: SavedUsage = Field(default_factory=lambda: {"total": [], "evaluation": []})
    elapsed_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    sessions: Count = 0
    stopped: str | None = None
    info: dict[str, Any] = Field(default_factory=dict)

    @field_validator("initial_values", "values", "best_values")
    @classmethod
    def _are_data(cls, values: list[Any]) -> list[Data]:
        try:
            return [validate_data(v) for v in values]
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _one_value_per_parameter(self) -> TrainingState:
        n = len(self.roles)
        for name in ("initial_values", "values", "best_values"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name!r} must be a list of {n} parameter value(s)")
        return self

    @property
    def stopped_by_budget(self) -> bool:
        """Whether a budget (``max_calls``, ``max_tokens``, ``max_cost``) stopped the
        run before its last step; resumed with a larger budget, it goes on."""
        return self.stopped is not None and self.stopped.startswith(BUDGET_STOP)

    def describe(self) -> str:
        """The run, for messages about it: how far it went and what it paid.

        Example:
            >>> from afnio_langchain.train import TrainingState
            >>> state = TrainingState(fingerprint={}, roles=["system prompt"], initial_values=["a"],
            ...                       values=["b"], best_values=["b"], best_val=0.75,
            ...                       stage="finished", steps_done=4)
            >>> state.describe()
            'a finished run (4 step(s) done, best validation score 0.750, 0 model call(s) paid)'
        """
        if self.stopped_by_budget:
            run = "a run stopped by its budget"
        else:
            run = "a finished run" if self.stage == "finished" else "an interrupted run"
        best = f", best validation score {self.best_val:.3f}" if self.best_val is not None else ""
        calls = sum(row.get("calls", 0) for row in self.usage["total"])
        return f"{run} ({self.steps_done} step(s) done{best}, {calls} model call(s) paid)"

    def to_dict(self) -> dict[str, Any]:
        """The state as a JSON-ready dict with format and version."""
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **self.model_dump()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "checkpoint") -> TrainingState:
        """Validate and rebuild a state written by :meth:`to_dict`.

        Raises:
            CheckpointError: Wrong format or version, or a field of the wrong type;
                the message names the field.
        """
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{source}: expected a JSON object")
        if data.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{source}: not an afnio-langchain training checkpoint")
        if data.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{source}: checkpoint version {data.get('version')!r} is not supported "
                f"(this version reads version {CHECKPOINT_VERSION})"
            )
        fields = {k: v for k, v in data.items() if k not in ("format", "version")}
        missing = [name for name in cls.model_fields if name not in fields]
        if missing:
            raise CheckpointError(f"{source}: field {missing[0]!r} is missing")
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise CheckpointError(f"{source}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    """The first problem pydantic found: ``field 'history.steps.3': message``."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    return f"field {where!r}: {message}" if where else message


def save_checkpoint(path: str | os.PathLike[str], state: TrainingState) -> Path:
    """Write ``state`` to ``path`` atomically (the folder is created if needed).

    Example:
        >>> import pathlib, tempfile
        >>> from afnio_langchain.train import TrainingState, load_checkpoint, save_checkpoint
        >>> state = TrainingState(fingerprint={}, roles=["system prompt"], initial_values=["Hi."],
        ...                       values=["Hello."], best_values=["Hello."])
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = save_checkpoint(pathlib.Path(folder) / "checkpoint.json", state)
        ...     load_checkpoint(path).values
        ['Hello.']
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(target, state.to_dict())


def load_checkpoint(path: str | os.PathLike[str]) -> TrainingState:
    """Read and validate a checkpoint.

    Raises:
        CheckpointError: The file is not valid JSON, not a checkpoint, of another
            version, or has a malformed field.
        FileNotFoundError: There is no file.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CheckpointError(f"{source}: cannot read: {exc}") from None
    except UnicodeDecodeError as exc:
        raise CheckpointError(
            f"{source}: not a JSON text file (byte {exc.start} is not UTF-8)"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{source}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    return TrainingState.from_dict(data, source)


LOCK_SUFFIX = ".lock"


@contextlib.contextmanager
def run_lock(checkpoint: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the run that owns ``checkpoint`` for the block: a second run (another
    process) on the same checkpoint refuses at once instead of both writing it.

    The lock is the file ``<checkpoint>.lock``, held with an OS lock that is released
    when the process ends in any way, so a killed run never blocks its own resume.
    Re-entrant within one process.

    Raises:
        CheckpointError: Another run holds it; says which process.

    Example:
        >>> import pathlib, tempfile
        >>> from afnio_langchain.train import run_lock
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     with run_lock(pathlib.Path(folder) / "checkpoint.json"):
        ...         pass  # train here: another process resuming this run is refused
    """
    path = Path(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(path.with_name(path.name + LOCK_SUFFIX)))
        except LockHeldError as exc:
            raise CheckpointError(
                f"{path.parent} is in use by another run ({exc.holder or 'unknown process'}); "
                "wait for it to finish or stop it, or use another folder"
            ) from None
        yield


def data_digest(examples: Sequence[Any] | None) -> str:
    """A short, stable digest of a dataset (for the run's fingerprint). Any text is
    data here: lone surrogates and NUL characters are hashed as they are.

    Example:
        >>> from afnio_langchain.train._checkpoint import data_digest
        >>> odd = [{"q": "caf" + chr(0xDCE9) + chr(0)}]  # a lone surrogate and a NUL
        >>> data_digest(odd) == data_digest(odd) != data_digest([{"q": "cafe"}])
        True
    """
    text = json.dumps(list(examples or []), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def check_resumable(state: TrainingState, fingerprint: Mapping[str, Any], source: str) -> None:
    """Check that ``state`` was saved by a run on the same parameters, data and
    minibatch settings.

    Raises:
        CheckpointError: Naming what differs.
    """
    differences = []
    for key in sorted(state.fingerprint):  # a key newer than the checkpoint is not checked
        saved, now = state.fingerprint.get(key), fingerprint.get(key)
        if saved != now:
            differences.append(f"{key} (saved {_short(saved)}, now {_short(now)})")
    if differences:
        raise CheckpointError(
            f"{source} belongs to another run: {'; '.join(differences)}. Resume with the same "
            "chain, data and settings, or start afresh (delete it or use another folder)"
        )


def _short(value: Any) -> str:
    return clipped(json.dumps(value, ensure_ascii=False), 80)
