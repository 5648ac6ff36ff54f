"""``help(afnio_langchain)`` opens with a one-screen map of the API, and the names the
map gives are where it says they are."""

from __future__ import annotations

import importlib
import re

import afnio_langchain


def map_lines() -> dict[str, list[str]]:
    """module -> the code names its line of the map gives (identifiers with an
    underscore or an inner capital, or followed by nothing but commas)."""
    found: dict[str, list[str]] = {}
    module = None
    for line in afnio_langchain.__doc__.splitlines():
        match = re.match(r"^    (afnio_langchain(?:\.\w+)?)\s{2,}(.*)$", line)
        if match:
            module, text = match.groups()
        elif module and re.match(r"^ {20,}\S", line):
            text = line
        else:
            module = None
            continue
        names = [w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", re.sub(r"\(.*?\)", "", text))
                 if "_" in w or re.search(r"[a-z][A-Z]", w) or w in ("Variable", "Function", "TGD", "Trainer", "Optimizer", "Fault", "fit", "evaluate", "contains", "parameters")]
        found.setdefault(module, []).extend(names)
    return found


def test_the_map_fits_one_screen_and_covers_the_main_names():
    doc = afnio_langchain.__doc__
    assert len(doc.splitlines()) <= 45
    for name in ("fit", "Trainer", "TGD", "ScriptedChatModel", "AgentRunnable", "LocalModelServer"):
        assert name in doc


def test_every_name_in_the_map_is_exported_where_it_says():
    mapping = map_lines()
    assert len(mapping) >= 10
    for module_name, names in mapping.items():
        module = importlib.import_module(module_name)
        missing = [n for n in names if n not in module.__all__]
        assert not missing, f"{module_name}: {missing}"
