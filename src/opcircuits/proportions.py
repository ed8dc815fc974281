"""The interval type and the Wilson score interval of a proportion (answer accuracy), at the base
layer so that `codi/evaluate.py` and the analysis share one implementation."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float


def wilson_interval(successes: float, n: float, level: float = 0.95) -> Interval:
    """Wilson score interval for a proportion (used for answer accuracy)."""
    from scipy import stats

    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))
