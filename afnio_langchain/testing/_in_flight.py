"""``InFlightCount``: how many calls (or requests) a fake is serving at once, and the most
so far, for the fakes' ``max_concurrent_*`` attributes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class InFlightCount:
    """Calls in progress now and the peak since creation or :meth:`reset_peak`;
    thread-safe. It copies and pickles as a fresh count, so the fake that holds it
    still deep-copies and pickles.

    Example:
        >>> count = InFlightCount()
        >>> with count.counting():
        ...     with count.counting() as answered:
        ...         answered()  # this one's answer is going out: no longer counted
        >>> count.peak
        2
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now = 0
        self._peak = 0

    @property
    def peak(self) -> int:
        """The most calls in progress at once."""
        with self._lock:
            return self._peak

    def reset_peak(self) -> None:
        """Start the peak again from the calls in progress now."""
        with self._lock:
            self._peak = self._now

    @contextmanager
    def counting(self) -> Iterator[Callable[[], None]]:
        """Counts one call while the block runs; calling what it yields ends the count
        early (a server calls it as its answer starts going out: a client waiting for
        that answer may send its next request before the block has ended)."""
        done = False

        def finished() -> None:
            nonlocal done
            with self._lock:
                if not done:
                    done = True
                    self._now -= 1

        with self._lock:
            self._now += 1
            self._peak = max(self._peak, self._now)
        try:
            yield finished
        finally:
            finished()

    def __deepcopy__(self, memo: dict) -> InFlightCount:
        return InFlightCount()

    def __reduce__(self) -> tuple:
        return (InFlightCount, ())


__all__ = ["InFlightCount"]
