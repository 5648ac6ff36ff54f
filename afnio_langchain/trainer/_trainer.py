"""afnio's ``Trainer`` (Lightning-style ``fit``/``validate``/``test`` over a
``cognitive.Module`` and DataLoaders), built on the package's one training step,
:func:`afnio_langchain.loop.training_step`.

An epoch draws the training minibatches from the loader; each one is one step of the
shared step: the agent's ``training_step`` runs the forward pass and the loss, the
loss's explanation is sent back through the graph (as ``explanation.backward()``
would), the agent's optimizer rewrites the parameters, and with a validation loader
the rewrite is kept only when the gate allows (``gate="off"``: every rewrite is kept,
afnio's loop). Usage and cost are counted with the package's trackers.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from afnio_langchain import tellurio
from afnio_langchain._serialization import load, save
from afnio_langchain.autodiff import Variable, describe_error, no_grad
from afnio_langchain.cognitive import Module
from afnio_langchain.loop import (
    FeedbackPolicy,
    GatePolicy,
    MetricResult,
    ScoredItem,
    Validation,
    training_step,
)
from afnio_langchain.models import concurrency_limit, track_usage
from afnio_langchain.train import estimate_cost

_STEP_NAMES = {"train": "training_step", "val": "validation_step", "test": "test_step"}
MAX_TRIES = 3
"""Tries of a training step whose forward pass failed, as afnio's Trainer makes."""


@dataclass
class _Step:
    """What one ``*_step`` call returned: its loss and its metrics (numbers)."""

    explanation: Variable
    score: float
    metrics: dict[str, float]


def _parse_step(output: Any, name: str) -> tuple[Variable, Variable, dict[str, Any]]:
    """``(score, explanation, metrics)`` from a step's ``(score, explanation)`` or
    ``{"loss": (score, explanation), ...}``."""
    metrics = dict(output) if isinstance(output, Mapping) else {"loss": output}
    loss = metrics.get("loss")
    if not (isinstance(loss, tuple) and len(loss) == 2):
        raise ValueError(
            f"{name}() must return a (score, explanation) tuple of Variables or a dict whose "
            f"'loss' is one, got {type(loss).__name__}"
        )
    score, explanation = loss
    if not (isinstance(score, Variable) and isinstance(explanation, Variable)):
        raise TypeError(f"{name}(): the loss must be two Variables, got {type(score).__name__} and {type(explanation).__name__}")
    return score, explanation, metrics


def _number(value: Any, name: str) -> float:
    value = value.data if isinstance(value, Variable) else value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric {name!r} must be a number (or a Variable holding one), got {value!r}")
    return float(value)


def _run_step(agent: Module, phase: str, batch: Any, index: int) -> _Step:
    agent.train(phase == "train")
    name = _STEP_NAMES[phase]
    _, explanation, metrics = _parse_step(getattr(agent, name)(batch, index), name)
    values = {key: _number(value[0] if key == "loss" else value, key) for key, value in metrics.items()}
    return _Step(explanation, values["loss"], values)


def _mean(records: list[_Step]) -> dict[str, float]:
    """The mean of every metric over the minibatches (``loss`` is the loss score)."""
    keys: dict[str, None] = {}
    for record in records:
        keys.update(dict.fromkeys(record.metrics))
    return {
        key: sum(r.metrics[key] for r in records if key in r.metrics)
        / sum(1 for r in records if key in r.metrics)
        for key in keys
    }


@dataclass(frozen=True)
class _LossFeedback(FeedbackPolicy):
    """The step's feedback policy for afnio's losses: every minibatch gets its loss's
    explanation as feedback, exactly what ``explanation.backward()`` sends (one text per
    item for a minibatch); the evaluator itself skips the items it scored correct."""

    skip_correct: bool = False

    def text(self, item: ScoredItem) -> Any:  # type: ignore[override]
        explanation = item.prediction
        return explanation.items() if explanation.is_batched else str(explanation.data)


def batch_size_of(batch: Any) -> int:
    """How many samples a DataLoader minibatch holds (dicts, tuples, Variables, lists).

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.trainer import batch_size_of
        >>> batch_size_of((Variable(["a", "b", "c"]), (Variable([1, 2, 3]),)))
        3
    """
    if isinstance(batch, Mapping):
        return batch_size_of(next(iter(batch.values()))) if batch else 0
    if isinstance(batch, tuple):
        return batch_size_of(batch[0]) if batch else 0
    if isinstance(batch, Variable):
        return len(batch.items())
    if isinstance(batch, list):
        return len(batch)
    return 1


