"""Timing statistics of repeated runs (stdlib only)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    median: float
    stdev: float  # sample standard deviation; 0.0 for one sample
    minimum: float
    maximum: float

    @property
    def rel_spread(self) -> float:
        """stdev / mean: how steady the runs were (0.02 = 2 %)."""
        return self.stdev / self.mean if self.mean else math.inf


def summarize(samples: list[float] | tuple[float, ...]) -> Summary:
    """Statistics of ``samples``; ValueError when empty or when a sample is negative or not finite."""
    values = [float(s) for s in samples]
    if not values:
        raise ValueError("no samples")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"samples must be finite and >= 0, got {values}")
    return Summary(n=len(values), mean=statistics.fmean(values), median=statistics.median(values),
                   stdev=statistics.stdev(values) if len(values) > 1 else 0.0,
                   minimum=min(values), maximum=max(values))


def rate(count: float, seconds: float) -> float | None:
    """``count / seconds`` (it/s), None when ``seconds`` is not positive."""
    return count / seconds if seconds > 0 else None
