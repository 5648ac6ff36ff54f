"""CPU time the hypervisor gave to other guests while the benchmark ran ("steal").

On a virtual machine the host may run other tenants on the same physical cores. The
guest's load average does not show it: the benchmark's process simply runs slower, and
every figure that counts client CPU on the critical path grows with it. Linux counts
that time per CPU in the ``steal`` column of ``/proc/stat``; the share of it in all CPU
time over the timed steps says how far the machine was from idle.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

__all__ = ["CpuTimes", "StealMeter", "read_cpu_times", "steal_percent"]

PROC_STAT = Path("/proc/stat")


class CpuTimes(NamedTuple):
    """The machine's CPU time so far, in clock ticks: all of it, and the stolen part."""

    total: int
    steal: int


def read_cpu_times(text: str | None = None) -> CpuTimes | None:
    """The first (all-CPU) line of ``/proc/stat`` (or of ``text``); None where there is
    none (not Linux) or it has no steal column (kernels before 2.6.11).

    Example:
        >>> read_cpu_times("cpu  100 0 50 800 10 0 5 35 0 0\\ncpu0 50 0 25 400 5 0 2 18 0 0")
        CpuTimes(total=1000, steal=35)
    """
    if text is None:
        try:
            text = PROC_STAT.read_text()
        except OSError:
            return None
    first = text.split("\n", 1)[0].split()
    if len(first) < 9 or first[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
    # already counted in user and nice, so it is left out of the total
    ticks = [int(field) for field in first[1:9]]
    return CpuTimes(total=sum(ticks), steal=ticks[7])


def steal_percent(before: CpuTimes | None, after: CpuTimes | None) -> float | None:
    """Stolen share of all CPU time between two readings, in percent (None: unknown).

    Example:
        >>> steal_percent(CpuTimes(1000, 35), CpuTimes(1400, 135))
        25.0
    """
    if before is None or after is None or after.total <= before.total:
        return None
    return round(100.0 * (after.steal - before.steal) / (after.total - before.total), 1)


class StealMeter:
    """Measures the stolen share of CPU time inside a ``with`` block (see the module doc).

    Example:
        >>> with StealMeter() as meter:
        ...     _ = sum(range(100_000))
        >>> meter.percent is None or 0.0 <= meter.percent <= 100.0
        True
    """

    def __init__(self) -> None:
        self.percent: float | None = None
        self._before: CpuTimes | None = None

    def __enter__(self) -> StealMeter:
        self._before = read_cpu_times()
        return self

    def __exit__(self, *exc: object) -> None:
        self.percent = steal_percent(self._before, read_cpu_times())
