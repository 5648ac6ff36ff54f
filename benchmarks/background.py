"""A CPU-bound process beside the measured step: the loaded-machine figure."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

_SPIN = "while True: pass"


@contextlib.contextmanager
def busy_core() -> Iterator[subprocess.Popen]:
    """Keep one core busy (one pure-Python busy loop in its own process) inside the block.

    Example:
        >>> with busy_core() as spinner:
        ...     spinner.poll() is None
        True
    """
    process = subprocess.Popen([sys.executable, "-c", _SPIN])
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
