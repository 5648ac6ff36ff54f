"""A CPU-bound process beside the measured step: the loaded-machine figure."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

_SPIN = "while True: pass"


@contextlib.contextmanager
def busy_core(cpus: Sequence[int] | None = None) -> Iterator[subprocess.Popen]:
    """Keep one core busy (one pure-Python busy loop in its own process) inside the block;
    with ``cpus``, one of those (the measured process's, see :mod:`benchmarks.placement`).

    Example:
        >>> with busy_core() as spinner:
        ...     spinner.poll() is None
        True
    """
    code = _SPIN
    if cpus:
        code = f"import os; os.sched_setaffinity(0, {sorted(cpus)!r})\n{_SPIN}"
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.2)  # let it start spinning before anything is timed
        yield process
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
