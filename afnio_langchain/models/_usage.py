"""Counting every model call: calls, tokens and retries, per model and per purpose, with
the prompt tokens a provider served from its prompt cache, the calls answered from an
LLM cache (no model call made) and the replies cut off by ``max_tokens``.

A process-wide tracker counts everything; :func:`track_usage` opens a scope that
counts only the calls made inside it (on this task and the tasks and threads it
starts, since scopes live in contextvars).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

PURPOSES = ("forward", "backward", "optimizer", "judge")


@dataclass
class UsageCounts:
    """Totals for one (model, purpose) pair.

    Example:
        >>> from afnio_langchain.models import as_model_client, track_usage
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> client = as_model_client(ScriptedChatModel(forward="Paris"))
        >>> with track_usage() as usage:
        ...     _ = client.complete([{"role": "user", "content": "Capital of France?"}])
        >>> counts = usage.by_purpose()["forward"]
        >>> counts
        UsageCounts(calls=1, input_tokens=3, output_tokens=1, retries=0, failures=0, cached_input_tokens=0, cache_hits=0, cut_off=0)

    Attributes:
        calls: Model calls made (a cache hit is not one).
        input_tokens: Prompt tokens of those calls, ``cached_input_tokens`` included.
        output_tokens: Completion tokens.
        retries: Attempts retried after a transient failure.
        failures: Calls that failed for good.
        cached_input_tokens: Prompt tokens the provider reported as read from its prompt
            cache (billed at its cached-input price).
        cache_hits: Calls answered from an LLM cache (``set_llm_cache``, DSPy's cache):
            no model call, no tokens.
        cut_off: Replies the provider ended at ``max_tokens`` (``finish_reason``
            ``"length"``): kept as forward outputs, re-asked as gradients or proposals.
    """

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    retries: int = 0
    failures: int = 0
    cached_input_tokens: int = 0
    cache_hits: int = 0
    cut_off: int = 0

    def add(self, other: UsageCounts) -> None:
        self.calls += other.calls
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.retries += other.retries
        self.failures += other.failures
        self.cached_input_tokens += other.cached_input_tokens
        self.cache_hits += other.cache_hits
        self.cut_off += other.cut_off


class UsageTracker:
    """Thread-safe usage totals keyed by model name and purpose.

    Example:
        >>> from afnio_langchain.models import UsageTracker
        >>> tracker = UsageTracker()
        >>> tracker.record("gpt-4o-mini", "forward", input_tokens=12, output_tokens=3)
        >>> tracker.total().calls
        1
        >>> tracker.by_purpose()["forward"].output_tokens
        3
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: defaultdict[tuple[str, str], UsageCounts] = defaultdict(UsageCounts)

    def record(
        self,
        model: str,
        purpose: str,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        calls: int = 1,
        retries: int = 0,
        failures: int = 0,
        cached_input_tokens: int = 0,
        cache_hits: int = 0,
        cut_off: int = 0,
    ) -> None:
        """Add one call's figures (or retry, failure or cache-hit counts) to the totals."""
        with self._lock:  # added field by field: once per model call, on its hot path
            counts = self._counts[(model, purpose)]
            counts.calls += calls
            counts.input_tokens += input_tokens
            counts.output_tokens += output_tokens
            if retries or failures or cached_input_tokens or cache_hits or cut_off:
                counts.retries += retries
                counts.failures += failures
                counts.cached_input_tokens += cached_input_tokens
                counts.cache_hits += cache_hits
                counts.cut_off += cut_off

    def _add_call(
        self, model: str, purpose: str, input_tokens: int, output_tokens: int,
        cached_input_tokens: int, cut_off: int,
    ) -> None:
        """:meth:`record` of one answered call, its arguments positional (hot path)."""
        with self._lock:
            counts = self._counts[(model, purpose)]
            counts.calls += 1
            counts.input_tokens += input_tokens
            counts.output_tokens += output_tokens
            counts.cached_input_tokens += cached_input_tokens
            counts.cut_off += cut_off

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def _grouped(self, key_index: int) -> dict[str, UsageCounts]:
        out: dict[str, UsageCounts] = {}
        with self._lock:
            for key, counts in self._counts.items():
                out.setdefault(key[key_index], UsageCounts()).add(counts)
        return out

    def by_model(self) -> dict[str, UsageCounts]:
        return self._grouped(0)

    def by_purpose(self) -> dict[str, UsageCounts]:
        return self._grouped(1)

    def total(self) -> UsageCounts:
        total = UsageCounts()
        for counts in self.by_purpose().values():
            total.add(counts)
        return total

    def as_dict(self) -> dict:
        """A JSON-ready summary: totals, by purpose, by model, and each (model, purpose)."""
        with self._lock:
            pairs = [
                {"model": m, "purpose": p, **asdict(c)} for (m, p), c in sorted(self._counts.items())
            ]
        return {
            "total": asdict(self.total()),
            "by_purpose": {k: asdict(v) for k, v in sorted(self.by_purpose().items())},
            "by_model": {k: asdict(v) for k, v in sorted(self.by_model().items())},
            "pairs": pairs,
        }

    def __repr__(self) -> str:
        t = self.total()
        return (
            f"UsageTracker(calls={t.calls}, input_tokens={t.input_tokens}, "
            f"output_tokens={t.output_tokens}, retries={t.retries}, cache_hits={t.cache_hits})"
        )


_GLOBAL = UsageTracker()
_SCOPES: contextvars.ContextVar[tuple[UsageTracker, ...]] = contextvars.ContextVar(
    "afnio_usage_scopes", default=()
)


def get_usage() -> UsageTracker:
    """The process-wide tracker that counts every model call made through this package."""
    return _GLOBAL


@contextlib.contextmanager
def track_usage() -> Iterator[UsageTracker]:
    """Count the calls made inside the ``with`` block (and the tasks/threads it starts).

    Example:
        >>> from afnio_langchain.models import track_usage
        >>> with track_usage() as usage:
        ...     pass  # run a forward and backward pass here
        >>> usage.total().calls
        0
    """
    tracker = UsageTracker()
    token = _SCOPES.set(_SCOPES.get() + (tracker,))
    try:
        yield tracker
    finally:
        _SCOPES.reset(token)


def token_count(value: Any) -> int:
    """A token count from a provider's usage block: a non-negative whole number, else 0.

    A malformed usage block (``"many"``, ``null``, ``-3``, a list) costs the count,
    never the reply it came with.

    Example:
        >>> from afnio_langchain.models._usage import token_count
        >>> [token_count(v) for v in (12, 7.0, "12", "many", None, -3, [1], True)]
        [12, 7, 12, 0, 0, 0, 0, 0]
    """
    if isinstance(value, bool):
        return 0
    if isinstance(value, str):
        value = value.strip()
        return int(value) if value.isdigit() else 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and value.is_integer():
        return max(int(value), 0)
    return 0


def record_usage(model: str, purpose: str, **figures: int) -> None:
    """Record figures on the process tracker and on every open scope."""
    _GLOBAL.record(model, purpose, **figures)
    for tracker in _SCOPES.get():
        tracker.record(model, purpose, **figures)


def record_call(
    model: str,
    purpose: str,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int = 0,
    cut_off: int = 0,
) -> None:
    """:func:`record_usage` of one answered call (once per model call: no keywords
    packed and unpacked on its hot path)."""
    _GLOBAL._add_call(model, purpose, input_tokens, output_tokens, cached_input_tokens, cut_off)
    for tracker in _SCOPES.get():
        tracker._add_call(model, purpose, input_tokens, output_tokens, cached_input_tokens, cut_off)
