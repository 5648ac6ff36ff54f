"""Dispatch and exit statuses: 0 done, 1 training failed (or the local model server
died), 2 a user error (one line, nothing started), 130 interrupted."""

from __future__ import annotations

import sys
from collections.abc import Sequence

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
    from afnio_langchain.models import LocalServerError
    from afnio_langchain.runnables import PromptsFileError
    from afnio_langchain.train import (
        ChainLoadError,
        CheckpointError,
        DatasetError,
        ModelSpecError,
        TrainingError,
    )

    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(words)
    args.argv = words
    try:
        return COMMANDS[args.command](args)
    except (CliError, DatasetError, ModelSpecError, ChainLoadError, CheckpointError, PromptsFileError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except LocalServerError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except TrainingError as exc:
        print(f"{PROG}: training failed: {exc}", file=sys.stderr)
        return 1
    except RunInterrupted:
        return 130
