"""The suite runs with only the ``test`` extra: the README's ``pytest -m local_llm`` is run
after installing ``.[local,test]``, without the ``dspy`` extra, and a test module that
imports DSPy at its top stopped the whole collection there."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

# ``sys.modules[name] = None`` makes ``import name`` raise ImportError, as it does where
# the extra is not installed.
_WITHOUT = "import sys, pytest; sys.modules['dspy'] = None; sys.exit(pytest.main({args!r}))"


def test_the_suite_collects_without_the_dspy_extra():
    args = ["--collect-only", "-q", "-p", "no:cacheprovider", "-m", "", "tests"]
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT.format(args=args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "error" not in done.stdout.splitlines()[-1], done.stdout[-3000:]
