"""The three probes (logistic regression, random forest, MLP) as sklearn Pipelines, and the
per-fold work: fit on the training fold only, predict the test fold.

Speed without changing results: hidden states have far more features (2048 × layers) than a
training fold has problems. `SpanPCA` rotates the standardized training rows onto their own span
(an exact PCA computed from the n × n Gram matrix). An L2-penalised linear model's weights always
lie in that span, so logistic regression on the rotated features has the same optimum as on the
raw ones, at a fraction of the cost. The unsupervised prefix (scaler → SpanPCA) never sees labels,
so within one fold it is fitted once and shared by the logistic regression, the MLP, the
shuffled-label control and every permutation of the permutation test (its scaler by the random
forest too), and its per-feature work on each (position, layer) block by every view holding the
block (`FoldPrefixes`). The permutation refits of logistic regression run batched
(`solver.fit_multinomial_batch`, scikit-learn's fit of every permuted labelling at once); the
probe the report reads is scikit-learn's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from opcircuits.analysis.controls import confound_expansion
from opcircuits.analysis.features import View, view_matrix
from opcircuits.analysis.solver import fit_multinomial_batch
from opcircuits.analysis.workers import one_blas_thread

PROBES = ("logreg", "random_forest", "mlp")

# Fixed hyper-parameters (documented in the README; not tuned on the data).
LOGREG_C = 1.0
LOGREG_MAX_ITER = 300
LOGREG_TOL = 1e-4  # scikit-learn's default, stated so the batched refits use the same
RF_TREES = 100
MLP_HIDDEN = (128,)
MLP_ALPHA = 1.0
MLP_MAX_ITER = 200


class SpanPCA(TransformerMixin, BaseEstimator):
    """Exact PCA onto the span of the centred training rows, via the Gram matrix.

    When there are fewer rows than features this yields min(n - 1, rank) components computed in
    O(n² d) instead of a full SVD; otherwise it only centres (the identity rotation).
    """

    def __init__(self, rtol: float = 1e-6) -> None:
        self.rtol = rtol

    def fit(self, X: np.ndarray, y: object = None) -> SpanPCA:
        self._fit(X)
        return self

    def fit_transform(self, X: np.ndarray, y: object = None, **_: object) -> np.ndarray:
        return self._fit(X)

    def _fit(self, X: np.ndarray) -> np.ndarray:
        """Fit; return the training rows' coordinates (U·sqrt(w), no extra product needed)."""
        X = np.asarray(X, dtype=np.float32)
        self.mean_ = X.mean(axis=0)
        return self.fit_centred(X - self.mean_)

    def fit_centred(self, xc: np.ndarray) -> np.ndarray:
        """`_fit` after the centring: `xc` is the training rows minus their mean (float32)."""
        n, d = xc.shape
        if n >= d:
            self.train_ = None
            return xc
        # Components are train_.T @ scale_ ([d, r], orthonormal); they are never formed:
        # projecting through the training rows costs n·d per row instead of r·d after an n·d·r
        # product.
        self.train_ = xc
        coords, self.scale_ = span_of_gram((xc @ xc.T).astype(np.float64), self.rtol)
        return coords

    def transform(self, X: np.ndarray) -> np.ndarray:
        return self.transform_centred(np.asarray(X, dtype=np.float32) - self.mean_)

    def transform_centred(self, xc: np.ndarray) -> np.ndarray:
        """`transform` of rows already centred by the training mean."""
        return xc if self.train_ is None else (xc @ self.train_.T) @ self.scale_


