"""Dispatch and exit statuses: 0 done, 1 training failed (or the local model server
died), 2 a user error (one line, nothing started), 130 interrupted."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from afnio_langchain.cli._parser import PROG, build_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 training failed or the
    local model server died, 2 bad arguments or setup, 130 interrupted)."""
    try:
        return _run(argv)
    except KeyboardInterrupt:
        # Ctrl-C before training began (imports, checks, the local server's start-up):
        # nothing was written and nothing is left running.
        print(f"\n{PROG}: interrupted before training started; nothing was written", file=sys.stderr)
        return 130


def _run(argv: Sequence[str] | None) -> int:
    from afnio_langchain.cli._commands import COMMANDS
    from afnio_langchain.cli._setup import CliError, RunInterrupted
    from afnio_langchain.models import LocalServerError, redact
    from afnio_langchain.runnables import PromptsFileError
    from afnio_langchain.train import (
        ChainLoadError,
        CheckpointError,
        DatasetError,
        MetricScoreError,
        ModelSpecError,
        TrainingError,
    )

    for stream in (sys.stdout, sys.stderr):  # learned text may hold lone surrogates
        if callable(getattr(stream, "reconfigure", None)):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(words)
    args.argv = words
    try:
        with _run_folder_lock(args):
            return COMMANDS[args.command](args)
    except (CliError, DatasetError, ModelSpecError, ChainLoadError, CheckpointError, PromptsFileError) as exc:
        print(redact(f"{PROG}: error: {exc}"), file=sys.stderr)
        return 2
    except LocalServerError as exc:
        print(redact(f"{PROG}: {exc}"), file=sys.stderr)
        return 1
    except TrainingError as exc:
        print(redact(f"{PROG}: training failed: {exc}"), file=sys.stderr)
        return 1
    except MetricScoreError as exc:  # found while scoring, so after model calls: not a 2
        print(redact(f"{PROG}: error: {exc}"), file=sys.stderr)
        return 1
    except RunInterrupted:
        return 130


def _run_folder_lock(args: argparse.Namespace) -> Any:
    """Hold an existing run folder for the whole command (before --resume or --restart
    read or clear it), so that a second command on it refuses at once."""
    from afnio_langchain.cli._setup import CHECKPOINT, DEMO_OUT
    from afnio_langchain.train import run_lock

    out = getattr(args, "out", None) or (DEMO_OUT if args.command == "demo" else None)
    if args.command in ("optimize", "demo") and out is not None and Path(out).is_dir():
        return run_lock(Path(out) / CHECKPOINT)
    return contextlib.nullcontext()
