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

import numpy as np
from scipy import stats

# The interval type and the Wilson interval live at the base layer (evaluate uses them too).
from opcircuits.proportions import Interval, wilson_interval

__all__ = ["Interval", "corrected_t_interval", "permutation_p_value", "wilson_interval"]


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


def permutation_p_value(observed: float, null_scores: np.ndarray) -> float:
    """One-sided p-value (null ≥ observed), with the +1 correction so it is never 0."""
    null_scores = np.asarray(null_scores, dtype=np.float64)
    # Round both sides so float noise in equal scores cannot decide a tie.
    count = int(np.sum(np.round(null_scores, 12) >= round(observed, 12)))
    return (count + 1) / (null_scores.size + 1)
