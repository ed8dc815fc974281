"""Value probes: ridge regression from one (position, layer) state to a step's result r_j,
cross-validated, with a permutation null shared by every cell of the heat map.

Why ridge on the value (not logistic on the value as a class): results are ordered numbers with
many distinct values (1–50 on `demo-arith`, thousands on GSM8K), so as classes most would have a
handful of problems each; "the state holds r_j linearly" is a linear read-out of the magnitude.
The score is the out-of-fold R² (1 − SSE/SST, SST about the cell's mean): 0 for a probe no
better than the mean, negative when worse.

Every ridge fit here is linear in its targets once its penalty is fixed, so the observed targets
and all B permuted ones (and every step whose problems are the same) are fitted together from
one eigendecomposition per fold: the penalty is chosen per target column by the training fold's
exact leave-one-out error (Golub et al. 1979's shortcut; the predictions are scikit-learn's
`RidgeCV` on standardized features, tested), the same rule for the observed labels and for every
permutation, so the null repeats the whole procedure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from opcircuits.analysis.workers import one_blas_thread

# Penalties, relative to the training fold's size (the features are standardized, so XᵀX's
# diagonal is n_train): from nearly unpenalized to nearly the mean.
ALPHA_GRID = tuple(10.0**e for e in (-3, -2, -1, 0, 1, 2))
# The smallest fold sizes a cell needs to be fitted at all.
MIN_TRAIN, MIN_TEST = 8, 2


@dataclass(frozen=True)
class CellFit:
    r2: float  # out-of-fold R² on the observed targets
    null: np.ndarray  # [B] the same on each permutation's targets


def stratified_folds(strata: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index of each row: rows shuffled within each stratum, then dealt round-robin, so every
    fold holds the same share of each stratum (n_steps here)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(strata), dtype=np.int64)
    offset = 0
    for s in np.unique(strata):
        rows = np.flatnonzero(strata == s)
        rows = rows[rng.permutation(len(rows))]
        fold[rows] = (np.arange(len(rows)) + offset) % k
        offset += len(rows)  # the next stratum continues the round, so folds stay balanced
    return fold


def within_strata_permutations(strata: np.ndarray, b: int, seed: int) -> np.ndarray:
    """[b, n] row permutations that move each row only within its stratum: the null keeps what the
    stratum (the number of steps) explains, and every cell uses the same b permutations."""
    rng = np.random.default_rng(seed)
    out = np.tile(np.arange(len(strata)), (b, 1))
    for s in np.unique(strata):
        rows = np.flatnonzero(strata == s)
        for p in out:
            p[rows] = rows[rng.permutation(len(rows))]
    return out


def _spectrum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """u, s of a = u·diag(s)·vᵀ and b·v, from the eigendecomposition of the smaller Gram matrix
    (n×n for wide states: several times faster than the SVD of a 480 × 2048 matrix); directions
    with no variance are dropped (every penalty shrinks them to nothing)."""
    wide = a.shape[0] <= a.shape[1]
    w, vecs = np.linalg.eigh(a @ a.T if wide else a.T @ a)
    keep = w > 1e-10 * max(float(w.max(initial=0.0)), 1e-300)
    w, vecs = w[keep], vecs[:, keep]
    s = np.sqrt(w)
    if wide:
        return vecs, s, (b @ a.T) @ vecs / s
    return a @ vecs / s, s, b @ vecs


def _fold_predictions(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray) -> np.ndarray:
    """Test predictions [n_te, T] for every target column of `y_tr` [n_tr, T], each with the
    penalty its own leave-one-out error prefers."""
    mu, sd = x_tr.mean(0), x_tr.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)  # a constant feature carries nothing; keep it finite
    a, b = (x_tr - mu) / sd, (x_te - mu) / sd
    y_mean = y_tr.mean(0)
    yc = y_tr - y_mean
    u, s, bv = _spectrum(a, b)
    uty = u.T @ yc
    n = len(a)
    best_err = np.full(y_tr.shape[1], np.inf)
    best = np.tile(y_mean, (len(b), 1))  # the mean, should no penalty give a finite error
    for rel in ALPHA_GRID:
        alpha = rel * n
        shrink = s**2 / (s**2 + alpha)
        fitted = u @ (shrink[:, None] * uty)
        leverage = (u**2) @ shrink + 1.0 / n  # + the intercept's share
        loo = (yc - fitted) / np.maximum(1.0 - leverage, 1e-9)[:, None]
        err = (loo**2).sum(0)
        pred = bv @ ((s / (s**2 + alpha))[:, None] * uty) + y_mean
        better = err < best_err  # ties keep the weaker penalty (the grid ascends)
        best_err = np.where(better, err, best_err)
        best[:, better] = pred[:, better]
    return best


def fit_columns(x: np.ndarray, targets: np.ndarray, fold: np.ndarray) -> np.ndarray | None:
    """Out-of-fold R² of ridge x → each column of `targets` [n, T] (each column's own penalty
    and SST; NaN for a column that does not vary); None when a fold is too small."""
    k = int(fold.max()) + 1 if len(fold) else 0
    if k < 2:
        return None
    x = np.asarray(x, dtype=np.float64)
    pred = np.empty_like(targets, dtype=np.float64)
    for f in range(k):
        te, tr = fold == f, fold != f
        if tr.sum() < MIN_TRAIN or te.sum() < MIN_TEST:
            return None
        pred[te] = _fold_predictions(x[tr], targets[tr], x[te])
    sst = ((targets - targets.mean(0)) ** 2).sum(0)
    sse = ((targets - pred) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):  # a constant column: NaN, not tested
        return np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)


def fit_cell(x: np.ndarray, targets: np.ndarray, fold: np.ndarray) -> CellFit | None:
    """`fit_columns` on [n, 1 + B] targets: column 0 observed, the rest permuted."""
    r2 = fit_columns(x, targets, fold)
    if r2 is None or not np.isfinite(r2[0]):
        return None
    return CellFit(float(r2[0]), r2[1:].astype(np.float64))


def probe_cells(
    hidden: np.ndarray,
    positions: Sequence[str],
    layers: Sequence[int],
    results: list[list[float]],
    strata: np.ndarray,
    *,
    folds: int,
    permutations: int,
    seed: int,
    min_stratum: int | None = None,
) -> list[dict]:
    """Every (position, layer, step j) cell: rows = the problems with at least j steps
    (`n_steps` None); with `min_stratum`, also the same on the problems of each step count n
    that has at least that many (`n_steps` n, j ≤ n), where r_j is an intermediate result for
    j < n and the answer for j = n. R² and its null, the same permutations for every cell.
    `hidden` [n, P, L, D] for these problems; `results[i]` their r_1…r_n (all known)."""
    fold = stratified_folds(strata, folds, seed)
    perms = within_strata_permutations(strata, permutations, seed + 1)
    everyone = np.arange(len(results))
    subsets: list[tuple[int | None, np.ndarray]] = [(None, everyone)]
    counts = {int(s): int((strata == s).sum()) for s in np.unique(strata)}
    if min_stratum is not None and len(counts) > 1:
        subsets += [(s, np.flatnonzero(strata == s)) for s, c in counts.items() if c >= min_stratum]
    cells: list[dict] = []
    with one_blas_thread():  # small matrices: one BLAS thread is faster, and bit-stable
        for n_steps, subset in subsets:
            longest = max((len(results[i]) for i in subset), default=0)
            # Steps with the same rows share their fits (one decomposition per fold and cell).
            groups: dict[tuple[int, ...], list[int]] = {}
            for j in range(1, longest + 1):
                rows = tuple(int(i) for i in subset if len(results[i]) >= j)
                groups.setdefault(rows, []).append(j)
            found = {}
            for rows, steps in groups.items():
                found.update(_group_cells(steps, np.array(rows, dtype=np.int64), hidden,
                                          positions, layers, results, fold, perms))  # fmt: skip
            for j in sorted({j for _, j in found}):
                for key in [k for k in found if k[1] == j]:
                    cells.append({**found[key], "n_steps": n_steps})
    return cells


def _group_cells(
    steps: list[int],
    rows: np.ndarray,
    hidden: np.ndarray,
    positions: Sequence[str],
    layers: Sequence[int],
    results: list[list[float]],
    fold: np.ndarray,
    perms: np.ndarray,
) -> dict[tuple[int, int], dict]:
    """The cells of `steps` on `rows` (the problems with at least that many steps), keyed by
    (cell index, step): every (position, layer), all steps' targets fitted together."""
    if len(rows) == 0:
        return {}
    blocks = []
    for j in steps:
        value = np.full(len(results), np.nan)
        value[rows] = [results[i][j - 1] for i in rows]
        # Row i's permuted target is its permutation partner's: same step count, so an r_j too.
        blocks.append(np.column_stack([value[rows], *(value[p[rows]] for p in perms)]))
    targets, width = np.concatenate(blocks, axis=1), 1 + len(perms)
    out = {}
    for pi, pos in enumerate(positions):
        for li, layer in enumerate(layers):
            r2 = fit_columns(hidden[rows, pi, li], targets, fold[rows])
            for k, j in enumerate(steps):
                block = None if r2 is None else r2[k * width : (k + 1) * width]
                valid = block is not None and np.isfinite(block[0])
                out[(pi * len(layers) + li, j)] = {
                    "position": pos, "layer": int(layer), "step": j, "n": int(len(rows)),
                    "r2": float(block[0]) if valid else None,
                    "null": block[1:].astype(np.float64) if valid else None,
                }  # fmt: skip
    return out