def span_of_gram(gram: np.ndarray, rtol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """The training rows' span coordinates U·sqrt(w) from their Gram matrix (float64), and the
    scale U / sqrt(w) that maps rows' products with the training rows to coordinates."""
    n = len(gram)
    w, u = np.linalg.eigh(gram)
    order = np.argsort(w)[::-1]
    w, u = w[order], u[:, order]
    keep = w > rtol * max(float(w[0]), 1e-30)
    if not keep.any():
        # Every training row is the same (e.g. the bot token's embedding at layer 0): one
        # constant-zero coordinate, so a classifier falls back to its intercept.
        return np.zeros((n, 1), dtype=np.float32), np.zeros((n, 1), dtype=np.float32)
    scale = (u[:, keep] / np.sqrt(w[keep])).astype(np.float32)
    return (u[:, keep] * np.sqrt(w[keep])).astype(np.float32), scale


def logreg(seed: int) -> LogisticRegression:
    return LogisticRegression(
        C=LOGREG_C, tol=LOGREG_TOL, max_iter=LOGREG_MAX_ITER, random_state=seed
    )


def probe_pipeline(name: str, seed: int) -> Pipeline:
    """The Pipeline each probe is, scaler inside (what the README documents)."""
    if name == "logreg":
        return Pipeline([("scale", StandardScaler()), ("span", SpanPCA()), ("clf", logreg(seed))])
    if name == "random_forest":
        # log2(d) candidate features per split (sklearn's other standard setting): with
        # thousands of features it is several times faster than sqrt(d).
        rf = RandomForestClassifier(
            n_estimators=RF_TREES, max_features="log2", random_state=seed, n_jobs=1
        )
        return Pipeline([("scale", StandardScaler()), ("clf", rf)])
    if name == "mlp":
        mlp = MLPClassifier(
            hidden_layer_sizes=MLP_HIDDEN,
            alpha=MLP_ALPHA,
            # Full-batch L-BFGS: on a few hundred problems it converges faster and more
            # reliably than Adam, and needs no held-out early-stopping split.
            solver="lbfgs",
            max_iter=MLP_MAX_ITER,
            random_state=seed,
        )
        return Pipeline([("scale", StandardScaler()), ("span", SpanPCA()), ("clf", mlp)])
    raise ValueError(f"unknown probe {name!r}")


@dataclass
class FoldOutput:
    """Predictions on one test fold, keyed by name; plus permutation-test scores."""

    # "logreg", "mlp", "random_forest", "shuffled_labels", "control_task:<probe>", "incremental"
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    # probe → correct counts on the test fold under each permutation [n_permutations]
    permutation_correct: dict[str, np.ndarray] = field(default_factory=dict)
    not_converged: int = 0


@dataclass
class Prefix:
    """One view's label-free prefix on one fold, as (training rows, test rows): `z` the span
    coordinates (scaler → SpanPCA), `x` the scaled features (the forest's input; None when no
    forest is fitted)."""

    z: tuple[np.ndarray, np.ndarray]
    x: tuple[np.ndarray, np.ndarray] | None


def prefix(X: np.ndarray, train: np.ndarray, test: np.ndarray, with_x: bool = True) -> Prefix:
    """The prefix step by step, as the Pipelines compute it: the scaled features are the random
    forest's input too (its pipeline starts with the same scaler, fitted on the same rows)."""
    scale, span = StandardScaler(), SpanPCA()
    x = (scale.fit_transform(X[train]), scale.transform(X[test]))
    return Prefix((span.fit_transform(x[0]), span.transform(x[1])), x if with_x else None)


class ProblemFeatures:
    """What every fold of one problem reads from its rows of the states [n, P, L, D] (positions
    × layers as given): each (position, layer) block as float32, and each pooled view's matrix
    (`view_matrix`), made once (tasks keep one per worker and problem)."""

    def __init__(self, states: np.ndarray, positions: list[str], layers: list[int]) -> None:
        self.states = states
        self.positions, self.layers = list(positions), list(layers)
        self._blocks: dict[tuple[int, int], np.ndarray] = {}
        self._pooled: dict[View, np.ndarray] = {}

    def block(self, cell: tuple[int, int]) -> np.ndarray:
        X = self._blocks.get(cell)
        if X is None:
            X = np.ascontiguousarray(self.states[:, cell[0], cell[1], :], dtype=np.float32)
            X.flags.writeable = False
            self._blocks[cell] = X
        return X

    def pooled(self, view: View) -> np.ndarray:
        X = self._pooled.get(view)
        if X is None:
            X = view_matrix(self.states, view, self.positions, self.layers)
            X.flags.writeable = False
            self._pooled[view] = X
        return X


class FoldPrefixes:
    """The prefix of every view of one fold, each (position, layer) block scaled once.

    StandardScaler and SpanPCA's centring work feature by feature, so the scaled and centred
    features of a view that concatenates blocks (a position's layers, `first`, `last`, `concat`)
    are, bit for bit, its blocks' side by side: each block is scaled and centred once per fold
    and shared by every view that holds it (43,008 features per fold of the default store
    instead of 129,024). So are the block's products (its Gram matrix over the training rows, the
    test rows' products with them): a view's are its blocks' summed, which is SpanPCA's own
    product for a one-block view (bit for bit) and equals the product over the side-by-side
    features up to rounding for a wider one (float32 products summed in float64). Each view's
    eigendecomposition and fits stay its own; `mean` (pooled over positions) is computed as its
    own `prefix`. tests/unit/test_analysis_fast.py checks all of it against `prefix`."""

    def __init__(self, features: ProblemFeatures, train: np.ndarray, test: np.ndarray) -> None:
        self.features = features
        self.train, self.test = train, test
        # (position, layer) → [centred train, centred test, (scaled train, scaled test) | None]
        self._blocks: dict[tuple[int, int], list] = {}

    def view(self, view: View, with_x: bool) -> Prefix:
        features = self.features
        if view.pool != "none":
            return prefix(features.pooled(view), self.train, self.test, with_x)
        cells = [
            (features.positions.index(p), features.layers.index(layer))
            for p in view.positions
            for layer in view.layers
        ]  # view_matrix's column order
        blocks = [self._block(cell, with_x) for cell in cells]

        def side_by_side(parts: list[np.ndarray]) -> np.ndarray:
            return parts[0] if len(parts) == 1 else np.hstack(parts)

        width = sum(b[0].shape[1] for b in blocks)
        if len(self.train) >= width:  # SpanPCA only centres
            span = SpanPCA()
            z = (
                span.fit_centred(side_by_side([b[0] for b in blocks])),
                span.transform_centred(side_by_side([b[1] for b in blocks])),
            )
        else:
            # SpanPCA from the Gram matrix and the test rows' products with the training rows,
            # summed over the view's blocks: each block's products are computed once per fold
            # for every view that holds it. One block's are SpanPCA's own (bit for bit); a sum
            # over blocks equals the product over the side-by-side features up to rounding.
            gram = np.zeros((len(self.train), len(self.train)))
            cross = np.zeros((len(self.test), len(self.train)))
            for b in blocks:
                g, h = self._products(b)
                gram += g
                cross += h
            coords, scale = span_of_gram(gram)
            z = (coords, cross.astype(np.float32) @ scale)
        x = None
        if with_x:
            x = (side_by_side([b[2][0] for b in blocks]), side_by_side([b[2][1] for b in blocks]))
        return Prefix(z, x)

    def _products(self, block: list) -> tuple[np.ndarray, np.ndarray]:
        """A block's Gram matrix over the training rows and the test rows' products with them
        (float32 products, as SpanPCA's, kept for the other views holding the block)."""
        if len(block) == 3:
            c_tr, c_te = block[0], block[1]
            block += [(c_tr @ c_tr.T).astype(np.float64), (c_te @ c_tr.T).astype(np.float64)]
        return block[3], block[4]

    def _block(self, cell: tuple[int, int], scaled: bool) -> list:
        """[centred train, centred test, (scaled train, scaled test) or None, then the block's
        products once `_products` made them] of one (position, layer)."""
        entry = self._blocks.get(cell)
        if entry is not None and (entry[2] is not None or not scaled):
            return entry
        X = self.features.block(cell)
        scale = StandardScaler()
        x = (scale.fit_transform(X[self.train]), scale.transform(X[self.test]))
        if entry is None:
            mean = x[0].mean(axis=0)  # SpanPCA's, per feature
            entry = self._blocks[cell] = [x[0] - mean, x[1] - mean, None]
        if scaled:  # the forest's input (the same scaler fitted again: the same numbers)
            entry[2] = x
        return entry


def _fit_predict(probe: str, seed: int, pre: Prefix, y_train: np.ndarray) -> np.ndarray:
    """Fit `probe` on the training rows and predict the test rows (on the span coordinates for
    the probes whose pipeline is scaler → SpanPCA → classifier, on the scaled features for the
    forest, whose pipeline is that scaler and the forest)."""
    z, x = pre.z, pre.x
    if len(np.unique(y_train)) == 1:  # e.g. a control task whose questions share a first word
        return np.full(len(z[1]), y_train[0], dtype=y_train.dtype)
    if probe == "logreg":
        return logreg(seed).fit(z[0], y_train).predict(z[1])
    if probe == "mlp":
        return probe_pipeline("mlp", seed)[-1].fit(z[0], y_train).predict(z[1])
    if x is None:
        raise ValueError("the random forest needs the scaled features (with_x)")
    return probe_pipeline("random_forest", seed)[-1].fit(x[0], y_train).predict(x[1])


def fit_fold(
    X: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    **extras: Any,
) -> FoldOutput:
    """Fit the requested probes on X[train] and predict X[test] (`fit_prepared`'s options)."""
    with one_blas_thread():  # one BLAS thread per task, as fit_prepared
        pre = prefix(X, train, test)
    return fit_prepared(pre, y, train, test, **extras)


def fit_prepared(
    pre: Prefix,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    *,
    probes: tuple[str, ...],
    seed: int,
    shuffled_train_y: np.ndarray | None = None,
    permuted_y: np.ndarray | None = None,
    permute_probes: tuple[str, ...] = ("logreg",),
    control_y: np.ndarray | None = None,
    confound: np.ndarray | None = None,
) -> FoldOutput:
    """Fit the requested probes on one view's prefix (`Prefix`) of one fold.

    Optional extras on the same fold and the same label-free prefix:
    `shuffled_train_y` (labels for the training rows) adds the shuffled-label control (scored
    against the true test labels); `permuted_y` [n_perm, N] adds permutation-test refits of the
    probes in `permute_probes` (scored against the permuted test labels); `control_y` [N] adds
    every probe fitted on the control task's labels ("control_task:<probe>"); `confound` [N, k]
    (the confound control's features, expanded and scaled as it does) adds logistic regression
    on the confound features and the states together ("incremental").
    """
    out = FoldOutput()
    z = pre.z
    # One BLAS thread per task: results do not depend on --jobs, and jobs do not oversubscribe.
    with one_blas_thread(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for probe in probes:
            out.predictions[probe] = _fit_predict(probe, seed, pre, y[train])
        if shuffled_train_y is not None:
            out.predictions["shuffled_labels"] = (
                logreg(seed).fit(z[0], shuffled_train_y).predict(z[1])
            )
        if control_y is not None:
            for probe in probes:
                out.predictions[f"control_task:{probe}"] = _fit_predict(
                    probe, seed, pre, control_y[train]
                )
        if confound is not None:
            expand = confound_expansion().fit(confound[train])
            both = (
                np.hstack([expand.transform(confound[train]), z[0]]),
                np.hstack([expand.transform(confound[test]), z[1]]),
            )
            out.predictions["incremental"] = logreg(seed).fit(both[0], y[train]).predict(both[1])
        if permuted_y is not None:
            for probe in permute_probes:
                correct, missed = _permutation_correct(probe, seed, pre, permuted_y, train, test)
                out.permutation_correct[probe] = correct
                out.not_converged += missed
    out.not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    return out


def _permutation_correct(
    probe: str,
    seed: int,
    pre: Prefix,
    permuted_y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Correct test-fold counts of `probe` refitted on every permuted labelling, and how many
    refits did not converge. Logistic regression refits all labellings at once
    (`fit_multinomial_batch`: scikit-learn's fit, batched); the other probes one by one."""
    y_test, z = permuted_y[:, test], pre.z
    if probe == "logreg":
        try:
            fit = fit_multinomial_batch(
                z[0], permuted_y[:, train], C=LOGREG_C, tol=LOGREG_TOL, max_iter=LOGREG_MAX_ITER
            )
        except ValueError:  # a labelling without every class: scikit-learn's own handling
            pass
        else:
            correct = np.sum(fit.predict(z[1]) == y_test, axis=1).astype(np.int64)
            return correct, int(np.sum(~fit.converged))
    correct = np.empty(len(permuted_y), dtype=np.int64)
    for i, yp in enumerate(permuted_y):
        correct[i] = int(np.sum(_fit_predict(probe, seed, pre, yp[train]) == y_test[i]))
    return correct, 0
