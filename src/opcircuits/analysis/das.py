"""The numbers of distributed alignment search (numpy and scipy): interchange intervention
accuracy with its Wilson interval, the paired exact test of a subspace against its random
control, and the illusion diagnostics of Makelov et al. (ICLR 2024).

IIA of a set of pairs = the share of its pairs whose intervened answer equals the partner's gold
answer. Pairs whose base and partner have the same gold answer are left out (an unchanged answer
would count as following the partner); `das.json` reports how many were left out.

Illusion diagnostics of a subspace W [r, D] at a site, from the base states there: the share of
the states' variance W captures, W's squared projection onto each of the top principal
components, and `in_span`: the share of W lying in the span of the components that hold 99% of
the variance. A direction partly outside that span moves the state where the data never go (a
dormant direction): patching it can succeed without the model using it for the variable
(`dormant = in_span < 0.9`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from opcircuits.proportions import wilson_interval

SPAN_SHARE = 0.99  # variance held by the components whose span counts as "where the data lie"
DORMANT_BELOW = 0.9  # a subspace with less of itself in that span is flagged


def follows(values: Sequence[float | None], targets: Sequence[float | None]) -> np.ndarray:
    """Per pair: the intervened answer's value equals the target (the partner's gold answer)."""
    return np.array([v is not None and v == t for v, t in zip(values, targets, strict=True)])


def iia(hits: np.ndarray) -> dict[str, Any]:
    """IIA of a set of pairs with its 95% Wilson interval."""
    n, k = int(hits.size), int(hits.sum())
    ci = wilson_interval(k, n)
    return {"iia": ci.mean, "low": ci.low, "high": ci.high, "n": n, "hits": k}


def paired_test(hits: np.ndarray, control: np.ndarray) -> dict[str, Any]:
    """Exact one-sided McNemar test on the same pairs: is the subspace's IIA above the control's?
    Only discordant pairs count; p = P(X ≥ b) for X ~ Binomial(b + c, 1/2)."""
    from scipy.stats import binomtest

    b = int((hits & ~control).sum())
    c = int((~hits & control).sum())
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="greater").pvalue)
    return {"test": "exact McNemar, one-sided", "better": b, "worse": c, "p": p}


def pc_diagnostics(states: np.ndarray, basis: np.ndarray, top: int = 5) -> dict[str, Any]:
    """How the subspace `basis` [r, D] sits among the principal components of `states` [N, D]."""
    x = np.asarray(states, dtype=np.float64)
    W = np.asarray(basis, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(W).all()):
        raise ValueError("states or basis hold NaN or inf")
    x = x - x.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    var = s**2
    total = float(var.sum())
    proj = (W @ vt.T) ** 2  # [r, components]: squared projection of each direction on each PC
    r = W.shape[0]
    if total <= 0:  # constant states: no direction holds variance, none lies in the data's span
        return {"variance_explained": 0.0, "in_span": 0.0, "span_components": 0,
                "top_pc_projection": [], "dormant": True}  # fmt: skip
    k = int(np.searchsorted(np.cumsum(var) / total, SPAN_SHARE) + 1)
    captured = float(((x @ W.T) ** 2).sum())
    in_span = float(proj[:, :k].sum() / r)
    return {
        "variance_explained": captured / total,
        "in_span": in_span,
        "span_components": k,
        "top_pc_projection": [float(v) for v in proj[:, :top].sum(0) / r],
        "dormant": in_span < DORMANT_BELOW,
    }
