"""Do categories form clusters? PCA 2-D coordinates and silhouette scores (fitted on all problems,
no labels involved in the projection), with a label-permutation null for the silhouette.

Silhouette (Rousseeuw 1987) read per Kaufman & Rousseeuw (1990): ≤ 0.25 no substantial structure,
0.26–0.50 weak (could be artificial), 0.51–0.70 reasonable, > 0.70 strong. On high-dimensional
states even random labels score near 0, so the p-value asks whether the categories cluster more
than random groups of the same sizes would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler

from opcircuits.analysis.stats import permutation_p_value

NULL_CHUNK = 100  # labellings per matrix product of the silhouette null (bounds its memory)


@dataclass
class Clustering:
    coords: np.ndarray  # [N, 2] PCA scores of the standardized features
    explained_variance_ratio: tuple[float, float]
    silhouette: float  # standardized full feature space, euclidean
    silhouette_pca2: float  # in the 2-D PCA plane
    silhouette_p: float | None = None  # label-permutation p for the full-space silhouette
    silhouette_null_q95: float | None = None

    def summary(self) -> dict:
        return {
            "explained_variance_ratio": list(self.explained_variance_ratio),
            "silhouette": self.silhouette,
            "silhouette_pca2": self.silhouette_pca2,
            "silhouette_p": self.silhouette_p,
            "silhouette_null_q95": self.silhouette_null_q95,
        }


def pca2(xs: np.ndarray, gram: np.ndarray | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """Top-2 principal component scores of `xs` (rows = samples), computed exactly from the
    smaller of the Gram and covariance matrices; signs fixed so runs are reproducible.
    `gram` is xc @ xc.T of the centred rows when already computed."""
    xc = xs - xs.mean(axis=0)
    n, d = xc.shape
    if n <= d:
        g = gram if gram is not None else (xc @ xc.T).astype(np.float64)
        w, u = np.linalg.eigh(g)
        order = np.argsort(w)[::-1]
        w, u = np.clip(w[order], 0, None), u[:, order]
        coords = u[:, :2] * np.sqrt(w[:2])
    else:
        w, v = np.linalg.eigh((xc.T @ xc).astype(np.float64))
        order = np.argsort(w)[::-1]
        w, v = np.clip(w[order], 0, None), v[:, order]
        coords = (xc @ v[:, :2]).astype(np.float64)
    if coords.shape[1] < 2:
        coords = np.column_stack([coords, np.zeros(n)])
    # Fix each component's sign: the sample with the largest |score| is positive.
    for j in range(2):
        if coords[np.argmax(np.abs(coords[:, j])), j] < 0:
            coords[:, j] = -coords[:, j]
    total = float(w.sum()) or 1.0
    ratio = (float(w[0]) / total, float(w[1]) / total if w.size > 1 else 0.0)
    return coords, ratio


def silhouette(dist: np.ndarray, y: np.ndarray) -> float:
    """Mean silhouette from a distance matrix (as sklearn's, one matrix product per labelling)."""
    return float(silhouettes(dist, y[None])[0])


def silhouettes(dist: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Mean silhouette of each labelling in `ys` [P, n] (labels 0…k-1): one matrix product for
    all of them, then per labelling the same arithmetic as `silhouette` used to do one by one."""
    p, n = ys.shape
    k = int(ys.max()) + 1
    onehot = np.zeros((n, p, k))
    onehot[np.arange(n)[:, None], np.arange(p)[None, :], ys.T] = 1.0
    counts = onehot.sum(axis=0)  # [P, k]
    sums = (dist @ onehot.reshape(n, p * k)).reshape(n, p, k)  # summed distance to each category
    rows, cols = np.arange(n)[:, None], np.arange(p)[None, :]
    own = counts[cols, ys.T]  # [n, P]
    a = sums[rows, cols, ys.T] / np.maximum(own - 1, 1)
    mean_other = sums / np.maximum(counts, 1)[None]
    mean_other[rows, cols, ys.T] = np.inf
    mean_other[:, counts == 0] = np.inf
    b = mean_other.min(axis=2)
    s = (b - a) / np.maximum(np.maximum(a, b), 1e-300)
    s[own <= 1] = 0.0
    return s.mean(axis=0)


def silhouette_null(
    dist: np.ndarray, y: np.ndarray, permutations: int, seed: int
) -> tuple[float | None, float | None]:
    """p-value and 95th percentile of the silhouette under random relabelling (sizes kept)."""
    if not permutations:
        return None, None
    rng = np.random.default_rng([seed, 4])
    # Drawn a chunk at a time (the same draws in the same order): all of them at once would be
    # an [permutations, N] array, gigabytes at the largest --permutations.

    def draws(k: int) -> np.ndarray:
        return np.stack([y[rng.permutation(len(y))] for _ in range(k)])

    chunks = range(0, permutations, NULL_CHUNK)
    null = np.concatenate(
        [silhouettes(dist, draws(min(NULL_CHUNK, permutations - i))) for i in chunks]
    )
    return permutation_p_value(silhouette(dist, y), null), float(np.quantile(null, 0.95))


def cluster_view(X: np.ndarray, y: np.ndarray, permutations: int = 0, seed: int = 0) -> Clustering:
    # Standardized columns are centred, so one Gram matrix gives both the PCA and the
    # euclidean distances for the silhouette (float32 product, float64 after).
    xs = StandardScaler().fit_transform(np.asarray(X, dtype=np.float32)).astype(np.float32)
    gram = (xs @ xs.T).astype(np.float64)
    coords, ratio = pca2(xs, gram if xs.shape[0] <= xs.shape[1] else None)
    if len(np.unique(y)) < 2:
        return Clustering(coords, ratio, float("nan"), float("nan"))
    sq = np.diag(gram)
    dist = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2 * gram, 0, None))
    np.fill_diagonal(dist, 0.0)
    sil = float(silhouette_score(dist, y, metric="precomputed"))
    sil2 = float(silhouette_score(coords, y))
    p, q95 = silhouette_null(dist, y, permutations, seed)
    return Clustering(coords, ratio, sil, sil2, p, q95)
