"""Writing run files safely: atomically (a temporary file in the same folder, flushed
to disk, then renamed over the target, so a reader or a resumed run sees the old file
or the new one, never half of one) and with no secret in them (every key known to
:mod:`afnio_langchain.models._secrets`, and the value of every API-key environment
variable, is masked before anything reaches the disk)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from afnio_langchain.models import redact

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SECRET_KEY = re.compile(r"(^|_)(api_?key|secret|password|authorization|access_token)($|_)", re.I)


def drop_secret_fields(data: Any) -> Any:
    """A copy of JSON-like ``data`` without dict entries whose key names a secret
    (``api_key``, ``password``, ``authorization``...)."""
    if isinstance(data, dict):
        return {
            k: drop_secret_fields(v)
            for k, v in data.items()
            if not (isinstance(k, str) and _SECRET_KEY.search(k))
        }
    if isinstance(data, list):
        return [drop_secret_fields(v) for v in data]
    return data


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (the folder must exist); return the path.

    Example:
        >>> import tempfile, pathlib
        >>> from afnio_langchain.train._files import atomic_write_bytes
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> atomic_write_bytes(folder / "a.txt", b"hello").read_bytes()
        b'hello'
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically, secrets redacted (characters that
    UTF-8 cannot hold, lone surrogates, are written as backslash escapes)."""
    return atomic_write_bytes(path, redact(text).encode("utf-8", "backslashreplace"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically, without secret fields or
    values (fails before writing anything if ``data`` is not JSON-serialisable)."""
    text = json.dumps(drop_secret_fields(data), indent=2, ensure_ascii=False) + "\n"
    # Lone surrogates (text decoded with "surrogateescape") cannot be UTF-8: write them
    # as JSON escapes, which read back as the same characters.
    text = _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return atomic_write_text(path, text)
