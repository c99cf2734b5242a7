"""Summary statistics of timing samples (pure Python, no numpy needed)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation; NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratio(value: float, baseline: float) -> float | None:
    """``value / baseline`` rounded to 3 places, ``None`` when it means nothing."""
    if not baseline or math.isnan(baseline) or math.isnan(value):
        return None
    return round(value / baseline, 3)


Histogram = dict[int, int]
"""Latency histogram: whole microseconds -> number of requests."""


def merge(histograms: Iterable[Iterable[tuple[int, int]] | Histogram]) -> Histogram:
    merged: Histogram = {}
    for histogram in histograms:
        pairs = histogram.items() if isinstance(histogram, dict) else histogram
        for value, count in pairs:
            merged[int(value)] = merged.get(int(value), 0) + int(count)
    return merged


def hist_percentile(histogram: Histogram, q: float) -> float:
    """The smallest value at or below which ``q`` percent of the samples fall (NaN if none)."""
    total = sum(histogram.values())
    if not total:
        return math.nan
    rank = max(math.ceil(total * q / 100), 1)
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return float(max(histogram))
