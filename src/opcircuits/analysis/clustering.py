"""Do categories form clusters? PCA 2-D coordinates and silhouette scores (descriptive: fitted on
all problems, no labels involved in the projection)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler


@dataclass
class Clustering:
    coords: np.ndarray  # [N, 2] PCA scores of the standardised features
    explained_variance_ratio: tuple[float, float]
    silhouette: float  # standardised full feature space, euclidean
    silhouette_pca2: float  # in the 2-D PCA plane

    def summary(self) -> dict:
        return {
            "explained_variance_ratio": list(self.explained_variance_ratio),
            "silhouette": self.silhouette,
            "silhouette_pca2": self.silhouette_pca2,
        }


def pca2(xs: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Top-2 principal component scores of `xs` (rows = samples), computed exactly from the
    smaller of the Gram and covariance matrices; signs fixed so runs are reproducible."""
    xc = (xs - xs.mean(axis=0)).astype(np.float64)
    n, d = xc.shape
    if n <= d:
        w, u = np.linalg.eigh(xc @ xc.T)
        order = np.argsort(w)[::-1]
        w, u = np.clip(w[order], 0, None), u[:, order]
        coords = u[:, :2] * np.sqrt(w[:2])
    else:
        w, v = np.linalg.eigh(xc.T @ xc)
        order = np.argsort(w)[::-1]
        w, v = np.clip(w[order], 0, None), v[:, order]
        coords = xc @ v[:, :2]
    if coords.shape[1] < 2:
        coords = np.column_stack([coords, np.zeros(n)])
    # Fix each component's sign: the sample with the largest |score| is positive.
    for j in range(2):
        if coords[np.argmax(np.abs(coords[:, j])), j] < 0:
            coords[:, j] = -coords[:, j]
    total = float(w.sum()) or 1.0
    ratio = (float(w[0]) / total, float(w[1]) / total if w.size > 1 else 0.0)
    return coords, ratio


def cluster_view(X: np.ndarray, y: np.ndarray) -> Clustering:
    xs = StandardScaler().fit_transform(np.asarray(X, dtype=np.float64))
    coords, ratio = pca2(xs)
    if len(np.unique(y)) < 2:
        sil = sil2 = float("nan")
    else:
        sil = float(silhouette_score(xs, y))
        sil2 = float(silhouette_score(coords, y))
    return Clustering(coords, ratio, sil, sil2)
