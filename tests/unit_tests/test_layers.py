"""The layering of docs/design.md, checked by import-linter's contracts in pyproject.toml:
nothing imports upward, the fakes in ``testing`` stay out of the library, and private
modules (a leading underscore) are imported only inside their own package."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept():
    # In a subprocess: import-linter reconfigures logging, which would disable the
    # loggers other tests read.
    script = (
        "import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 kept, 0 broken" in done.stdout, done.stdout
