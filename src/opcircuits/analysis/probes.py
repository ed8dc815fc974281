"""The three probes (logistic regression, random forest, MLP) as sklearn Pipelines, and the
per-fold work: fit on the training fold only, predict the test fold.

Speed without changing results: hidden states have far more features (2048 × layers) than a
training fold has problems. `SpanPCA` rotates the standardized training rows onto their own span
(an exact PCA computed from the n × n Gram matrix). An L2-penalised linear model's weights always
lie in that span, so logistic regression on the rotated features has the same optimum as on the
raw ones, at a fraction of the cost. The unsupervised prefix (scaler → SpanPCA) never sees labels,
so within one fold it is fitted once and shared by the logistic regression, the MLP, the
shuffled-label control and every permutation of the permutation test (its scaler by the random
forest too). The permutation refits
of logistic regression run batched (`solver.fit_multinomial_batch`, scikit-learn's fit of every
permuted labelling at once); the probe the report reads is scikit-learn's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from opcircuits.analysis.controls import confound_expansion
from opcircuits.analysis.solver import fit_multinomial_batch

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
        n, d = X.shape
        xc = X - self.mean_
        if n >= d:
            self.train_ = None
            return xc
        w, u = np.linalg.eigh((xc @ xc.T).astype(np.float64))
        order = np.argsort(w)[::-1]
        w, u = w[order], u[:, order]
        keep = w > self.rtol * max(float(w[0]), 1e-30)
        if not keep.any():
            # Every training row is the same (e.g. the bot token's embedding at layer 0): one
            # constant-zero coordinate, so a classifier falls back to its intercept.
            self.train_, self.scale_ = xc, np.zeros((n, 1), dtype=np.float32)
            return np.zeros((n, 1), dtype=np.float32)
        # Components are train_.T @ scale_ ([d, r], orthonormal); they are never formed:
        # projecting through the training rows costs n·d per row instead of r·d after an n·d·r
        # product.
        self.train_ = xc
        self.scale_ = (u[:, keep] / np.sqrt(w[keep])).astype(np.float32)
        return (u[:, keep] * np.sqrt(w[keep])).astype(np.float32)

    def transform(self, X: np.ndarray) -> np.ndarray:
        xc = np.asarray(X, dtype=np.float32) - self.mean_
        return xc if self.train_ is None else (xc @ self.train_.T) @ self.scale_


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


def _fit_predict(
    probe: str,
    seed: int,
    z: tuple[np.ndarray, np.ndarray],
    x: tuple[np.ndarray, np.ndarray],
    y_train: np.ndarray,
) -> np.ndarray:
    """Fit `probe` on the training rows and predict the test rows (`z`: span coordinates for the
    probes that start with the shared scaler → SpanPCA prefix, `x`: the shared scaler's features
    for the forest, whose pipeline is that scaler and the forest)."""
    if len(np.unique(y_train)) == 1:  # e.g. a control task whose questions share a first word
        return np.full(len(x[1]), y_train[0], dtype=y_train.dtype)
    if probe == "logreg":
        return logreg(seed).fit(z[0], y_train).predict(z[1])
    if probe == "mlp":
        return probe_pipeline("mlp", seed)[-1].fit(z[0], y_train).predict(z[1])
    return probe_pipeline("random_forest", seed)[-1].fit(x[0], y_train).predict(x[1])


def fit_fold(
    X: np.ndarray,
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
    """Fit the requested probes on X[train] and predict X[test].

    Optional extras on the same fold and the same label-free prefix:
    `shuffled_train_y` (labels for the training rows) adds the shuffled-label control (scored
    against the true test labels); `permuted_y` [n_perm, N] adds permutation-test refits of the
    probes in `permute_probes` (scored against the permuted test labels); `control_y` [N] adds
    every probe fitted on the control task's labels ("control_task:<probe>"); `confound` [N, k]
    (the confound control's features, expanded and scaled as it does) adds logistic regression
    on the confound features and the states together ("incremental").
    """
    out = FoldOutput()
    # One BLAS thread per task: results do not depend on --jobs, and jobs do not oversubscribe.
    with threadpool_limits(1), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        # The prefix step by step, as its Pipeline computes it: the scaled features are the
        # random forest's input too (its pipeline starts with the same scaler, fitted on the same
        # rows), so they are computed once.
        scale, span = probe_pipeline("logreg", seed).steps[:-1]
        x = (scale[1].fit_transform(X[train]), scale[1].transform(X[test]))
        z = (span[1].fit_transform(x[0]), span[1].transform(x[1]))
        for probe in probes:
            out.predictions[probe] = _fit_predict(probe, seed, z, x, y[train])
        if shuffled_train_y is not None:
            out.predictions["shuffled_labels"] = (
                logreg(seed).fit(z[0], shuffled_train_y).predict(z[1])
            )
        if control_y is not None:
            for probe in probes:
                out.predictions[f"control_task:{probe}"] = _fit_predict(
                    probe, seed, z, x, control_y[train]
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
                correct, missed = _permutation_correct(probe, seed, z, x, permuted_y, train, test)
                out.permutation_correct[probe] = correct
                out.not_converged += missed
    out.not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    return out


def _permutation_correct(
    probe: str,
    seed: int,
    z: tuple[np.ndarray, np.ndarray],
    x: tuple[np.ndarray, np.ndarray],
    permuted_y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Correct test-fold counts of `probe` refitted on every permuted labelling, and how many
    refits did not converge. Logistic regression refits all labellings at once
    (`fit_multinomial_batch`: scikit-learn's fit, batched); the other probes one by one."""
    y_test = permuted_y[:, test]
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
        correct[i] = int(np.sum(_fit_predict(probe, seed, z, x, yp[train]) == y_test[i]))
    return correct, 0
