"""The steps the commands share: reading data, checking names and folders before anything
runs, building the models and the chain, and running the training with its interrupts."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afnio_langchain.cli._parser import PROG
from afnio_langchain.train import (
    ChainLoadError,
    CheckpointError,
    Dataset,
    MetricScoreError,
    ModelPool,
    Trainer,
    TrainingError,
    TrainResult,
    chain_input_fields,
    check_prices,
    import_object,
    load_chain,
    load_checkpoint,
    load_dataset,
    model_parameter,
    parse_model_spec,
    require_key,
    resolve_metric,
    write_report,
)

CHECKPOINT = "checkpoint.json"
DEMO_OUT = Path("afnio-demo")
RUN_FILES = (CHECKPOINT, "report.json", "summary.md", "prompts.json", "score_curve.png")
JUDGE_NAMES = ("judge", "lm_judge")


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class RunInterrupted(Exception):
    """Ctrl-C during training; what was saved has been printed. Exit status 130."""


def scripted_model() -> Any:
    """The ``--model scripted`` fake: canned forward answers, feedback and proposals."""
    from afnio_langchain.testing import ScriptedChatModel

    return ScriptedChatModel(
        forward="I think the answer is this one.",
        feedback="The answer should be exactly the expected label, with no other words.",
        optimizer="Reply with the label only: one word, no explanation.",
        judge='{"score": 5, "feedback": "Reply with the label only."}',
    )


def model_pool() -> ModelPool:
    """The run's models; the local server starts only once every check has passed."""
    return ModelPool(scripted=scripted_model, defer_start=True)


# -- data, metric, models --------------------------------------------------------------


def load_data(path: Path, args: argparse.Namespace) -> tuple[Dataset, str, list[str] | None]:
    """The dataset, its target key and the chain's input keys, checked row by row."""
    data = load_dataset(path)
    target = data.target_key(args.target_key)
    inputs = [k.strip() for k in args.input_keys.split(",") if k.strip()] if args.input_keys else None
    data.require([*(inputs or []), target])
    return data, target, inputs


def check_metric(args: argparse.Namespace, judge_model: str | None) -> None:
    """An unknown or unusable metric name fails here, before any model starts."""
    if args.metric in JUDGE_NAMES:
        if judge_model is None:
            raise CliError("--metric judge needs --model or --judge-model")
        return
    build_metric(args, None, None)


def build_metric(args: argparse.Namespace, target: str | None, judge: Any) -> Any:
    try:
        return resolve_metric(args.metric, target_key=target, judge_model=judge, criteria=args.criteria)
    except ChainLoadError as exc:
        raise CliError(f"--metric {args.metric}: {exc}") from None
    except (ValueError, TypeError, ImportError, AttributeError) as exc:
        raise CliError(f"--metric: {exc}") from None


def check_keys(specs: dict[str, str | None]) -> None:
    for text in specs.values():
        if text is not None:
            require_key(parse_model_spec(text))


def roles(args: argparse.Namespace) -> dict[str, str | None]:
    return {
        "forward": args.forward_model,
        "backward": args.backward_model or args.model,
        "optimizer": args.optimizer_model or args.model,
        "judge": args.judge_model or args.model,
    }


