"""Within- vs between-category cosine similarity, raw and mean-centred.

Raw cosine between LLM activations is often dominated by one direction shared by all inputs, so
every pair looks similar; subtracting the mean activation (over all problems) removes it. How much
the shared direction weighs is measured, not assumed: `mean_direction_share` is the share of the
thoughts' summed squared norm that lies along their mean direction. The statistic
is mean within-category cosine − mean between-category cosine over distinct pairs; its p-value
comes from permuting the category labels (class sizes fixed), one-sided for within > between.
"""

from __future__ import annotations

import numpy as np

from opcircuits.analysis.stats import permutation_p_value


def _cosine_matrix(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    Xn = X / np.where(norms == 0, 1.0, norms)
    return (Xn @ Xn.T).astype(np.float64)


def _within_sums(S: np.ndarray, onehots: np.ndarray) -> np.ndarray:
    """Sum of S over distinct same-label pairs, for each one-hot matrix in `onehots` [P, N, C]."""
    total = np.einsum("pnc,nm,pmc->p", onehots, S, onehots, optimize=True)
    return (total - np.trace(S)) / 2


def within_between(
    X: np.ndarray, y: np.ndarray, n_classes: int, permutations: int, seed: int
) -> dict:
    out: dict = {}
    for kind, data in (("raw", X), ("centred", X - X.mean(axis=0))):
        S = _cosine_matrix(data)
        n = len(y)
        counts = np.bincount(y, minlength=n_classes)
        n_within = int(np.sum(counts * (counts - 1) // 2))
        n_all = n * (n - 1) // 2
        n_between = n_all - n_within
        total = (S.sum() - np.trace(S)) / 2
        eye = np.eye(n_classes)

        def stat(
            within_sum: np.ndarray,
            n_within: int = n_within,
            n_between: int = n_between,
            total: float = total,
        ) -> np.ndarray:
            return within_sum / n_within - (total - within_sum) / n_between

        w_obs = _within_sums(S, eye[y][None])[0]
        rng = np.random.default_rng([seed, 3])
        null = np.empty(permutations)
        for start in range(0, permutations, 50):  # chunks keep the one-hot stack small
            chunk = [eye[y[rng.permutation(n)]] for _ in range(min(50, permutations - start))]
            null[start : start + len(chunk)] = stat(_within_sums(S, np.stack(chunk)))
        observed = float(stat(np.array([w_obs]))[0])
        # Mean cosine between each pair of categories (distinct pairs only on the diagonal).
        matrix = np.zeros((n_classes, n_classes))
        for a in range(n_classes):
            for b in range(n_classes):
                block = S[np.ix_(y == a, y == b)]
                if a == b:
                    k = block.shape[0]
                    matrix[a, b] = (block.sum() - np.trace(block)) / max(k * (k - 1), 1)
                else:
                    matrix[a, b] = block.mean() if block.size else float("nan")
        out[kind] = {
            "within": float(w_obs / n_within) if n_within else float("nan"),
            "between": float((total - w_obs) / n_between) if n_between else float("nan"),
            "difference": observed,
            "p_value": permutation_p_value(observed, null) if permutations else None,
            "category_matrix": matrix.tolist(),
        }
    out["raw"]["mean_direction_share"] = mean_direction_share(X)
    return out


def mean_direction_share(X: np.ndarray) -> float:
    """Σ (x·u)² / Σ |x|² with u the unit mean vector (1: every row along the mean, ~1/d: none)."""
    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    total = float(np.sum(X * X))
    if norm == 0 or total == 0:
        return 0.0
    return float(np.sum((X @ (mean / norm)) ** 2) / total)
