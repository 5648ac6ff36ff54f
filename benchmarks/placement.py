"""Which CPUs the benchmark's processes run on: the loopback server on a core of its
own, the measured process (and a loaded run's busy process) on the others.

The server stands for a provider's machine. Left to the scheduler on a small machine,
it often runs on the measured process's core: Linux wakes a task on the core of the
task that woke it, and the two wake each other on every request and reply. Its CPU
then lands on the client's critical path, and the two take turns at one core's caches.
On a 2-CPU AMD EPYC virtual machine the four headline paths came to 1.07-1.09 of the
bound that way, and to 1.03-1.04 with the two kept apart, in quick runs a few minutes
apart (``docs/performance.md``, round thirteen). Placement needs
``os.sched_setaffinity`` (Linux) and at least 2 CPUs; elsewhere nothing is pinned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Placement", "plan_placement"]


@dataclass(frozen=True)
class Placement:
    """The CPUs of the measured process and of the server; None leaves a process where
    the scheduler puts it.

    Example:
        >>> placement = Placement(client=(0,), server=(1,))
        >>> placement.describe()
        {'client_cpus': [0], 'server_cpus': [1]}
        >>> Placement(None, None).describe() is None
        True
    """

    client: tuple[int, ...] | None
    server: tuple[int, ...] | None

    def describe(self) -> dict[str, list[int]] | None:
        """The placement as the summary reports it (None: nothing pinned)."""
        if self.client is None or self.server is None:
            return None
        return {"client_cpus": list(self.client), "server_cpus": list(self.server)}

    def pin_this_process(self) -> None:
        """Move the calling process (its threads started from now on) to the client's
        CPUs."""
        if self.client is not None:
            os.sched_setaffinity(0, self.client)


def plan_placement(pin: bool = True) -> Placement:
    """The server on the last CPU this process may use, the client on the others; no
    pinning when ``pin`` is false, off Linux, or with fewer than 2 CPUs.

    Example:
        >>> placement = plan_placement(pin=False)
        >>> placement.client is None and placement.server is None
        True
    """
    if not pin or not hasattr(os, "sched_setaffinity"):
        return Placement(None, None)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Placement(None, None)
    return Placement(client=tuple(cpus[:-1]), server=(cpus[-1],))
