"""Intervals and p-values used throughout the analysis.

Repeated k-fold scores are not independent (training sets overlap), so a plain t-interval over
fold scores is too narrow. We use the corrected resampled t-interval of Nadeau & Bengio (2003),
which inflates the variance by the test/train size ratio:

    var = (1/J + n_test/n_train) * s²,   CI = mean ± t_{J-1, 0.975} * sqrt(var)

with J = folds × repeats fold scores and s² their sample variance. Paired differences (a probe
minus a control on the same folds) use the same interval on the per-fold differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float


def corrected_t_interval(
    scores: np.ndarray,
    test_fraction: float,
    level: float = 0.95,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> Interval:
    """Mean of per-fold `scores` with the Nadeau–Bengio corrected resampled t-interval.

    `test_fraction` is n_test / n_train of one fold (1 / (k - 1) for k-fold); the interval is
    clipped to `bounds` (accuracies cannot leave [0, 1]).
    """
    scores = np.asarray(scores, dtype=np.float64)
    mean = float(scores.mean())
    if scores.size < 2:
        return Interval(mean, mean, mean)
    s2 = float(scores.var(ddof=1))
    var = (1.0 / scores.size + test_fraction) * s2
    half = float(stats.t.ppf(0.5 + level / 2, scores.size - 1)) * math.sqrt(var)
    return Interval(mean, max(bounds[0], mean - half), min(bounds[1], mean + half))


def wilson_interval(successes: float, n: float, level: float = 0.95) -> Interval:
    """Wilson score interval for a proportion (used for answer accuracy)."""
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def permutation_p_value(observed: float, null_scores: np.ndarray) -> float:
    """One-sided p-value (null ≥ observed), with the +1 correction so it is never 0."""
    null_scores = np.asarray(null_scores, dtype=np.float64)
    # Round both sides so float noise in equal scores cannot decide a tie.
    count = int(np.sum(np.round(null_scores, 12) >= round(observed, 12)))
    return (count + 1) / (null_scores.size + 1)
