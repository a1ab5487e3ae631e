"""Summaries the benchmarks share, so their reports compute a p95 the same way."""

from __future__ import annotations


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (the value below which `share` of the samples fall)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
