"""The arguments of ``afnio-langchain``: one parser, its subcommands and value types."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

PROG = "afnio-langchain"
MODEL_HELP = "openai:NAME, openai-compatible:NAME@URL, local, or scripted (an offline fake)"


def _number(convert: type, accept: Callable[[float], bool], wanted: str) -> Callable[[str], Any]:
    """An argparse type: ``convert`` the text, then check it with ``accept``."""
    kind = "a whole number" if convert is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    return parse


_positive = _number(int, lambda v: v >= 1, "a number >= 1")
_non_negative = _number(int, lambda v: v >= 0, "a number >= 0")
_fraction = _number(float, lambda v: 0 < v < 1, "a number between 0 and 1")
_positive_number = _number(float, lambda v: v > 0, "a number > 0")


def _model_spec(text: str) -> str:
    from afnio_langchain.train import ModelSpecError, parse_model_spec

    try:
        parse_model_spec(text)
    except ModelSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_training_options(
    p: argparse.ArgumentParser, *, epochs: int, batch_size: int, gate: str = "improve"
) -> None:
    from afnio_langchain.train import GATES

    p.add_argument("--epochs", type=_positive, default=epochs, help=f"passes over the training set (default {epochs})")
    p.add_argument("--batch-size", type=_positive, default=batch_size, help=f"examples per step (default {batch_size})")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    p.add_argument("--gate", choices=GATES, default=gate,
                   help=f"keep a step only if validation rises (improve), also on a tie above zero (no_worse), or always (off); default {gate}")
    p.add_argument("--patience", type=_positive, help="stop after this many epochs without a better validation score")
    p.add_argument("--momentum", type=_non_negative, default=0, help="TGD momentum: earlier prompt versions shown to the optimizer (default 0)")
    p.add_argument("--constraint", action="append", default=[], metavar="TEXT", help="a rule every new prompt must follow (repeatable)")
    p.add_argument("--max-concurrency", type=_positive, help="cap on model calls in flight")
    p.add_argument("--max-calls", type=_positive, help="stop after this many model calls")
    p.add_argument("--max-tokens", type=_positive, help="stop after this many tokens (input + output)")
    p.add_argument("--max-cost", type=_positive_number, help="stop after this many USD (by the price table)")
    p.add_argument("--prices", type=Path, help='JSON price table: {"model": [USD per 1M input, per 1M output tokens]}')
    p.add_argument("--out", type=Path, required=False, help="output folder (checkpoint and report)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    group.add_argument("--restart", action="store_true", help="discard the run in --out and start afresh")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


MESSAGE_ROLES = ("system", "user", "assistant")


def _roles(text: str) -> tuple[str, ...]:
    roles = tuple(r.strip() for r in text.split(",") if r.strip())
    unknown = [r for r in roles if r not in MESSAGE_ROLES]
    if not roles or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(MESSAGE_ROLES)}; got {text!r}"
        )
    return roles


def _add_chain_options(p: argparse.ArgumentParser, chain_help: str) -> None:
    p.add_argument("--chain", required=True, help=chain_help)
    p.add_argument(
        "--roles", type=_roles, default=("system",),
        help="messages of the chain's prompt templates to train, comma-separated: system, "
        "user, assistant (default system; a PromptTemplate's one message trains with "
        "system or user)",
    )


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", required=True, help="exact_match, contains, judge, or module:function")
    p.add_argument("--criteria", help="what a good output is (for --metric judge)")
    p.add_argument("--target-key", help="the example key holding the expected output (default: answer, target, label, expected or output)")
    p.add_argument("--input-keys", help="comma-separated example keys given to the chain (default: all but the target)")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=_model_spec, help=f"default model for every role: {MODEL_HELP}")
    for role, what in (
        ("forward", "the chain's model (only for a chain factory that takes the model)"),
        ("backward", "the model writing feedback"),
        ("optimizer", "the model rewriting prompts"),
        ("judge", "the model of --metric judge"),
    ):
        p.add_argument(f"--{role}-model", type=_model_spec, help=what)


class _Parser(argparse.ArgumentParser):
    """Argument errors are one line (with where to find the usage), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``afnio-langchain``."""
    from afnio_langchain import __version__

    parser = _Parser(
        prog=PROG, description="Train the prompts of LangChain chains with textual gradients."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{optimize,evaluate,export,demo}")
    sub.required = True

    opt = sub.add_parser("optimize", help="train the prompts of a chain on a dataset")
    _add_chain_options(opt, "module:attribute (or file.py:attribute): a chain, or a function returning one")
    opt.add_argument("--train", required=True, type=Path, help="training examples (.jsonl or .csv)")
    val = opt.add_mutually_exclusive_group()
    val.add_argument("--val", type=Path, help="validation examples (.jsonl or .csv)")
    val.add_argument("--val-fraction", type=_fraction, help="split this fraction of --train off as validation")
    _add_data_options(opt)
    _add_model_options(opt)
    _add_training_options(opt, epochs=2, batch_size=4)
    opt.add_argument("--no-eval-train", action="store_true", help="do not score the whole training set before and after")

    ev = sub.add_parser("evaluate", help="score a chain on a dataset")
    _add_chain_options(ev, "module:attribute (or file.py:attribute)")
    ev.add_argument("--data", required=True, type=Path, help="examples (.jsonl or .csv)")
    _add_data_options(ev)
    _add_model_options(ev)
    ev.add_argument("--prompts", type=Path, help="a prompts file (prompts.json of optimize, or TrainableChain.save), loaded into the chain first")
    ev.add_argument("--max-concurrency", type=_positive, help="cap on model calls in flight")
    ev.add_argument("--out", type=Path, help="write the per-example results to this JSON file")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")

    ex = sub.add_parser("export", help="write a run's learned prompts into the chain's LangChain templates (no model is called)")
    _add_chain_options(ex, "module:attribute (or file.py:attribute): the chain that was trained")
    ex.add_argument("--prompts", required=True, type=Path, help="the run's prompts file (prompts.json of optimize, or TrainableChain.save)")
    ex.add_argument("--model", type=_model_spec, help=f"for a chain factory that takes the model: {MODEL_HELP} (default scripted)")
    ex.add_argument("--out", type=Path, help="write the templates to this JSON file, in LangChain's serialization (langchain_core.load)")

    demo = sub.add_parser("demo", help="optimize a small shipped pipeline offline (local model by default)")
    demo.add_argument("--model", type=_model_spec, default="local", help=f"{MODEL_HELP} (default local)")
    _add_training_options(demo, epochs=2, batch_size=3, gate="improve")
    return parser
