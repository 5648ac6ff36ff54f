"""``save`` / ``load``: afnio's functions for Variables, state dicts and checkpoints,
written as JSON (never pickle: loading a file runs no code)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from typing import IO, Any, Union

from afnio_langchain.autodiff import Variable
from afnio_langchain.cognitive import Module, Parameter

FORMAT = "afnio-langchain"
VERSION = 1

FileLike = Union[str, "os.PathLike[str]", IO[bytes], IO[str]]


def _encode(value: Any, where: str) -> Any:
    if isinstance(value, Variable):
        return {
            "__variable__": {
                "data": value.items() if value.is_batched else value.data,
                "role": value.role,
                "requires_grad": value.requires_grad,
                "parameter": isinstance(value, Parameter),
            }
        }
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
        return {"__dict__": [[_encode(k, f"{where} key"), _encode(v, f"{where}[{k!r}]")] for k, v in value.items()]}
    hint = " (save its state_dict() instead)" if isinstance(value, Module) else ""
    raise TypeError(
        f"save() stores Variables, Parameters and plain data (dicts, lists, tuples, text, "
        f"numbers); {where} is a {type(value).__name__}{hint}"
    )


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"__variable__"}:
        spec = value["__variable__"]
        cls = Parameter if spec.get("parameter") else Variable
        return cls(spec["data"], role=spec.get("role", ""), requires_grad=bool(spec.get("requires_grad", False)))
    if set(value) == {"__tuple__"}:
        return tuple(_decode(v) for v in value["__tuple__"])
    if set(value) == {"__dict__"}:
        return {_hashable(_decode(k)): _decode(v) for k, v in value["__dict__"]}
    return {k: _decode(v) for k, v in value.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def save(obj: Any, f: FileLike) -> None:
    """Write ``obj`` (a Variable, a Parameter, a module's ``state_dict()``, an
    optimizer's ``state_dict()``, or dicts, lists and tuples of these and of plain
    data) to a path or a writable file as JSON.

    Raises:
        TypeError: ``obj`` holds something that is not data (a model client, a Module
            itself, a function); the message names where.

    Example:
        >>> import io
        >>> import afnio_langchain
        >>> from afnio_langchain import Variable
        >>> buffer = io.BytesIO()
        >>> afnio_langchain.save(Variable("You are a doctor.", role="system prompt"), buffer)
        >>> _ = buffer.seek(0)
        >>> afnio_langchain.load(buffer).data
        'You are a doctor.'
    """
    text = json.dumps({"format": FORMAT, "version": VERSION, "object": _encode(obj, "the object")}, ensure_ascii=False)
    if isinstance(f, (str, os.PathLike)):
        with open(f, "w", encoding="utf-8") as out:
            out.write(text)
        return
    if not callable(getattr(f, "write", None)):
        raise AttributeError(f"expected a path or a file with write(), got {type(f).__name__}")
    if isinstance(f, io.TextIOBase):
        f.write(text)
    else:
        f.write(text.encode("utf-8"))  # type: ignore[arg-type]
    flush = getattr(f, "flush", None)
    if callable(flush):
        flush()


def load(f: FileLike) -> Any:
    """Read what :func:`save` wrote (from a path or a readable file).

    Raises:
        ValueError: The file is not one :func:`save` wrote (afnio's own ``.hf`` files
            are pickles, which this package never loads).
    """
    if isinstance(f, (str, os.PathLike)):
        with open(f, "rb") as source:
            raw: Any = source.read()
    else:
        raw = f.read()
    try:
        document = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        document = None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(
            "not a file written by afnio_langchain.save (afnio's own .hf files are pickles, "
            "which are never loaded here: loading them could run code)"
        )
    return _decode(document.get("object"))


__all__ = ["load", "save"]
