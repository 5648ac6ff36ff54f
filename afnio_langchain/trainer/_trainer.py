"""afnio's ``Trainer`` (Lightning-style ``fit``/``validate``/``test`` over a
``cognitive.Module`` and DataLoaders), built on the package's own training loop,
:func:`afnio_langchain.train.fit`.

An epoch draws the training minibatches from the loader and hands them to
``train.fit`` as its examples, one minibatch per step: each step runs the agent's
``training_step`` (forward and loss), sends the loss's explanation back through the
graph, lets the agent's optimizer rewrite the parameters and, with a validation
loader, measures ``validation_step`` on it and keeps the rewrite only when the gate
allows (``gate="off"``: every rewrite is kept, as in afnio). Progress, usage, cost,
budgets and failure handling are ``train.fit``'s.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableLambda

from afnio_langchain import tellurio
from afnio_langchain._aio import run_in_thread
from afnio_langchain._serialization import load, save
from afnio_langchain.autodiff import Variable
from afnio_langchain.cognitive import Module
from afnio_langchain.loop import MetricResult
from afnio_langchain.train import TrainResult, evaluate, fit

_PHASES = ("train", "val", "test")
_STEP_NAMES = {"train": "training_step", "val": "validation_step", "test": "test_step"}


@dataclass
class _Step:
    """What one ``*_step`` call returned: its loss score and its metrics."""

    score: float
    metrics: dict[str, Any]


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


def _text(explanation: Variable) -> str:
    return "\n".join(str(t) for t in explanation.items() if str(t))


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
    ``test_step``), on DataLoaders, with the package's validation-gated training loop.

    Args:
        max_epochs: Passes over the training loader (default 10, as afnio's).
        enable_checkpointing: Write the agent's and optimizer's state (JSON, via
            :func:`afnio_langchain.save`) to ``<default_root_dir>/checkpoints`` after
            every epoch.
        enable_progress_bar: Show the training loop's progress bar.
        enable_agent_summary: Print the agent before training.
        default_root_dir: Where checkpoints go (default: the working directory).
        gate: ``train.fit``'s validation gate: ``"improve"`` (keep a rewrite only if the
            validation loss score rises), ``"no_worse"``, or ``"off"`` (keep every
            rewrite, as afnio does). Used when a validation loader is given.
        max_concurrency: Cap on model calls in flight.
        max_calls, max_cost: Stop once this many model calls / USD were spent.

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
        >>> agent.system.data, trainer.history[-1]["val_accuracy"]
        ('Answer with digits.', 1.0)
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
    ) -> None:
        if max_epochs is not None and (not isinstance(max_epochs, int) or isinstance(max_epochs, bool) or max_epochs < 1):
            raise ValueError(f"max_epochs must be a positive int, got {max_epochs!r}")
        self.max_epochs = max_epochs or 10
        self.enable_checkpointing = enable_checkpointing
        self.enable_progress_bar = enable_progress_bar
        self.enable_agent_summary = enable_agent_summary
        self.default_root_dir = os.getcwd() if default_root_dir is None else os.fspath(default_root_dir)
        self.gate = gate
        self.max_concurrency = max_concurrency
        self.max_calls = max_calls
        self.max_cost = max_cost
        self.total_cost = 0.0
        self.history: list[dict[str, Any]] = []
        self.results: list[TrainResult] = []
        self.last_checkpoint: Path | None = None

    # -- the agent as a chain ------------------------------------------------------------
    def _chain(self, agent: Module, batches: dict[str, list[Any]], records: dict[str, list[_Step]]) -> Any:
        """A Runnable running the agent's step on ``{"phase": ..., "index": i}``; the loss
        explanation is its output, and the step's score and metrics are kept for the
        metric below (by output Variable) and for the epoch's report."""
        outputs: weakref.WeakKeyDictionary[Variable, _Step] = weakref.WeakKeyDictionary()

        def step(example: Mapping[str, Any]) -> Variable:
            phase, index = example["phase"], example["index"]
            agent.train(phase == "train")
            name = _STEP_NAMES[phase]
            score, explanation, metrics = _parse_step(getattr(agent, name)(batches[phase][index], index), name)
            values = {key: _number(value[0] if key == "loss" else value, key) for key, value in metrics.items()}
            record = _Step(score=values["loss"], metrics=values)
            records[phase].append(record)
            outputs[explanation] = record
            return explanation

        async def astep(example: Mapping[str, Any]) -> Variable:
            return await run_in_thread(step, example)

        def metric(example: Mapping[str, Any], prediction: Variable) -> MetricResult:
            record = outputs[prediction]
            return MetricResult(record.score, _text(prediction) or None)

        return RunnableLambda(step, afunc=astep, name=type(agent).__name__), metric

    def _examples(self, phase: str, n: int) -> list[dict[str, Any]]:
        return [{"phase": phase, "index": i} for i in range(n)]

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
        afnio's singular names).

        ``llm_clients`` is accepted for afnio code and not needed: usage and cost are
        counted for every model call (:attr:`total_cost`, :attr:`results`).

        Raises:
            TypeError: ``agent`` is not a Module, or a loader is not iterable.
            ValueError: No training loader.
            afnio_langchain.train.TrainingError: Steps keep failing.
        """
        train_loader = train_dataloaders if train_dataloaders is not None else train_dataloader
        val_loader = val_dataloaders if val_dataloaders is not None else val_dataloader
        if not isinstance(agent, Module):
            raise TypeError(f"Expected agent to be an afnio_langchain.cognitive.Module, got {type(agent).__name__}")
        if train_loader is None:
            raise ValueError("train_dataloaders must be provided")
        for name, loader in (("train_dataloaders", train_loader), ("val_dataloaders", val_loader)):
            if loader is not None and not isinstance(loader, Iterable):
                raise TypeError(f"{name} must be a DataLoader or an iterable, got {type(loader).__name__}")
        optimizer = agent.configure_optimizers()
        agent._optimizers = optimizer
        first_epoch = 1
        if ckpt_path is not None:
            first_epoch = self._resume(agent, optimizer, ckpt_path) + 1
        if self.enable_agent_summary:
            print(f"{agent!r}\n")
        val_batches = list(val_loader) if val_loader is not None else None
        for epoch in range(first_epoch, self.max_epochs + 1):
            if self.enable_progress_bar:
                print(f"Epoch {epoch}/{self.max_epochs}")
            batches = {"train": list(train_loader), "val": val_batches or []}
            records: dict[str, list[_Step]] = {phase: [] for phase in _PHASES}
            if agent.automatic_optimization:
                self._fit_epoch(agent, optimizer, batches, records)
            else:  # the agent's training_step does backward and step itself
                for index, batch in enumerate(batches["train"]):
                    agent.train()
                    records["train"].append(self._manual_step(agent, batch, index))
            summary: dict[str, Any] = {"epoch": epoch}
            summary.update({f"train_{k}": v for k, v in _mean(records["train"]).items()})
            if val_batches:
                summary.update({f"val_{k}": v for k, v in self._evaluate(agent, "val", val_batches).items()})
            summary["total_cost"] = self.total_cost
            self.history.append(summary)
            self._log(summary, epoch)
            if self.enable_checkpointing:
                self._checkpoint(agent, optimizer, epoch)

    def _fit_epoch(self, agent: Module, optimizer: Any, batches: dict[str, list[Any]], records: dict[str, list[_Step]]) -> None:
        chain, metric = self._chain(agent, batches, records)
        result = fit(
            chain,
            self._examples("train", len(batches["train"])),
            # gate "off": afnio's loop, every rewrite kept (train.fit would restore the
            # best values it measured); validation is then only the epoch's report.
            self._examples("val", len(batches["val"])) if batches["val"] and self.gate != "off" else None,
            metric=metric,
            optimizer=optimizer,
            epochs=1,
            batch_size=1,
            shuffle=False,
            gate=self.gate,
            skip_correct=False,  # the evaluator skips the items it scored correct itself
            evaluate_train=False,
            input_fn=dict,
            progress=self.enable_progress_bar,
            max_concurrency=self.max_concurrency,
            max_calls=self.max_calls,
            max_cost=self.max_cost,
        )
        self.results.append(result)
        self.total_cost += result.cost.total

    def _manual_step(self, agent: Module, batch: Any, index: int) -> _Step:
        _, _, metrics = _parse_step(agent.training_step(batch, index), "training_step")
        values = {key: _number(value[0] if key == "loss" else value, key) for key, value in metrics.items()}
        return _Step(values["loss"], values)

    # -- validate / test -----------------------------------------------------------------
    def _evaluate(self, agent: Module, phase: str, batches: list[Any]) -> dict[str, float]:
        records: dict[str, list[_Step]] = {p: [] for p in _PHASES}
        chain, metric = self._chain(agent, {phase: batches}, records)
        result = evaluate(chain, self._examples(phase, len(batches)), metric, input_fn=dict, max_concurrency=self.max_concurrency)
        if result.all_failed:
            raise RuntimeError(f"{_STEP_NAMES[phase]}() failed on every batch: {result.first_error()}")
        return _mean(records[phase])

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
        if not isinstance(agent, Module):
            raise TypeError(f"Expected agent to be an afnio_langchain.cognitive.Module, got {type(agent).__name__}")
        metrics = {f"{phase}_{k}": v for k, v in self._evaluate(agent, phase, list(loader)).items()}
        self._log(metrics, None)
        return metrics

    # -- checkpoints and logging ---------------------------------------------------------
    def _checkpoint(self, agent: Module, optimizer: Any, epoch: int) -> None:
        folder = Path(self.default_root_dir) / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"checkpoint_epoch{epoch}_{time.strftime('%Y%m%d-%H%M%S')}.json"
        save(
            {"epoch": epoch, "agent_state_dict": agent.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
            path,
        )
        self.last_checkpoint = path

    def _resume(self, agent: Module, optimizer: Any, ckpt_path: str | os.PathLike[str]) -> int:
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"no checkpoint at {ckpt_path}")
        checkpoint = load(ckpt_path)
        agent.load_state_dict(checkpoint["agent_state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        return int(checkpoint["epoch"])

    def _log(self, metrics: Mapping[str, Any], step: int | None) -> None:
        if tellurio.get_active_run() is None:
            return
        for name, value in metrics.items():
            if name != "epoch":
                tellurio.log(name, value, step=step)
