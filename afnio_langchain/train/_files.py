"""Writing run files safely, and keeping one run per folder.

- Atomically: a temporary file in the same folder, flushed to disk, renamed over the
  target, then the folder itself synced, so a reader or a resumed run sees the old
  file or the new one, never half of one, even after a power cut. The rename replaces
  a symlink at the target rather than writing through it.
- With no secret in them: every key the models layer knows, and the value of every
  API-key environment variable, is masked before anything reaches the disk.
- One run at a time: :func:`exclusive_lock` holds an OS lock on a lock file for as
  long as a run uses its folder; the OS releases it when the process dies (even by
  ``kill -9``), so a crashed run never blocks its resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from afnio_langchain.models import is_secret_field, redact

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def drop_secret_fields(data: Any) -> Any:
    """A copy of JSON-like ``data`` without dict entries whose key names a secret
    (``api_key``, ``password``, ``Authorization``, ``x-api-key``...)."""
    if isinstance(data, dict):
        return {k: drop_secret_fields(v) for k, v in data.items() if not is_secret_field(k)}
    if isinstance(data, list):
        return [drop_secret_fields(v) for v in data]
    return data


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (the folder must exist); return the path.

    A symlink at ``path`` is replaced by the new file, never written through.

    Example:
        >>> import tempfile, pathlib
        >>> from afnio_langchain.train._files import atomic_write_bytes
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     atomic_write_bytes(pathlib.Path(folder) / "a.txt", b"hello").read_bytes()
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
    _sync_folder(target.parent)
    return target


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk, where the OS allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows cannot open folders: NTFS journals renames itself
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


class LockHeldError(RuntimeError):
    """Another process holds the lock; ``holder`` is what it wrote there (its pid and
    when it took the lock), as text."""

    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"{path} is locked by another process ({holder or 'unknown holder'})")


_HELD: dict[str, list[Any]] = {}  # lock path -> [open file, depth] held by this process
_HELD_LOCK = threading.Lock()


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive OS lock on the file ``path`` (created if needed) for the block.

    Fails at once, never waits. Re-entrant within one process (a command line that
    locks a run folder, then starts the training that locks it again). The lock file
    is opened without following symlinks and records the holder's pid.

    Raises:
        LockHeldError: Another process holds it.

    Example:
        >>> import pathlib, tempfile
        >>> from afnio_langchain.train._files import exclusive_lock
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = pathlib.Path(folder) / "run.lock"
        ...     with exclusive_lock(path):
        ...         with exclusive_lock(path):  # the same process may take it again
        ...             "locked"
        'locked'
    """
    key = os.path.realpath(path)
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
    if held is not None:
        try:
            yield
        finally:
            with _HELD_LOCK:
                held[1] -= 1
        return
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o644)
    handle = os.fdopen(fd, "r+", encoding="utf-8")
    try:
        if not _try_lock(handle):
            holder = handle.read().strip()
            raise LockHeldError(Path(path), holder)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        entry = [handle, 1]
        with _HELD_LOCK:
            _HELD[key] = entry
        try:
            yield
        finally:
            with _HELD_LOCK:
                _HELD.pop(key, None)
            handle.seek(0)
            handle.truncate()
            handle.flush()
    finally:
        handle.close()  # closing the file releases the OS lock


def _try_lock(handle: Any) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True
