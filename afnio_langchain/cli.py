"""The ``afnio-langchain`` command line (also ``python -m afnio_langchain``).

- ``optimize``: train the prompts of a chain on a dataset with a metric, writing a
  checkpoint after every step and a report at the end.
- ``evaluate``: score a chain (optionally with trained prompts) on a dataset.
- ``demo``: optimize the system prompt of a small shipped pipeline on a shipped
  dataset, with the local model by default (offline).

Every check that can fail (arguments, data rows, keys, servers, the chain) runs
before anything is written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from afnio_langchain.train import (
    GATES,
    PLOT_PNG,
    PROMPTS_JSON,
    REPORT_JSON,
    SUMMARY_MD,
    ChainLoadError,
    CheckpointError,
    Dataset,
    DatasetError,
    ModelPool,
    ModelSpecError,
    Trainer,
    TrainingError,
    TrainResult,
    apply_prompts,
    check_prices,
    import_object,
    load_chain,
    load_checkpoint,
    load_dataset,
    parse_model_spec,
    require_key,
    resolve_metric,
    split_dataset,
    trainable_chain,
    write_report,
)

PROG = "afnio-langchain"
CHECKPOINT = "checkpoint.json"
RUN_FILES = (CHECKPOINT, REPORT_JSON, SUMMARY_MD, PROMPTS_JSON, PLOT_PNG, "chain.json")
MODEL_HELP = "openai:NAME, openai-compatible:NAME@URL, local, or scripted (an offline fake)"


def scripted_model() -> Any:
    """The ``--model scripted`` fake: canned forward answers, feedback and proposals."""
    from afnio_langchain.testing import ScriptedChatModel

    return ScriptedChatModel(
        forward="I think the answer is this one.",
        feedback="The answer should be exactly the expected label, with no other words.",
        optimizer="Reply with the label only: one word, no explanation.",
        judge='{"score": 5, "feedback": "Reply with the label only."}',
    )


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


# -- arguments ---------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value}")
    return value


def _model_spec(text: str) -> str:
    try:
        parse_model_spec(text)
    except ModelSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_training_options(
    p: argparse.ArgumentParser, *, epochs: int, batch_size: int, gate: str = "no_worse"
) -> None:
    p.add_argument("--epochs", type=_positive, default=epochs, help=f"passes over the training set (default {epochs})")
    p.add_argument("--batch-size", type=_positive, default=batch_size, help=f"examples per step (default {batch_size})")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    p.add_argument("--gate", choices=GATES, default=gate,
                   help=f"keep a step only if validation does not drop (no_worse), only if it rises (improve), or always (off); default {gate}")
    p.add_argument("--patience", type=_positive, help="stop after this many epochs without a better validation score")
    p.add_argument("--momentum", type=int, default=0, help="TGD momentum: earlier prompt versions shown to the optimizer (default 0)")
    p.add_argument("--constraint", action="append", default=[], metavar="TEXT", help="a rule every new prompt must follow (repeatable)")
    p.add_argument("--max-concurrency", type=_positive, help="cap on model calls in flight")
    p.add_argument("--max-calls", type=_positive, help="stop after this many model calls")
    p.add_argument("--max-tokens", type=_positive, help="stop after this many tokens (input + output)")
    p.add_argument("--max-cost", type=float, help="stop after this many USD (by the price table)")
    p.add_argument("--prices", type=Path, help='JSON price table: {"model": [USD per 1M input, per 1M output tokens]}')
    p.add_argument("--out", type=Path, required=False, help="output folder (checkpoint and report)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    group.add_argument("--restart", action="store_true", help="discard the run in --out and start afresh")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``afnio-langchain``."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train the prompts of LangChain chains with textual gradients."
    )
    from afnio_langchain import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{optimize,evaluate,demo}")
    sub.required = True

    opt = sub.add_parser("optimize", help="train the prompts of a chain on a dataset")
    opt.add_argument("--chain", required=True, help="module:attribute (or file.py:attribute): a chain, or a function returning one")
    opt.add_argument("--train", required=True, type=Path, help="training examples (.jsonl or .csv)")
    val = opt.add_mutually_exclusive_group()
    val.add_argument("--val", type=Path, help="validation examples (.jsonl or .csv)")
    val.add_argument("--val-fraction", type=_fraction, help="split this fraction of --train off as validation")
    _add_data_options(opt)
    _add_model_options(opt, default=None)
    _add_training_options(opt, epochs=2, batch_size=4)
    opt.add_argument("--no-eval-train", action="store_true", help="do not score the whole training set before and after")

    ev = sub.add_parser("evaluate", help="score a chain on a dataset")
    ev.add_argument("--chain", required=True, help="module:attribute (or file.py:attribute)")
    ev.add_argument("--data", required=True, type=Path, help="examples (.jsonl or .csv)")
    _add_data_options(ev)
    _add_model_options(ev, default=None)
    ev.add_argument("--prompts", type=Path, help="prompts.json written by optimize, loaded into the chain first")
    ev.add_argument("--max-concurrency", type=_positive, help="cap on model calls in flight")
    ev.add_argument("--out", type=Path, help="write the per-example results to this JSON file")

    demo = sub.add_parser("demo", help="optimize a small shipped pipeline offline (local model by default)")
    demo.add_argument("--model", type=_model_spec, default="local", help=f"{MODEL_HELP} (default local)")
    _add_training_options(demo, epochs=2, batch_size=3, gate="improve")
    return parser


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", required=True, help="exact_match, contains, judge, or module:function")
    p.add_argument("--criteria", help="what a good output is (for --metric judge)")
    p.add_argument("--target-key", help="the example key holding the expected output (default: answer, target, label, expected or output)")
    p.add_argument("--input-keys", help="comma-separated example keys given to the chain (default: all but the target)")


def _add_model_options(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--model", type=_model_spec, default=default, help=f"default model for every role: {MODEL_HELP}")
    for role, what in (
        ("forward", "the chain's model (only for a chain factory taking model=)"),
        ("backward", "the model writing feedback"),
        ("optimizer", "the model rewriting prompts"),
        ("judge", "the model of --metric judge"),
    ):
        p.add_argument(f"--{role}-model", type=_model_spec, help=what)


# -- shared steps --------------------------------------------------------------------------


def _load_data(path: Path, args: argparse.Namespace) -> tuple[Dataset, str, list[str] | None]:
    data = load_dataset(path)
    target = data.target_key(args.target_key)
    inputs = [k.strip() for k in args.input_keys.split(",") if k.strip()] if args.input_keys else None
    data.require([*(inputs or []), target])
    return data, target, inputs


def _check_keys(specs: dict[str, str | None]) -> None:
    for text in specs.values():
        if text is not None:
            require_key(parse_model_spec(text))


def _prepare_out(out: Path, args: argparse.Namespace, *, overwrite_finished: bool) -> bool:
    """Decide what to do with an existing run in ``out``; return whether to resume."""
    checkpoint = out / CHECKPOINT
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file, not a folder")
    if not checkpoint.exists():
        return False
    if args.restart:
        return False
    try:
        state = load_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise CliError(f"{exc}; pass --restart to discard it") from None
    if args.resume:
        return True
    if state.stage == "finished":
        if overwrite_finished:
            return False
        raise CliError(
            f"{out} already holds a finished run; pass --restart to overwrite it, or choose another --out"
        )
    raise CliError(
        f"{out} holds an interrupted run ({state.steps_done} step(s) done); pass --resume to "
        "continue it or --restart to start afresh"
    )


def _clear_run(out: Path) -> None:
    for name in RUN_FILES:
        try:
            (out / name).unlink()
        except FileNotFoundError:
            pass


def _prices(path: Path | None) -> dict[str, tuple[float, float]] | None:
    if path is None:
        return None
    try:
        return check_prices(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as exc:
        raise CliError(f"--prices {path}: {exc}") from None


def _train(
    trainer: Trainer, train: Any, val: Any, out: Path, resume_command: str, created: bool
) -> TrainResult:
    try:
        return trainer.fit(train, val)
    except KeyboardInterrupt:
        checkpoint = out / CHECKPOINT
        if checkpoint.exists():
            state = load_checkpoint(checkpoint)
            print(
                f"\nInterrupted. {state.steps_done} completed step(s) are saved in {checkpoint}.\n"
                f"Resume with: {resume_command} --resume",
                file=sys.stderr,
            )
        else:
            print("\nInterrupted before the first checkpoint; nothing was written.", file=sys.stderr)
            _remove_if_empty(out, created)
        raise
    except TrainingError:
        if not (out / CHECKPOINT).exists():
            _remove_if_empty(out, created)
        raise


def _remove_if_empty(out: Path, created: bool) -> None:
    if created and out.is_dir() and not any(out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)


def _plan(trainer: Trainer, n_train: int, n_val: int) -> str:
    calls = trainer.estimate_calls(n_train, n_val)
    steps = -(-n_train // trainer.batch_size) * trainer.epochs
    shown = ", ".join(f"{k} {v}" for k, v in calls.items() if v)
    return (
        f"plan: {trainer.epochs} epoch(s), {steps} step(s); at most about {sum(calls.values())} "
        f"model calls ({shown}) if the chain makes one call per example"
    )


def _summary(result: TrainResult, files: Any, started: float) -> str:
    state = result.state
    steps = state.history["steps"]
    accepted = sum(1 for s in steps if s.get("decision") == "accepted")
    rolled = sum(1 for s in steps if str(s.get("decision", "")).startswith("rolled back"))
    failed = sum(1 for s in steps if str(s.get("decision", "")).startswith("failed"))

    def score(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    by_purpose = result.usage.as_dict()["by_purpose"]
    total = result.usage.total()
    calls = ", ".join(f"{p} {u['calls']}" for p, u in by_purpose.items()) or "none"
    lines = [
        "",
        f"Validation score: {score(state.baseline.get('val'))} -> {score(state.final.get('val'))}",
        f"Train score:      {score(state.baseline.get('train'))} -> {score(state.final.get('train'))}",
        f"Steps: {len(steps)} ({accepted} accepted, {rolled} rolled back, {failed} failed)"
        + (f"; stopped early: {state.stopped}" if state.stopped else ""),
        f"Calls: {calls} (total {total.calls}; tokens in {total.input_tokens}, out {total.output_tokens})",
        f"Cost: ${result.cost.total:.4f}"
        + (f" (no price for: {', '.join(result.cost.unpriced)})" if result.cost.unpriced else ""),
        f"Wall time: {time.monotonic() - started:.1f} s (training: {result.wall_time_s:.1f} s"
        + (f" over {state.sessions} sessions)" if state.sessions > 1 else ")"),
        f"Report: {files.summary} (also {files.report.name}, {files.prompts.name}"
        + (f", {files.plot.name})" if files.plot else "; no plot: pip install 'afnio-langchain[plot]')"),
    ]
    for role, before, p in zip(state.roles, state.initial_values, result.params):
        status = "changed" if p.data != before else "unchanged"
        lines.append(f"Final {role or 'parameter'} ({status}):")
        lines += [f"  | {line}" for line in str(p.data).splitlines() or [""]]
    return "\n".join(lines)


# -- commands -------------------------------------------------------------------------------


def cmd_optimize(args: argparse.Namespace) -> int:
    started = time.monotonic()
    if args.out is None:
        raise CliError("optimize needs --out DIR (where the checkpoint and report go)")
    roles = _roles(args)
    if roles["backward"] is None or roles["optimizer"] is None:
        raise CliError("optimize needs --model (or both --backward-model and --optimizer-model)")
    if args.metric in ("judge", "lm_judge") and roles["judge"] is None:
        raise CliError("--metric judge needs --model or --judge-model")
    train, target, inputs = _load_data(args.train, args)
    val = None
    if args.val is not None:
        val, _, _ = _load_data(args.val, args)
    elif args.val_fraction is not None:
        try:
            train, val = split_dataset(list(train), args.val_fraction, args.seed)
        except ValueError as exc:
            raise CliError(f"--val-fraction: {exc}") from None
    prices = _prices(args.prices)
    _check_keys(roles)
    resume = _prepare_out(args.out, args, overwrite_finished=False)
    target_obj = import_object(args.chain)
    if args.forward_model is None and _is_factory(target_obj):
        roles["forward"] = args.model
    with ModelPool(scripted=scripted_model) as pool:
        models = {role: pool.get(text) for role, text in roles.items() if text is not None}
        chain = load_chain(target_obj, models.get("forward"))
        metric = resolve_metric(
            args.metric, target_key=target, judge_model=models.get("judge"), criteria=args.criteria
        )
        trainer = _trainer(
            args, chain, metric, models, target, inputs, prices, resume,
            info={"chain": args.chain, "train": str(args.train), "val": str(args.val) if args.val else None,
                  "models": {k: str(parse_model_spec(v)) for k, v in roles.items() if v is not None}},
            evaluate_train=not args.no_eval_train,
        )
        print(_plan(trainer, len(train), 0 if val is None else len(val)), flush=True)
        created = _start_out(args.out, args.restart)
        command = _resume_command(args.argv)
        result = _train(trainer, list(train), None if val is None else list(val), args.out, command, created)
        files = write_report(result, args.out)
        _save_chain(result, args.out)
    print(_summary(result, files, started))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from afnio_langchain.demo import (
        CONSTRAINTS,
        TARGET_KEY,
        build_demo_chain,
        label_metric,
        load_demo_data,
    )

    started = time.monotonic()
    out = args.out or Path("afnio-demo")
    args.out = out
    train, val = load_demo_data()
    prices = _prices(args.prices)
    _check_keys({"model": args.model})
    resume = _prepare_out(out, args, overwrite_finished=True)
    print(f"{PROG} demo: optimizing the system prompt of a review-labelling pipeline")
    print(f"data: {len(train)} training and {len(val)} validation reviews; metric: the label (1), the right label in a sentence (0.5)")
    with ModelPool(scripted=scripted_model) as pool:
        if args.model == "local":
            print("starting the local model (SmolLM2-135M-Instruct via llama.cpp)...", flush=True)
        model = pool.get(args.model)
        print(f"model: {parse_model_spec(args.model)} (forward, backward and optimizer)", flush=True)
        chain, system = build_demo_chain(model)
        args.constraint = [*CONSTRAINTS, *args.constraint]
        trainer = _trainer(
            args, chain, label_metric, {"backward": model, "optimizer": model},
            TARGET_KEY, ["review"], prices, resume,
            info={"chain": "afnio_langchain.demo", "models": {"all": str(parse_model_spec(args.model))}},
            params=[system],
        )
        print(_plan(trainer, len(train), len(val)), flush=True)
        created = _start_out(out, args.restart)
        result = _train(trainer, list(train), list(val), out, _resume_command(args.argv), created)
        files = write_report(result, out)
    print(_summary(result, files, started))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from afnio_langchain.train import atomic_write_json, evaluate

    data, target, inputs = _load_data(args.data, args)
    roles = {"forward": args.forward_model, "judge": args.judge_model or args.model}
    if args.metric in ("judge", "lm_judge") and roles["judge"] is None:
        raise CliError("--metric judge needs --model or --judge-model")
    _check_keys(roles)
    saved = None
    if args.prompts is not None:
        try:
            saved = json.loads(args.prompts.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CliError(f"--prompts {args.prompts}: {exc}") from None
    target_obj = import_object(args.chain)
    if args.forward_model is None and _is_factory(target_obj):
        roles["forward"] = args.model
    with ModelPool(scripted=scripted_model) as pool:
        models = {role: pool.get(text) for role, text in roles.items() if text is not None}
        chain = load_chain(target_obj, models.get("forward"))
        if saved is not None:
            chain, params = trainable_chain(chain)
            try:
                apply_prompts(params, saved, str(args.prompts))
            except ValueError as exc:
                raise CliError(str(exc)) from None
        metric = resolve_metric(
            args.metric, target_key=target, judge_model=models.get("judge"), criteria=args.criteria
        )
        result = evaluate(
            chain, list(data), metric, input_keys=inputs, target_key=target,
            max_concurrency=args.max_concurrency,
        )
    score = "n/a" if result.score is None else f"{result.score:.3f}"
    print(f"score: {score} on {len(result.items)} example(s) ({result.errors} error(s))")
    for line, item in zip(data.line_numbers, result.items):
        if item.error or item.score < 1.0:
            detail = item.error or item.feedback or f"output {item.output!r:.120}"
            print(f"  line {line}: {item.score:.2f}  {detail}")
    if args.out is not None:
        report = {**result.to_dict(items=True), "metric": args.metric, "data": str(args.data)}
        for entry, line in zip(report["items"], data.line_numbers):
            entry["line"] = line
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, report)
        print(f"results: {args.out}")
    return 0


def _is_factory(obj: Any) -> bool:
    from langchain_core.runnables import Runnable

    return callable(obj) and not isinstance(obj, Runnable)


def _roles(args: argparse.Namespace) -> dict[str, str | None]:
    return {
        "forward": args.forward_model,
        "backward": args.backward_model or args.model,
        "optimizer": args.optimizer_model or args.model,
        "judge": args.judge_model or args.model,
    }


def _trainer(
    args: argparse.Namespace, chain: Any, metric: Any, models: dict[str, Any], target: str,
    inputs: list[str] | None, prices: Any, resume: bool, *, info: dict[str, Any],
    params: Any = None, evaluate_train: bool = True,
) -> Trainer:
    try:
        return Trainer(
            chain, metric,
            optimizer_model=models["optimizer"], backward_model=models["backward"], params=params,
            momentum=args.momentum, constraints=args.constraint, epochs=args.epochs,
            batch_size=args.batch_size, seed=args.seed, gate=args.gate, patience=args.patience,
            evaluate_train=evaluate_train, input_keys=inputs, target_key=target,
            checkpoint_path=args.out / CHECKPOINT, resume=resume,
            max_concurrency=args.max_concurrency, max_calls=args.max_calls, max_tokens=args.max_tokens,
            max_cost=args.max_cost,
            prices=prices, progress=not args.no_progress, info=info,
        )
    except (TypeError, ValueError) as exc:
        raise CliError(str(exc)) from None


def _start_out(out: Path, restart: bool) -> bool:
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if restart:
        _clear_run(out)
    return created


def _save_chain(result: TrainResult, out: Path) -> None:
    save = getattr(result.chain, "save", None)
    if callable(save):
        save(out / "chain.json")


def _resume_command(argv: Sequence[str]) -> str:
    words = [PROG, *[a for a in argv if a not in ("--resume", "--restart")]]
    return " ".join(words)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 training failed,
    2 bad arguments or setup, 130 interrupted)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    commands = {"optimize": cmd_optimize, "evaluate": cmd_evaluate, "demo": cmd_demo}
    try:
        return commands[args.command](args)
    except (CliError, DatasetError, ModelSpecError, ChainLoadError, CheckpointError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"{PROG}: training failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
