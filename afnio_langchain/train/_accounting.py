"""Usage and cost of a training run: usage totals saved to and restored from JSON
(so a resumed run keeps counting), and money from a small price table.

Prices are USD per million tokens ``(input, output)`` or ``(input, output, cached
input)``, matched on the model name
(exact, else the longest known prefix: ``gpt-4o-mini-2024-07-18`` uses
``gpt-4o-mini``). They change: pass your own table for real budgets. Models not in
the table cost 0 and are listed as unpriced, so a report never shows a made-up figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from afnio_langchain.models import UsageCounts, UsageTracker

Prices = Mapping[str, tuple[float, ...]]
"""Model name -> (USD per 1M input tokens, USD per 1M output tokens[, USD per 1M cached
input tokens]). Without a cached price, cached input tokens cost the input price."""

DEFAULT_PRICES: dict[str, tuple[float, ...]] = {
    "gpt-4o-mini": (0.15, 0.60, 0.075),
    "gpt-4o": (2.50, 10.00, 1.25),
    "gpt-4.1": (2.00, 8.00, 0.50),
    "gpt-4.1-mini": (0.40, 1.60, 0.10),
    "gpt-4.1-nano": (0.10, 0.40, 0.025),
    "o4-mini": (1.10, 4.40, 0.275),
    # Local and fake models are free.
    "smollm2-135m-instruct": (0.0, 0.0),
    "scripted": (0.0, 0.0),
}
"""List prices at the time of writing, for rough estimates only."""

BUDGET_STOP = "budget: "
"""How the stop reason of a run that a budget (``max_calls``, ``max_tokens``,
``max_cost``) stopped begins; a resumed run with a larger budget continues it."""

_FIGURES = tuple(f.name for f in fields(UsageCounts))
"""The counted figures; a row saved before a figure existed reads it as 0."""


def usage_pairs(tracker: UsageTracker) -> list[dict[str, Any]]:
    """The tracker's per-(model, purpose) totals as JSON-ready rows."""
    return list(tracker.as_dict()["pairs"])


def usage_from_pairs(pairs: Iterable[Mapping[str, Any]]) -> UsageTracker:
    """A tracker holding the totals of ``pairs`` (rows from :func:`usage_pairs`).

    Raises:
        ValueError: A row is malformed.
    """
    tracker = UsageTracker()
    for n, row in enumerate(pairs):
        if not isinstance(row, Mapping) or not isinstance(row.get("model"), str) or not isinstance(
            row.get("purpose"), str
        ):
            raise ValueError(f"usage row {n} needs a str 'model' and 'purpose'")
        figures = {}
        for key in _FIGURES:
            value = row.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"usage row {n}: {key} must be a non-negative int")
            figures[key] = value
        tracker.record(row["model"], row["purpose"], **figures)
    return tracker


def merge_usage(*trackers: UsageTracker) -> UsageTracker:
    """One tracker with the sums of ``trackers``.

    Example:
        >>> from afnio_langchain.models import UsageCounts, UsageTracker
        >>> from afnio_langchain.train._accounting import merge_usage
        >>> a, b = UsageTracker(), UsageTracker()
        >>> a.record("m", "forward", input_tokens=3)
        >>> b.record("m", "forward", input_tokens=4)
        >>> merge_usage(a, b).total().input_tokens
        7
    """
    rows = [row for tracker in trackers for row in usage_pairs(tracker)]
    return usage_from_pairs(rows)


def price_of(model: str, prices: Prices) -> tuple[float, ...] | None:
    """The ``(input, output)`` price of ``model``: exact match, else longest prefix."""
    if model in prices:
        return prices[model]
    matches = [name for name in prices if model.startswith(name)]
    if not matches:
        return None
    return prices[max(matches, key=len)]


@dataclass(frozen=True)
class CostReport:
    """Money spent, in USD, from token counts and a price table.

    Attributes:
        total: All calls.
        by_purpose: ``forward``, ``backward``, ``optimizer``, ``judge``.
        by_model: Per model name.
        unpriced: Models with no price (counted as 0).

    Example:
        >>> from afnio_langchain.models import UsageCounts, UsageTracker
        >>> from afnio_langchain.train import estimate_cost
        >>> usage = UsageTracker()
        >>> usage.record("gpt-4o-mini", "forward", input_tokens=1_000_000, output_tokens=0)
        >>> usage.record("my-model", "backward", input_tokens=10)
        >>> cost = estimate_cost(usage)
        >>> cost.total, cost.unpriced
        (0.15, ('my-model',))
    """

    total: float = 0.0
    by_purpose: dict[str, float] = field(default_factory=dict)
    by_model: dict[str, float] = field(default_factory=dict)
    unpriced: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "currency": "USD",
            "total": self.total,
            "by_purpose": dict(self.by_purpose),
            "by_model": dict(self.by_model),
            "unpriced_models": list(self.unpriced),
        }


