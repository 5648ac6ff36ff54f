"""The critical-path bound of one training step: the shortest wall time any scheduler
could reach against a server with a fixed latency per call and a delay per output token.

A step of a pipeline of ``depth`` model calls is ``depth`` dependent forward calls,
``depth`` dependent backward calls and one optimizer round; calls at the same depth
(minibatch items, parameters) are independent. With at most ``limit`` calls in flight
and ``n`` calls of equal duration ``t`` spread over ``d`` dependent levels, no schedule
beats ``max(d, ceil(n / limit)) * t``. Durations come from the server's settings and
the longest reply of each phase, read from the calls the responder answered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from benchmarks.responder import (
    BACKWARD,
    FORWARD,
    OPTIMIZER,
    TEXTGRAD_BACKWARD,
    TEXTGRAD_OPTIMIZER,
    CallRecord,
)

PHASE_KINDS = {
    FORWARD: (FORWARD,),
    BACKWARD: (BACKWARD, TEXTGRAD_BACKWARD),
    OPTIMIZER: (OPTIMIZER, TEXTGRAD_OPTIMIZER),
}
"""Which calls make each phase (either library's); condensations and TextGrad's gradient
reductions are extra rounds a step may choose to make, so they are not in the bound."""

__all__ = ["Phase", "critical_path_bound", "waves"]


def waves(calls: int, limit: int, depth: int = 1) -> int:
    """Rounds of ``limit`` concurrent calls needed for ``calls`` calls over ``depth``
    dependent levels (0 when there are no calls).

    Example:
        >>> waves(32, 8, depth=3), waves(96, 64, depth=3), waves(3, 64)
        (4, 3, 1)
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if calls <= 0:
        return 0
    return max(depth, math.ceil(calls / limit))


@dataclass(frozen=True)
class Phase:
    """One phase of the bound: its calls, dependent levels, rounds and seconds."""

    name: str
    calls: int
    levels: int
    waves: int
    max_output_tokens: int
    call_seconds: float
    seconds: float


def critical_path_bound(
    records: Sequence[CallRecord],
    *,
    depth: int,
    limit: int,
    latency: float,
    per_token_latency: float,
) -> dict:
    """The bound of one training step of a ``depth``-stage pipeline, from the calls made.

    Forward and backward phases have ``depth`` levels; the optimizer phase is one
    round of update calls. For TextGrad's calls this is the limit of the same pipeline
    had its independent calls run at once (its own step runs them one after another).

    Returns:
        ``{"seconds": ..., "phases": [Phase as dict, ...]}``.

    Example:
        >>> from benchmarks.responder import CallRecord
        >>> calls = [CallRecord("forward", 5, 10, 0.0)] * 6 + [CallRecord("optimizer", 5, 4, 0.0)]
        >>> critical_path_bound(calls, depth=3, limit=64, latency=0.1,
        ...                     per_token_latency=0.01)["seconds"]
        0.74
    """
    phases = []
    for name, levels in ((FORWARD, depth), (BACKWARD, depth), (OPTIMIZER, 1)):
        mine = [r for r in records if r.kind in PHASE_KINDS[name]]
        n_waves = waves(len(mine), limit, levels)
        tokens = max((r.output_tokens for r in mine), default=0)
        call_seconds = latency + per_token_latency * tokens
        phases.append(
            Phase(name, len(mine), levels, n_waves, tokens, call_seconds, n_waves * call_seconds)
        )
    return {
        "seconds": round(sum(p.seconds for p in phases), 6),
        "phases": [asdict(p) for p in phases],
    }
