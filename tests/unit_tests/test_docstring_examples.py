"""Every docstring example in the package runs, prints what it shows, and leaves nothing
in the temporary folder (a user pastes them as they are)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import tempfile

import pytest

import afnio_langchain
from afnio_langchain import set_backward_model

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(afnio_langchain.__path__, prefix="afnio_langchain.")
    if info.name != "afnio_langchain.__main__"
)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name, tmp_path, monkeypatch):
    module = importlib.import_module(module_name)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    try:
        failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True)
    finally:
        set_backward_model(None)
    assert failures == 0, f"{failures} docstring example(s) failed in {module_name}"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert not left, f"docstring examples in {module_name} left {left} in the temporary folder"
