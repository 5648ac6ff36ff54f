"""afnio's ``tellurio`` calls, made local: there is no Tellurio server here.

``init`` starts a *local* run that keeps the metrics logged to it in memory (the
:class:`~afnio_langchain.trainer.Trainer` logs its epoch metrics to the active run),
``log`` logs to it, and ``suppress_variable_notifications`` does nothing (Variables
notify no server). ``login`` raises: it would send an API key to Tellurio, and no key
ever leaves the machine here.

Example:
    >>> import afnio_langchain.tellurio as te
    >>> run = te.init("your-username", "Facility Support")
    >>> te.log("train_accuracy", 0.75, step=1)
    >>> run.metrics
    [{'name': 'train_accuracy', 'value': 0.75, 'step': 1}]
    >>> run.finish()
    >>> run.status
    'COMPLETED'
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_LOCK = threading.Lock()
_ACTIVE: list[LocalRun] = []


@dataclass
class LocalRun:
    """A run that lives in this process: its metrics are kept in :attr:`metrics`."""

    namespace_slug: str
    project_display_name: str
    name: str | None = None
    description: str | None = None
    status: str = "RUNNING"
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def log(self, name: str, value: Any, step: int | None = None, client: Any = None) -> None:
        """Record one metric value."""
        with _LOCK:
            self.metrics.append({"name": name, "value": value, "step": step})

    def finish(self) -> None:
        """Mark the run completed (and no longer active)."""
        with _LOCK:
            self.status = "COMPLETED"
            if _ACTIVE and _ACTIVE[-1] is self:
                _ACTIVE.pop()


def init(
    namespace_slug: str,
    project_display_name: str,
    name: str | None = None,
    description: str | None = None,
    status: Any = None,
    client: Any = None,
) -> LocalRun:
    """Start a local run and make it the active one (nothing is sent anywhere)."""
    run = LocalRun(namespace_slug, project_display_name, name, description)
    with _LOCK:
        _ACTIVE.append(run)
    return run


def get_active_run() -> LocalRun | None:
    """The run :func:`init` started last and that has not finished, or None."""
    with _LOCK:
        return _ACTIVE[-1] if _ACTIVE else None


def log(name: str, value: Any, step: int | None = None, client: Any = None) -> None:
    """Log a metric to the active run.

    Raises:
        RuntimeError: No run is active (call :func:`init` first).
    """
    run = get_active_run()
    if run is None:
        raise RuntimeError("no active run: call afnio_langchain.tellurio.init(...) first")
    run.log(name, value, step)


@contextlib.contextmanager
def suppress_variable_notifications() -> Iterator[None]:
    """A no-op here: Variables notify no server."""
    yield


def login(api_key: str | None = None, relogin: bool = False) -> dict[str, Any]:
    """Refused: afnio_langchain runs every op locally and needs no Tellurio account.

    Raises:
        RuntimeError: Always; remove the call (no key is ever sent anywhere).
    """
    raise RuntimeError(
        "afnio_langchain runs locally and has no Tellurio login: remove the login call "
        "(no API key is sent anywhere; models use their own provider keys or none)"
    )


__all__ = [
    "LocalRun",
    "get_active_run",
    "init",
    "log",
    "login",
    "suppress_variable_notifications",
]