class Trainer:
    """afnio's Trainer: trains a :class:`~afnio_langchain.cognitive.Module` that defines
    ``training_step``, ``configure_optimizers`` (and ``validation_step`` /
    ``test_step``), on DataLoaders, one :func:`~afnio_langchain.loop.training_step`
    per minibatch.

    Args:
        max_epochs: Passes over the training loader (default 10, as afnio's).
        enable_checkpointing: Write the agent's and optimizer's state (JSON, via
            :func:`afnio_langchain.save`) to ``<default_root_dir>/checkpoints`` after
            every epoch.
        enable_progress_bar: Show a progress bar of the steps.
        enable_agent_summary: Print the agent before training.
        default_root_dir: Where checkpoints go (default: the working directory).
        gate: The step's validation gate (:class:`~afnio_langchain.loop.GatePolicy`):
            ``"improve"`` (keep a rewrite only if the mean validation loss score rises),
            ``"no_worse"``, or ``"off"`` (keep every rewrite, as afnio does). Used
            when a validation loader is given.
        max_concurrency: Cap on model calls in flight.
        max_calls: Stop (after the current step) once this many model calls were made.
        max_cost: Stop once this many USD were spent (by ``prices``).
        prices: Model name -> (USD per 1M input, output tokens); default
            :data:`afnio_langchain.train.DEFAULT_PRICES`.

    Example:
        >>> import afnio_langchain as hf
        >>> import afnio_langchain.cognitive as cog
        >>> import afnio_langchain.cognitive.functional as F
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> from afnio_langchain.trainer import Trainer
        >>> from afnio_langchain.utils.data import DataLoader
        >>> model = ScriptedChatModel(
        ...     forward=lambda text: "4" if "digits" in text else "four",
        ...     feedback="Ask for digits.", optimizer="Answer with digits.")
        >>> hf.set_backward_model_client(model)
        >>> class Solver(cog.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.system = cog.Parameter("Answer.", role="system prompt")
        ...         self.chat = cog.ChatCompletion()
        ...     def training_step(self, batch, batch_idx):
        ...         question, answer = batch
        ...         messages = [{"role": "system", "content": [self.system]},
        ...                     {"role": "user", "content": [hf.Variable("{q}")]}]
        ...         prediction = self.chat(model, messages, inputs={"q": question})
        ...         loss = F.exact_match_evaluator(prediction, answer)
        ...         return {"loss": loss, "accuracy": loss[0].data / len(answer.data)}
        ...     def validation_step(self, batch, batch_idx):
        ...         return self.training_step(batch, batch_idx)
        ...     def configure_optimizers(self):
        ...         return hf.optim.TGD(self.parameters(), model_client=model, model="any")
        >>> data = [(hf.Variable("2+2?"), hf.Variable("4"))] * 2
        >>> trainer = Trainer(max_epochs=1, enable_checkpointing=False,
        ...                   enable_progress_bar=False, enable_agent_summary=False)
        >>> agent = Solver()
        >>> trainer.fit(agent, train_dataloaders=DataLoader(data, batch_size=2),
        ...             val_dataloaders=DataLoader(data, batch_size=2))
        >>> agent.system.data, trainer.steps[0].status, trainer.history[-1]["val_accuracy"]
        ('Answer with digits.', 'accepted', 1.0)
        >>> hf.set_backward_model(None)
    """

    def __init__(
        self,
        *,
        max_epochs: int | None = None,
        enable_checkpointing: bool = True,
        enable_progress_bar: bool = True,
        enable_agent_summary: bool = True,
        default_root_dir: str | os.PathLike[str] | None = None,
        gate: str = "improve",
        max_concurrency: int | None = None,
        max_calls: int | None = None,
        max_cost: float | None = None,
        prices: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        if max_epochs is not None and (not isinstance(max_epochs, int) or isinstance(max_epochs, bool) or max_epochs < 1):
            raise ValueError(f"max_epochs must be a positive int, got {max_epochs!r}")
        self.max_epochs = max_epochs or 10
        self.enable_checkpointing = enable_checkpointing
        self.enable_progress_bar = enable_progress_bar
        self.enable_agent_summary = enable_agent_summary
        self.default_root_dir = os.getcwd() if default_root_dir is None else os.fspath(default_root_dir)
        self.gate = GatePolicy(gate)
        self.max_concurrency = max_concurrency
        self.max_calls = max_calls
        self.max_cost = max_cost
        self.prices = prices
        self.total_cost = 0.0
        self.history: list[dict[str, Any]] = []
        self.steps: list[Any] = []
        self.stopped: str | None = None
        self.last_checkpoint: Path | None = None

    # -- fit -----------------------------------------------------------------------------
    def fit(
        self,
        agent: Module,
        train_dataloaders: Iterable[Any] | None = None,
        val_dataloaders: Iterable[Any] | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        llm_clients: Any = None,
        *,
        train_dataloader: Iterable[Any] | None = None,
        val_dataloader: Iterable[Any] | None = None,
    ) -> None:
        """Train ``agent`` (Lightning's ``train_dataloaders=``/``val_dataloaders=`` or
        afnio's singular names); ``ckpt_path`` resumes from a checkpoint this Trainer
        wrote.

        ``llm_clients`` is accepted for afnio code and not needed: every model call is
        counted (:attr:`total_cost`).

        Raises:
            TypeError: ``agent`` is not a Module, or a loader is not iterable.
            ValueError: No training loader.
            RuntimeError: A training step failed :data:`MAX_TRIES` times.
        """
        train_loader = train_dataloaders if train_dataloaders is not None else train_dataloader
        val_loader = val_dataloaders if val_dataloaders is not None else val_dataloader
        self._check(agent, train_loader, "train_dataloaders", required=True)
        self._check(agent, val_loader, "val_dataloaders", required=False)
        optimizer = agent.configure_optimizers()
        agent._optimizers = optimizer
        first_epoch = 1 if ckpt_path is None else self._resume(agent, optimizer, ckpt_path) + 1
        if self.enable_agent_summary:
            print(f"{agent!r}\n")
        self.stopped = None
        with self._session() as usage:
            current: float | None = None
            if val_loader is not None and self.gate.validates and first_epoch <= self.max_epochs:
                current = self._validate(agent, list(val_loader))[0].score  # the gate's baseline
            for epoch in range(first_epoch, self.max_epochs + 1):
                batches = list(train_loader)
                val_batches = list(val_loader) if val_loader is not None else None
                records, current = self._epoch(agent, optimizer, epoch, batches, val_batches, current, usage)
                summary: dict[str, Any] = {"epoch": epoch}
                summary.update({f"train_{k}": v for k, v in _mean(records).items()})
                if val_batches:
                    summary.update({f"val_{k}": v for k, v in self._validate(agent, val_batches)[1].items()})
                self.total_cost = estimate_cost(usage, self.prices).total
                summary["total_cost"] = self.total_cost
                self.history.append(summary)
                self._log(summary, epoch)
                if self.enable_checkpointing:
                    self._checkpoint(agent, optimizer, epoch)
                if self.stopped is not None:
                    break

    def _epoch(
        self, agent: Module, optimizer: Any, epoch: int, batches: list[Any], val_batches: list[Any] | None,
        current: float | None, usage: Any,
    ) -> tuple[list[_Step], float | None]:
        records: list[_Step] = []
        bar = tqdm(batches, desc=f"Epoch {epoch}/{self.max_epochs}", unit="step", disable=not self.enable_progress_bar)
        for index, batch in enumerate(bar):
            if agent.automatic_optimization:
                outcome, record = self._step(agent, optimizer, batch, index, val_batches, current)
                self.steps.append(outcome)
                if outcome.kept and outcome.validation is not None:
                    current = outcome.validation.score
            else:  # the agent's training_step does backward and step itself
                record = _run_step(agent, "train", batch, index)
            records.append(record)
            bar.set_postfix(loss=f"{record.score:g}", val="-" if current is None else f"{current:g}", refresh=False)
            if self._over_budget(usage):
                break
        bar.close()
        return records, current

    def _step(
        self, agent: Module, optimizer: Any, batch: Any, index: int, val_batches: list[Any] | None,
        current: float | None,
    ) -> tuple[Any, _Step]:
        """One shared training step on ``batch``, retried when its forward pass fails."""
        for attempt in range(1, MAX_TRIES + 1):
            taken: list[_Step] = []

            def minibatch(taken: list[_Step] = taken) -> list[ScoredItem]:  # called at once
                try:
                    record = _run_step(agent, "train", batch, index)
                except Exception as exc:  # retried below; the last failure is raised
                    return [ScoredItem(MetricResult(0.0), error=describe_error(exc))]
                taken.append(record)
                return [ScoredItem(MetricResult(record.score), record.explanation)]

            outcome = training_step(
                optimizer,
                minibatch,
                lambda item: [item.prediction],
                feedback=_LossFeedback(metric=type(agent).__name__),
                gate=self.gate,
                validate=(lambda: self._validate(agent, val_batches)[0]) if val_batches else None,
                current=current,
                max_concurrency=self.max_concurrency,
            )
            if taken:
                return outcome, taken[0]
            if attempt == MAX_TRIES:
                raise RuntimeError(f"training_step() failed after {MAX_TRIES} tries: {outcome.items[0].error}")
        raise AssertionError("unreachable")

    # -- validate / test -----------------------------------------------------------------
    def _validate(self, agent: Module, batches: list[Any], phase: str = "val") -> tuple[Validation, dict[str, float]]:
        """Run the agent's step of ``phase`` on every batch, without gradients: the mean
        loss score (the gate's figure) and the mean of every metric."""
        records, errors = [], []
        with no_grad():
            for index, batch in enumerate(batches):
                try:
                    records.append(_run_step(agent, phase, batch, index))
                except Exception as exc:  # a failed batch is counted, the others stand
                    errors.append(describe_error(exc))
        if not records:
            raise RuntimeError(f"{_STEP_NAMES[phase]}() failed on every batch: {errors[0] if errors else 'no batches'}")
        metrics = _mean(records)
        return Validation(metrics["loss"], errors=len(errors)), metrics

    def validate(self, agent: Module, val_dataloader: Iterable[Any] | None = None, llm_clients: Any = None, *, val_dataloaders: Iterable[Any] | None = None) -> dict[str, float]:
        """Run ``validation_step`` on every batch (no gradients) and return the mean of
        each metric, prefixed ``val_``."""
        return self._phase(agent, "val", val_dataloaders if val_dataloaders is not None else val_dataloader)

    def test(self, agent: Module, test_dataloader: Iterable[Any] | None = None, llm_clients: Any = None, *, dataloaders: Iterable[Any] | None = None) -> dict[str, float]:
        """Run ``test_step`` on every batch (no gradients) and return the mean of each
        metric, prefixed ``test_``."""
        return self._phase(agent, "test", dataloaders if dataloaders is not None else test_dataloader)

    def _phase(self, agent: Module, phase: str, loader: Iterable[Any] | None) -> dict[str, float]:
        if loader is None:
            raise ValueError(f"a {phase} dataloader must be provided")
        self._check(agent, loader, f"{phase} dataloader", required=True)
        with self._session() as usage:
            metrics = {f"{phase}_{k}": v for k, v in self._validate(agent, list(loader), phase)[1].items()}
        self.total_cost += estimate_cost(usage, self.prices).total
        self._log(metrics, None)
        return metrics

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _check(agent: Any, loader: Any, name: str, *, required: bool) -> None:
        if not isinstance(agent, Module):
            raise TypeError(f"Expected agent to be an afnio_langchain.cognitive.Module, got {type(agent).__name__}")
        if loader is None:
            if required:
                raise ValueError(f"{name} must be provided")
            return
        if not isinstance(loader, Iterable):
            raise TypeError(f"{name} must be a DataLoader or an iterable, got {type(loader).__name__}")

    @contextlib.contextmanager
    def _session(self) -> Iterator[Any]:
        with contextlib.ExitStack() as stack:
            if self.max_concurrency is not None:
                stack.enter_context(concurrency_limit(self.max_concurrency))
            yield stack.enter_context(track_usage())

    def _over_budget(self, usage: Any) -> bool:
        calls = usage.total().calls
        if self.max_calls is not None and calls >= self.max_calls:
            self.stopped = f"budget: {calls} calls >= max_calls {self.max_calls}"
        elif self.max_cost is not None and (cost := estimate_cost(usage, self.prices).total) >= self.max_cost:
            self.stopped = f"budget: ${cost:.4f} >= max_cost ${self.max_cost}"
        return self.stopped is not None

    def _checkpoint(self, agent: Module, optimizer: Any, epoch: int) -> None:
        folder = Path(self.default_root_dir) / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"checkpoint_epoch{epoch}_{time.strftime('%Y%m%d-%H%M%S')}.json"
        state = optimizer.state_dict()
        for group in state.get("param_groups", []):  # request options stay with the code
            group.pop("completion_args", None)
        save({"epoch": epoch, "agent_state_dict": agent.state_dict(), "optimizer_state_dict": state}, path)
        self.last_checkpoint = path

    @staticmethod
    def _resume(agent: Module, optimizer: Any, ckpt_path: str | os.PathLike[str]) -> int:
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"no checkpoint at {ckpt_path}")
        checkpoint = load(ckpt_path)
        agent.load_state_dict(checkpoint["agent_state_dict"])
        state = checkpoint["optimizer_state_dict"]
        own = optimizer.state_dict()
        for group, mine in zip(state.get("param_groups", []), own.get("param_groups", [])):
            group.setdefault("completion_args", mine.get("completion_args", {}))
        optimizer.load_state_dict(state)
        return int(checkpoint["epoch"])

    @staticmethod
    def _log(metrics: Mapping[str, Any], step: int | None) -> None:
        if tellurio.get_active_run() is None:
            return
        for name, value in metrics.items():
            if name != "epoch":
                tellurio.log(name, value, step=step)
