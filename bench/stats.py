"""Percentiles and small summaries (exact: sorts the samples; samples are bounded per step)."""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(q / 100.0 * len(sorted_values))))
    return float(sorted_values[rank - 1])


def summarize(values: Iterable[float], scale: float = 1.0, digits: int = 3) -> dict[str, float | int | None]:
    """count, p50, p95, p99, max (values multiplied by `scale`, e.g. us -> ms)."""
    ordered = sorted(values)
    out: dict[str, float | int | None] = {"count": len(ordered)}
    for name, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        v = percentile(ordered, q)
        out[name] = None if v is None else round(v * scale, digits)
    out["max"] = round(ordered[-1] * scale, digits) if ordered else None
    return out
