"""The prompts file: trained prompt values as versioned JSON.

One format, read and written everywhere prompts are saved: ``TrainableChain.save`` /
``.load``, the trainer's ``prompts.json`` (:func:`afnio_langchain.train.write_report`),
:func:`afnio_langchain.train.apply_prompts` and ``afnio-langchain evaluate --prompts``::

    {"format": "afnio_langchain.prompts", "version": 2,
     "prompts": [{"index": 0, "key": "prompt_0.message_0", "role": "...", "value": "..."}]}

``key`` names a prompt of a chain made by ``make_trainable`` (template *k*, message *i*);
it is absent for parameters that have no such name. Values are matched by key when
both sides have keys, else by position, and the roles must agree. Files written by
earlier versions (``afnio_langchain.prompts`` version 1, and the trainable-chain files
of ``TrainableChain.save``) are still read.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from afnio_langchain.autodiff import Variable, validate_data

PROMPTS_FORMAT = "afnio_langchain.prompts"
PROMPTS_VERSION = 2
_LEGACY_CHAIN_FORMAT = "afnio-langchain/trainable-chain"
_OTHER_KINDS = {
    "afnio_langchain.report": "a training report (report.json)",
    "afnio_langchain.checkpoint": "a training checkpoint (checkpoint.json)",
}


class PromptsFileError(ValueError):
    """A prompts file cannot be read, is a file of another kind, or does not fit the
    parameters it is loaded into; the message names the file and says why."""


def prompts_state(params: Sequence[Variable], keys: Sequence[str] | None = None) -> dict[str, Any]:
    """The prompts file's content for ``params`` (JSON-ready).

    Args:
        params: The trained Variables, in order.
        keys: A stable name per parameter (``make_trainable``'s ``"prompt_0.message_0"``);
            None when they have none.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.runnables import prompts_state
        >>> state = prompts_state([Variable("Be brief.", role="system prompt", requires_grad=True)])
        >>> state["format"], state["version"], state["prompts"]
        ('afnio_langchain.prompts', 2, [{'index': 0, 'role': 'system prompt', 'value': 'Be brief.'}])
    """
    if keys is not None and len(keys) != len(params):
        raise ValueError(f"got {len(keys)} key(s) for {len(params)} parameter(s)")
    entries = []
    for i, param in enumerate(params):
        entry: dict[str, Any] = {"index": i}
        if keys is not None:
            entry["key"] = keys[i]
        entry.update(role=param.role, value=param.data)
        entries.append(entry)
    return {"format": PROMPTS_FORMAT, "version": PROMPTS_VERSION, "prompts": entries}


def save_prompts(
    params: Sequence[Variable], path: str | os.PathLike[str], keys: Sequence[str] | None = None
) -> Path:
    """Write the prompts file of ``params`` to ``path`` atomically; returns the path."""
    target = Path(path)
    text = json.dumps(prompts_state(params, keys), indent=2, ensure_ascii=False) + "\n"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_prompts_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a prompts file (any version this package wrote); returns its
    content in the current format.

    Raises:
        PromptsFileError: Missing or unreadable, not JSON, a file of another kind
            (a report, a checkpoint...), or a newer version; the message says which.
    """
    source = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PromptsFileError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptsFileError(f"{source}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise PromptsFileError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return normalize_prompts_state(data, source)


def normalize_prompts_state(data: Any, source: str = "prompts file") -> dict[str, Any]:
    """``data`` (a parsed prompts file of any version) in the current format.

    Raises:
        PromptsFileError: Not a prompts file, or a newer version.
    """
    kind = data.get("format") if isinstance(data, dict) else None
    if kind in _OTHER_KINDS:
        raise PromptsFileError(
            f"{source} is {_OTHER_KINDS[kind]}, not a prompts file: pass the prompts.json "
            "written beside it"
        )
    if kind not in (PROMPTS_FORMAT, _LEGACY_CHAIN_FORMAT):
        raise PromptsFileError(
            f"{source} is not an afnio-langchain prompts file (expected \"format\": "
            f"{PROMPTS_FORMAT!r}; written by TrainableChain.save or afnio-langchain optimize)"
        )
    assert isinstance(data, dict)
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PromptsFileError(f"{source}: \"version\" must be a positive integer, got {version!r}")
    if kind == PROMPTS_FORMAT and version > PROMPTS_VERSION:
        raise PromptsFileError(
            f"{source} has version {version}; this package reads versions up to {PROMPTS_VERSION}: "
            "upgrade afnio-langchain"
        )
    if kind == _LEGACY_CHAIN_FORMAT and version > 1:
        raise PromptsFileError(f"{source}: unknown trainable-chain file version {version}")
    entries = data.get("params") if kind == PROMPTS_FORMAT and version == 1 else data.get("prompts")
    if not isinstance(entries, list):
        raise PromptsFileError(f"{source}: \"prompts\" must be a list")
    prompts = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "value" not in entry:
            raise PromptsFileError(f"{source}: entry {i} has no \"value\"")
        try:
            value = validate_data(entry["value"])
        except TypeError as exc:
            raise PromptsFileError(f"{source}: entry {i}: {exc}") from None
        key = entry.get("key")
        if key is not None and not isinstance(key, str):
            raise PromptsFileError(f"{source}: entry {i}: \"key\" must be a string")
        normalized: dict[str, Any] = {"index": i}
        if key is not None:
            normalized["key"] = key
        normalized.update(role=entry.get("role"), value=value)
        prompts.append(normalized)
    return {"format": PROMPTS_FORMAT, "version": PROMPTS_VERSION, "prompts": prompts}


def load_prompts(
    params: Sequence[Variable],
    saved: str | os.PathLike[str] | Mapping[str, Any],
    keys: Sequence[str] | None = None,
    *,
    source: str | None = None,
) -> None:
    """Write saved values into ``params``: all of them, or none when anything does not fit.

    Args:
        params: The Variables to set, in order.
        saved: A prompts file's path, or its parsed content.
        keys: The parameters' names (see :func:`prompts_state`); when given and the
            file has keys too, values are matched by key, else by position.
        source: How to name ``saved`` in errors (default: its path).

    Raises:
        PromptsFileError: The file cannot be read or is of another kind, or it does
            not match the parameters (count, keys or roles; the message says which).

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.runnables import load_prompts, prompts_state
        >>> system = Variable("Be brief.", role="system prompt", requires_grad=True)
        >>> saved = prompts_state([Variable("Be exact.", role="system prompt")])
        >>> load_prompts([system], saved)
        >>> system.data
        'Be exact.'
        >>> load_prompts([system, system], saved)
        Traceback (most recent call last):
        ...
        afnio_langchain.runnables._prompts_file.PromptsFileError: prompts file holds 1 value(s), the chain has 2 parameter(s)
    """
    if isinstance(saved, Mapping):
        name = source or "prompts file"
        state = normalize_prompts_state(dict(saved), name)
    else:
        name = source or str(saved)
        state = read_prompts_file(saved)
    entries = state["prompts"]
    if keys is not None and len(keys) != len(params):
        raise ValueError(f"got {len(keys)} key(s) for {len(params)} parameter(s)")
    if keys is not None and entries and all("key" in e for e in entries):
        by_key = {e["key"]: e for e in entries}
        missing = sorted(set(keys) - set(by_key))
        unknown = sorted(set(by_key) - set(keys))
        if missing or unknown:
            raise PromptsFileError(
                f"{name} does not match this chain's prompts: missing {missing}, unknown {unknown}"
            )
        ordered = [by_key[k] for k in keys]
    else:
        if len(entries) != len(params):
            raise PromptsFileError(
                f"{name} holds {len(entries)} value(s), the chain has {len(params)} parameter(s)"
            )
        ordered = list(entries)
    for i, (param, entry) in enumerate(zip(params, ordered)):
        if entry.get("role") is not None and entry["role"] != param.role:
            raise PromptsFileError(
                f"{name}: entry {entry['index']} is for {entry['role']!r}, but parameter {i} is "
                f"{param.role!r}"
            )
    for param, entry in zip(params, ordered):
        param.data = entry["value"]
