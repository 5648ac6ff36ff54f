"""Every code block in README.md and docs/*.md runs as written. Hermetic.

The conventions (also in docs/design.md, "Code blocks in the docs"):

- Every fenced block names its language: ``python`` and ``bash`` blocks are code and run
  here; ``json`` blocks are data and must parse; ``text`` blocks are output, trees or
  diagrams and do not run.
- The blocks of one file run in order, as in a notebook: ``python`` blocks share one
  namespace, ``bash`` blocks one working folder.
- A name a ``python`` block uses without defining it is a placeholder filled from
  :data:`PLACEHOLDERS` (``llm``, ``chat_model``, ``q``...): offline stand-ins for what
  the reader has (a chat model, a question, a dataset). A placeholder never hides code
  the block needs: it stands only for what the reader brings.
- ``bash`` blocks run with ``bash -euo pipefail`` in a folder that holds
  :data:`BASH_FILES` (``my_app/chains.py`` with ``build_qa``, ``train.jsonl``,
  ``val.jsonl``, ``test.jsonl``) and links to ``examples/`` and ``benchmarks/``, with
  this environment's ``python`` and ``afnio-langchain`` first on ``PATH``. The OpenAI
  endpoint is the loopback server (``OPENAI_BASE_URL``, a fake ``OPENAI_API_KEY``), so
  ``--model openai:gpt-4o-mini`` runs offline against it.
- ``<!-- not-run: REASON -->`` on the line before a block skips it, only where it truly
  cannot run offline in the suite: it installs packages, is the suite itself, or runs
  for minutes. ``<!-- needs: local model -->`` runs it only under ``pytest -m local_llm``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
LANGUAGES = ("python", "bash", "text", "json")
_FENCE = re.compile(r"^(`{3,})(\S*)[^\n]*\n(.*?)^\1[ \t]*$", re.S | re.M)
_MARK = re.compile(r"<!--\s*(not-run|needs):\s*(.*?)\s*-->\s*$")

BASH_FILES = {
    "my_app/__init__.py": "",
    "my_app/chains.py": textwrap.dedent(
        '''
        """The reader's app: a chain written the ordinary LangChain way."""
        from langchain_core.output_parsers import StrOutputParser
        from langchain_core.prompts import ChatPromptTemplate


        def build_qa(model):
            prompt = ChatPromptTemplate.from_messages(
                [("system", "Answer the question in one word."), ("human", "{question}")]
            )
            return prompt | model | StrOutputParser()
        '''
    ),
    "train.jsonl": "".join(
        json.dumps({"question": f"What is {i} plus {i}?", "answer": str(2 * i)}) + "\n" for i in range(1, 5)
    ),
    "val.jsonl": json.dumps({"question": "What is 5 plus 5?", "answer": "10"}) + "\n",
    "test.jsonl": json.dumps({"question": "What is 6 plus 6?", "answer": "12"}) + "\n",
}


def _placeholders() -> dict[str, object]:
    from afnio_langchain.testing import ScriptedChatModel

    model = ScriptedChatModel(
        forward="Paris, in France.",
        feedback="Name the country as well.",
        optimizer="Answer briefly and name the country.",
        judge='{"score": 7, "feedback": "Name the country."}',
    )
    return {
        "llm": model,            # a LangChain chat model (ChatOpenAI(...) in a real app)
        "chat_model": model,
        "q": "What is the capital of France?",
        "retrieve": lambda question: "Paris is the capital of France.",
        "feedback": "Name the country as well.",
    }


PLACEHOLDERS = _placeholders
"""Builds the placeholder namespace: fresh for every file."""



@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    code: str
    mark: tuple[str, str] | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = _MARK.search(before)
        found.append(Block(path, line, match.group(2), match.group(3), (mark.group(1), mark.group(2)) if mark else None))
    return found


ALL_BLOCKS = [b for path in DOC_FILES for b in blocks(path)]


def test_every_block_names_a_known_language():
    unnamed = [b.where for b in ALL_BLOCKS if b.language not in LANGUAGES]
    assert not unnamed, f"label these blocks python, bash or text: {unnamed}"
    assert sum(b.language in ("python", "bash") for b in ALL_BLOCKS) >= 20


def test_every_json_block_parses():
    for block in ALL_BLOCKS:
        if block.language == "json":
            json.loads(block.code)


def test_every_skipped_block_says_why():
    for block in ALL_BLOCKS:
        if block.mark is not None:
            kind, reason = block.mark
            assert kind == "not-run" and len(reason) > 10 or kind == "needs" and reason == "local model", block.where
            assert block.language in ("python", "bash"), block.where


@pytest.fixture
def bash_folder(tmp_path, openai_server, monkeypatch):
    for name, content in BASH_FILES.items():
        file = tmp_path / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(content)
    for name in ("examples", "benchmarks"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OPENAI_API_KEY": "sk-docs-fixture",
        "OPENAI_BASE_URL": openai_server.base_url,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
    }
    return tmp_path, env


def run_python(block: Block, namespace: dict[str, object]) -> None:
    exec(compile(block.code, block.where, "exec"), namespace)


# Never run from the suite, whatever a doc says: installing packages (the network), the
# suite itself (recursion), removing files.
_NEVER_RUN = re.compile(r"\bpip install\b|\bpytest\b|\.ci/run|\brm -rf\b|\bapt(-get)? install\b")


def run_bash(block: Block, folder: Path, env: dict[str, str]) -> None:
    refused = _NEVER_RUN.search(block.code)
    if refused:
        raise AssertionError(
            f"it runs {refused.group(0)!r}, which the suite never runs: mark the block "
            "<!-- not-run: REASON --> or move that command out of it"
        )
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code], cwd=folder, env=env,
        capture_output=True, text=True, timeout=300,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"exit {done.returncode}\n--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-3000:]}"
        )


def _run_file(path: Path, bash_folder, capsys, monkeypatch, *, local: bool) -> int:
    folder, env = bash_folder
    monkeypatch.chdir(folder)
    monkeypatch.setenv("OPENAI_API_KEY", env["OPENAI_API_KEY"])
    monkeypatch.setenv("OPENAI_BASE_URL", env["OPENAI_BASE_URL"])
    monkeypatch.syspath_prepend(str(folder))
    namespace: dict[str, object] = {"__name__": "__docs__", **PLACEHOLDERS()}
    try:
        return _run_blocks(path, namespace, folder, env, capsys, local=local)
    finally:
        from afnio_langchain import set_backward_model

        set_backward_model(None)  # a block may set the process default; the next file starts clean


def _run_blocks(path, namespace, folder, env, capsys, *, local: bool) -> int:
    ran, problems = 0, []
    for block in blocks(path):
        if block.language not in ("python", "bash"):
            continue
        if block.mark is not None:
            kind, _ = block.mark
            if kind == "not-run" or (kind == "needs") is not local:
                continue
        elif local:
            continue
        try:
            if block.language == "python":
                run_python(block, namespace)
            else:
                run_bash(block, folder, env)
        except BaseException as exc:  # noqa: BLE001 - a block's failure is reported, not raised
            if isinstance(exc, KeyboardInterrupt):
                raise
            problems.append(f"{block.where} ({block.language}): {type(exc).__name__}: {exc}")
        ran += 1
        capsys.readouterr()
    assert not problems, "\n\n".join(problems)
    return ran


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_code_blocks_of_a_doc_run_as_written(path, bash_folder, capsys, monkeypatch):
    _run_file(path, bash_folder, capsys, monkeypatch, local=False)


@pytest.mark.local_llm
@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_blocks_that_need_the_local_model_run(path, bash_folder, capsys, monkeypatch):
    from afnio_langchain.models import local_model_available

    if not local_model_available():
        pytest.skip("the local extra is not installed")
    _run_file(path, bash_folder, capsys, monkeypatch, local=True)