def estimate_cost(usage: UsageTracker, prices: Prices | None = None) -> CostReport:
    """The cost of the calls counted in ``usage`` (``prices`` default:
    :data:`DEFAULT_PRICES`)."""
    table = DEFAULT_PRICES if prices is None else prices
    by_purpose: dict[str, float] = {}
    by_model: dict[str, float] = {}
    unpriced: set[str] = set()
    for row in usage_pairs(usage):
        price = price_of(row["model"], table)
        if price is None:
            unpriced.add(row["model"])
            price = (0.0, 0.0)
        cached = min(row.get("cached_input_tokens", 0), row["input_tokens"])
        cached_price = price[2] if len(price) > 2 else price[0]
        cost = (
            (row["input_tokens"] - cached) * price[0]
            + cached * cached_price
            + row["output_tokens"] * price[1]
        ) / 1_000_000
        by_purpose[row["purpose"]] = by_purpose.get(row["purpose"], 0.0) + cost
        by_model[row["model"]] = by_model.get(row["model"], 0.0) + cost
    total = round(sum(by_purpose.values()), 10)
    return CostReport(
        total=total,
        by_purpose={k: round(v, 10) for k, v in sorted(by_purpose.items())},
        by_model={k: round(v, 10) for k, v in sorted(by_model.items())},
        unpriced=tuple(sorted(unpriced)),
    )


def spent_budget(
    usage: UsageTracker,
    prices: Prices | None = None,
    *,
    max_calls: int | None = None,
    max_tokens: int | None = None,
    max_cost: float | None = None,
) -> tuple[str, str] | None:
    """The first budget that ``usage`` has used up (None: that budget is not set), as
    the option's name and the stop reason; None while every budget has some left.

    Example:
        >>> from afnio_langchain.models import UsageTracker
        >>> from afnio_langchain.train._accounting import spent_budget
        >>> usage = UsageTracker()
        >>> usage.record("m", "forward", calls=12)
        >>> spent_budget(usage, max_calls=10)
        ('max_calls', 'budget: 12 calls >= max_calls 10')
        >>> spent_budget(usage, max_calls=20) is None
        True
    """
    total = usage.total()
    tokens = total.input_tokens + total.output_tokens
    if max_calls is not None and total.calls >= max_calls:
        return "max_calls", f"{BUDGET_STOP}{total.calls} calls >= max_calls {max_calls}"
    if max_tokens is not None and tokens >= max_tokens:
        return "max_tokens", f"{BUDGET_STOP}{tokens} tokens >= max_tokens {max_tokens}"
    if max_cost is not None:
        cost = estimate_cost(usage, prices).total
        if cost >= max_cost:
            return "max_cost", f"{BUDGET_STOP}${cost:.4f} >= max_cost ${max_cost}"
    return None


def check_prices(prices: Any) -> dict[str, tuple[float, ...]]:
    """Validate a price table (e.g. read from JSON: ``{"model": [in, out]}`` or
    ``{"model": [in, out, cached_in]}``).

    Raises:
        TypeError: Not a dict of two-number pairs.
        ValueError: A negative price.
    """
    if not isinstance(prices, Mapping):
        raise TypeError(f"prices must be a dict of model -> [input, output], got {type(prices).__name__}")
    out = {}
    for model, pair in prices.items():
        if (
            not isinstance(model, str)
            or not isinstance(pair, (list, tuple))
            or len(pair) not in (2, 3)
            or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in pair)
        ):
            raise TypeError(
                f"price of {model!r} must be [USD per 1M input tokens, per 1M output tokens] "
                "(optionally a third: per 1M cached input tokens)"
            )
        if any(p < 0 for p in pair):
            raise ValueError(f"price of {model!r} must not be negative")
        out[model] = tuple(float(p) for p in pair)
    return out
