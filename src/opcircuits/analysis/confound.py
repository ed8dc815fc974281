"""The step confound, conditioned on: mixed problems need more solution steps than pure ones, so
a probe could read the step count instead of the operations. Helpers for the three answers:

- the strata of `n_steps` (for permutations within them and for within-stratum accuracy),
- a step-matched subsample (every category with the same `n_steps` histogram),
- `n_steps` in bins with enough problems per bin (how well the states decode the count itself).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from opcircuits.analysis.scoring import Fold


def is_matched(y: np.ndarray, n_steps: np.ndarray) -> bool:
    """True when every category has the same `n_steps` histogram."""
    hists = [Counter(n_steps[y == c].tolist()) for c in np.unique(y)]
    return all(h == hists[0] for h in hists[1:])


def matched_subsample(y: np.ndarray, n_steps: np.ndarray, seed: int) -> np.ndarray:
    """Row indices (sorted) of a step-matched subsample: per `n_steps` value, as many problems of
    each category as the rarest category has there, drawn at random (seeded)."""
    rng = np.random.default_rng([seed, 11])
    classes = np.unique(y)
    keep: list[int] = []
    for s in np.unique(n_steps):
        pools = [np.flatnonzero((n_steps == s) & (y == c)) for c in classes]
        k = min(len(p) for p in pools)
        for p in pools:
            keep += rng.choice(p, size=k, replace=False).tolist() if k else []
    return np.array(sorted(keep), dtype=np.int64)


def step_bins(n_steps: np.ndarray, min_count: int) -> tuple[np.ndarray, list[str]]:
    """`n_steps` as class labels: consecutive values merged, from the smallest up, until every
    bin holds at least `min_count` problems (a short last bin joins the one before): "2", "3–4"."""
    counts = Counter(int(v) for v in n_steps)
    groups: list[list[int]] = []
    current: list[int] = []
    for v in sorted(counts):
        current.append(v)
        if sum(counts[x] for x in current) >= min_count:
            groups.append(current)
            current = []
    if current:
        if groups:
            groups[-1] += current
        else:
            groups.append(current)
    index = {v: i for i, g in enumerate(groups) for v in g}
    names = [str(g[0]) if len(g) == 1 else f"{g[0]}–{g[-1]}" for g in groups]
    return np.array([index[int(v)] for v in n_steps], dtype=np.int64), names


def fold_strata(folds: list[Fold], n_steps: np.ndarray, repeat: int = 0) -> list[np.ndarray]:
    """Index groups (test fold × `n_steps` value) of one repeat: permuting labels within them
    keeps every fold's class counts and every label's step count."""
    groups = []
    for f in folds:
        if f.repeat != repeat:
            continue
        for s in np.unique(n_steps[f.test]):
            groups.append(f.test[n_steps[f.test] == s])
    return groups


def within_strata(
    y: np.ndarray, n_steps: np.ndarray, folds: list[Fold], preds: list[np.ndarray]
) -> dict:
    """Out-of-fold accuracy within each `n_steps` stratum against the stratum's majority share,
    the most any function of the step count alone can score there (pooled over repeats)."""
    hit = np.zeros(len(y))
    seen = np.zeros(len(y))
    for fold, pred in zip(folds, preds, strict=True):
        hit[fold.test] += pred == y[fold.test]
        seen[fold.test] += 1
    acc = hit / np.maximum(seen, 1)
    rows = []
    for s in np.unique(n_steps):
        m = n_steps == s
        counts = np.bincount(y[m], minlength=int(y.max()) + 1)
        rows.append(
            {
                "n_steps": int(s),
                "n": int(m.sum()),
                "accuracy": float(acc[m].mean()),
                "step_only_ceiling": float(counts.max() / m.sum()),
            }
        )
    n = len(y)
    pooled_acc = sum(r["accuracy"] * r["n"] for r in rows) / n
    ceiling = sum(r["step_only_ceiling"] * r["n"] for r in rows) / n
    return {
        "strata": rows,
        "accuracy": pooled_acc,
        "step_only_ceiling": ceiling,
        "above_ceiling": pooled_acc - ceiling,
    }
