"""Small statistics helpers for load reports."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p99 / max in milliseconds, rounded for reports."""
    return {
        name: round(percentile(latencies_s, q) * 1000, 2)
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
    }