def prices(path: Path | None) -> dict[str, tuple[float, float]] | None:
    if path is None:
        return None
    try:
        return check_prices(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as exc:
        raise CliError(f"--prices {path}: {exc}") from None


@dataclass
class Target:
    """What ``--chain`` names: the object, and whether it is a factory to call."""

    spec: str
    obj: Any

    @property
    def is_factory(self) -> bool:
        from langchain_core.runnables import Runnable

        return callable(self.obj) and not isinstance(self.obj, Runnable)

    @property
    def takes_model(self) -> bool:
        """A factory that takes the chat model (``model``, or its one required
        parameter); one without builds its own model."""
        return self.is_factory and model_parameter(self.obj) is not None


def import_chain(spec: str) -> Target:
    """Import ``--chain`` (without calling a factory)."""
    return Target(spec, import_object(spec))


def build_chain(target: Target, pool: ModelPool, forward: str | None) -> Any:
    """The chain: a factory is called with the forward model's LangChain chat model."""
    model = pool.chat_model(forward) if forward is not None and target.is_factory else None
    if forward is not None and not target.is_factory:
        raise ChainLoadError(
            f"{target.spec} is a ready-made chain, so its model is already chosen: "
            "--forward-model is only for a chain factory (a function taking the model)"
        )
    return load_chain(target.obj, model)


def check_rows(chain: Any, datasets: Sequence[Dataset | None], target: str, inputs: list[str] | None) -> None:
    """Every row gives the chain its template fields (checked before any model call)."""
    fields = chain_input_fields(chain)
    if not fields:
        return
    for data in datasets:
        if data is not None:
            data.require_chain_fields(fields, input_keys=inputs, target_key=target)


def start_models(pool: ModelPool) -> None:
    if pool.needs_start:
        print("starting the local model (SmolLM2-135M-Instruct via llama.cpp)...", flush=True)
        pool.start()


# -- the output folder -----------------------------------------------------------------


@dataclass
class OutFolder:
    """The run folder and what is in it: whether to resume, and the time spent so far."""

    path: Path
    resume: bool
    elapsed_before: float = 0.0


def prepare_out(out: Path, args: argparse.Namespace, *, overwrite_finished: bool) -> OutFolder:
    """Decide what to do with the run in ``out``, before anything runs."""
    checkpoint = out / CHECKPOINT
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file, not a folder")
    if args.resume and not checkpoint.exists():
        where = "does not exist" if not out.exists() else f"holds no {CHECKPOINT}"
        raise CliError(f"--resume: {out} {where}, so there is no run to resume; drop --resume to start one")
    if not checkpoint.exists() or args.restart:
        return OutFolder(out, resume=False)
    try:
        state = load_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise CliError(f"{exc}; pass --restart to discard it") from None
    if args.resume:
        return OutFolder(out, resume=True, elapsed_before=state.elapsed_s)
    if state.stage == "finished" and overwrite_finished:
        return OutFolder(out, resume=False)
    if state.stopped_by_budget:
        raise CliError(
            f"{out} holds {state.describe()}; pass --resume with a larger --max-calls, "
            "--max-tokens or --max-cost to continue it, or --restart to start afresh"
        )
    if state.stage == "finished":
        raise CliError(
            f"{out} already holds {state.describe()}; pass --restart to overwrite it, or choose another --out"
        )
    raise CliError(
        f"{out} holds {state.describe()}; pass --resume to continue it or --restart to start afresh"
    )


def make_trainer(
    args: argparse.Namespace, chain: Any, metric: Any, models: dict[str, Any], target: str,
    inputs: list[str] | None, price_table: Any, folder: OutFolder, *, info: dict[str, Any],
    params: Any = None, evaluate_train: bool = True,
) -> Trainer:
    """The run's :class:`Trainer`, with what ``fit`` would find out only after paid
    calls (no backward model) checked now."""
    try:
        trainer = Trainer(
            chain, metric,
            optimizer_model=models["optimizer"], backward_model=models["backward"], params=params,
            momentum=args.momentum, constraints=args.constraint, epochs=args.epochs,
            batch_size=args.batch_size, seed=args.seed, gate=args.gate, patience=args.patience,
            evaluate_train=evaluate_train, input_keys=inputs, target_key=target,
            checkpoint_path=folder.path / CHECKPOINT, resume=folder.resume,
            max_concurrency=args.max_concurrency, max_calls=args.max_calls, max_tokens=args.max_tokens,
            max_cost=args.max_cost, prices=price_table, progress=not args.no_progress, info=info,
        )
    except (TypeError, ValueError) as exc:
        raise CliError(str(exc)) from None
    try:
        trainer.check_setup()
    except TrainingError as exc:
        raise CliError(str(exc)) from None
    return trainer


def train(trainer: Trainer, train_set: Any, val_set: Any, folder: OutFolder, argv: Sequence[str], pool: ModelPool) -> TrainResult:
    """Create the folder and run :meth:`Trainer.fit`; Ctrl-C prints what was saved and
    how to resume; a dead local server is reported as such."""
    out = folder.path
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if not folder.resume:
        _clear_run(out)
    try:
        result = trainer.fit(train_set, val_set)
        pool.check_alive()  # a server that died during the last evaluation is no result
        return result
    except KeyboardInterrupt:
        checkpoint = out / CHECKPOINT
        if checkpoint.exists():
            state = load_checkpoint(checkpoint)
            print(
                f"\nInterrupted. {state.steps_done} completed step(s) are saved in {checkpoint}.\n"
                f"Resume with: {resume_command(argv)} --resume",
                file=sys.stderr,
            )
        else:
            print("\nInterrupted before the first checkpoint; nothing was written.", file=sys.stderr)
            _remove_if_empty(out, created)
        raise RunInterrupted() from None
    except (TrainingError, CheckpointError, MetricScoreError):
        pool.check_alive()
        if not (out / CHECKPOINT).exists():
            _remove_if_empty(out, created)
        raise


def report(result: TrainResult, out: Path, argv: Sequence[str]) -> Any:
    """Write the run's report; Ctrl-C meanwhile says the run is saved and how to write
    the report again (a resume of a finished run only writes its report)."""
    try:
        return write_report(result, out)
    except KeyboardInterrupt:
        print(
            f"\nInterrupted while writing the report. The finished run is saved in "
            f"{out / CHECKPOINT}.\nWrite the report with: {resume_command(argv)} --resume",
            file=sys.stderr,
        )
        raise RunInterrupted() from None


def _clear_run(out: Path) -> None:
    for name in (*RUN_FILES, "chain.json"):  # chain.json: written by earlier versions
        try:
            (out / name).unlink()
        except FileNotFoundError:
            pass


def _remove_if_empty(out: Path, created: bool) -> None:
    """Remove the folder this run created when it holds nothing but the run's lock
    (``checkpoint.json.lock``, the file ``train.run_lock`` holds)."""
    lock = f"{CHECKPOINT}.lock"
    if created and out.is_dir() and all(p.name == lock for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)


def resume_command(argv: Sequence[str]) -> str:
    words = [PROG, *[a for a in argv if a not in ("--resume", "--restart")]]
    return " ".join(words)
