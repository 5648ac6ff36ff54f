"""Training checkpoints: the whole state of a run as versioned JSON, written atomically
after every step and validated field by field when read back. No pickle; no secret
(API keys are never part of the state, and values of key variables are redacted)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from afnio_langchain.autodiff import Data, validate_data
from afnio_langchain.train._files import atomic_write_json

CHECKPOINT_FORMAT = "afnio_langchain.checkpoint"
CHECKPOINT_VERSION = 1
STAGES = ("baseline", "training", "final", "finished")
"""Where a run is: nothing evaluated yet; stepping; training done, final evaluation
pending; finished."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not belong to this run; says why."""


@dataclass
class TrainingState:
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

    fingerprint: dict[str, Any]
    roles: list[str]
    initial_values: list[Data]
    values: list[Data]
    best_values: list[Data]
    best_val: float | None = None
    current_val: float | None = None
    baseline: dict[str, float | None] = field(default_factory=dict)
    final: dict[str, float | None] = field(default_factory=dict)
    epoch: int = 1
    batch: int = 0
    steps_done: int = 0
    stage: str = "baseline"
    stale_epochs: int = 0
    history: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {"epochs": [], "steps": []}
    )
    optimizer: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {"total": [], "evaluation": []}
    )
    elapsed_s: float = 0.0
    sessions: int = 0
    stopped: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The state as a JSON-ready dict with format and version."""
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "checkpoint") -> TrainingState:
        """Validate and rebuild a state written by :meth:`to_dict`.

        Raises:
            CheckpointError: Wrong format or version, or a field of the wrong type.
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
        check = _Checker(source, data)
        roles = check.list_of("roles", str)
        n = len(roles)
        values = {
            name: check.values(name, n) for name in ("initial_values", "values", "best_values")
        }
        state = cls(
            fingerprint=check.mapping("fingerprint"),
            roles=roles,
            **values,
            best_val=check.score("best_val"),
            current_val=check.score("current_val"),
            baseline=check.scores("baseline"),
            final=check.scores("final"),
            epoch=check.integer("epoch", minimum=1),
            batch=check.integer("batch", minimum=0),
            steps_done=check.integer("steps_done", minimum=0),
            stage=check.choice("stage", STAGES),
            stale_epochs=check.integer("stale_epochs", minimum=0),
            history=check.history(),
            optimizer=check.mapping("optimizer"),
            usage=check.usage(),
            elapsed_s=check.number("elapsed_s"),
            sessions=check.integer("sessions", minimum=0),
            stopped=check.optional_str("stopped"),
            info=check.mapping("info"),
        )
        return state


class _Checker:
    def __init__(self, source: str, data: Mapping[str, Any]) -> None:
        self.source = source
        self.data = data

    def fail(self, key: str, expected: str) -> CheckpointError:
        return CheckpointError(f"{self.source}: field {key!r} must be {expected}")

    def get(self, key: str) -> Any:
        if key not in self.data:
            raise CheckpointError(f"{self.source}: field {key!r} is missing")
        return self.data[key]

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.get(key)
        if not isinstance(value, Mapping):
            raise self.fail(key, "an object")
        return dict(value)

    def list_of(self, key: str, kind: type) -> list[Any]:
        value = self.get(key)
        if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
            raise self.fail(key, f"a list of {kind.__name__}")
        return list(value)

    def values(self, key: str, n: int) -> list[Data]:
        value = self.get(key)
        if not isinstance(value, list) or len(value) != n:
            raise self.fail(key, f"a list of {n} parameter value(s)")
        try:
            return [validate_data(v) for v in value]
        except TypeError as exc:
            raise CheckpointError(f"{self.source}: field {key!r}: {exc}") from None

    def _is_number(self, value: Any) -> bool:
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
        )

    def number(self, key: str) -> float:
        value = self.get(key)
        if not self._is_number(value) or value < 0:
            raise self.fail(key, "a non-negative number")
        return float(value)

    def score(self, key: str) -> float | None:
        value = self.get(key)
        if value is not None and not self._is_number(value):
            raise self.fail(key, "a number or null")
        return None if value is None else float(value)

    def scores(self, key: str) -> dict[str, float | None]:
        value = self.mapping(key)
        for name, score in value.items():
            if score is not None and not self._is_number(score):
                raise self.fail(f"{key}.{name}", "a number or null")
        return value

    def integer(self, key: str, minimum: int) -> int:
        value = self.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.fail(key, f"an integer >= {minimum}")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.get(key)
        if value not in choices:
            raise self.fail(key, f"one of {', '.join(choices)}")
        return value

    def optional_str(self, key: str) -> str | None:
        value = self.get(key)
        if value is not None and not isinstance(value, str):
            raise self.fail(key, "a string or null")
        return value

    def history(self) -> dict[str, list[dict[str, Any]]]:
        value = self.mapping("history")
        out = {}
        for part in ("epochs", "steps"):
            records = value.get(part)
            if not isinstance(records, list) or not all(isinstance(r, Mapping) for r in records):
                raise self.fail(f"history.{part}", "a list of objects")
            out[part] = [dict(r) for r in records]
        return out

    def usage(self) -> dict[str, list[dict[str, Any]]]:
        from afnio_langchain.train._accounting import usage_from_pairs

        value = self.mapping("usage")
        out = {}
        for part in ("total", "evaluation"):
            rows = value.get(part)
            if not isinstance(rows, list):
                raise self.fail(f"usage.{part}", "a list of usage rows")
            try:
                usage_from_pairs(rows)
            except ValueError as exc:
                raise CheckpointError(f"{self.source}: usage.{part}: {exc}") from None
            out[part] = [dict(r) for r in rows]
        return out


def save_checkpoint(path: str | os.PathLike[str], state: TrainingState) -> Path:
    """Write ``state`` to ``path`` atomically (the folder is created if needed).

    Example:
        >>> import pathlib, tempfile
        >>> from afnio_langchain.train import TrainingState, load_checkpoint, save_checkpoint
        >>> state = TrainingState(fingerprint={}, roles=["system prompt"], initial_values=["Hi."],
        ...                       values=["Hello."], best_values=["Hello."])
        >>> path = save_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "checkpoint.json", state)
        >>> load_checkpoint(path).values
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


def check_resumable(state: TrainingState, fingerprint: Mapping[str, Any], source: str) -> None:
    """Check that ``state`` was saved by a run on the same parameters, data and
    minibatch settings.

    Raises:
        CheckpointError: Naming what differs.
    """
    differences = []
    for key in sorted(set(state.fingerprint) | set(fingerprint)):
        saved, now = state.fingerprint.get(key), fingerprint.get(key)
        if saved != now:
            differences.append(f"{key} (saved {_short(saved)}, now {_short(now)})")
    if differences:
        raise CheckpointError(
            f"{source} belongs to another run: {'; '.join(differences)}. Resume with the same "
            "chain, data and settings, or start afresh (delete it or use another folder)"
        )


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."
