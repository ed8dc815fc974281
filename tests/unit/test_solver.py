"""The batched logistic regression of the permutation family against scikit-learn, fit by fit.

The design is the benchmark store's shape scaled down: 300 problems, 3 cells × 256 dims, a weak
planted signal, the first fold's span coordinates (as the probes' shared prefix gives them) and
200 permutations within the test folds. scikit-learn works in float32 on these coordinates, so
the two fits agree to float32 noise grown over ~10 L-BFGS iterations, except where one stops an
iteration earlier than the other at the tolerance's edge."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from opcircuits.analysis.inference import stratified_permutations
from opcircuits.analysis.probes import (
    LOGREG_C,
    LOGREG_MAX_ITER,
    LOGREG_TOL,
    fit_fold,
    logreg,
    probe_pipeline,
)
from opcircuits.analysis.scoring import make_folds
from opcircuits.analysis.solver import fit_multinomial_batch

N, CELLS, DIM, PERMUTATIONS = 300, 3, 256, 200
# Coefficients: max |Δ| / max |coef| per fit. Float32 noise gives ~1e-5; a fit that stops one
# iteration apart differs by up to ~1e-2, so the bound holds for 97 % of fits, not all.
COEF_RTOL, COEF_SHARE = 1e-3, 0.97


def _design(n_classes: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    y = np.arange(N) % n_classes
    X = rng.standard_normal((N, CELLS * DIM), dtype=np.float32)
    X[:, :10] += 0.4 * np.eye(n_classes, dtype=np.float32)[y][:, np.arange(10) % n_classes]
    folds = make_folds(y, 5, 1, seed)
    perm = stratified_permutations(y, [f.test for f in folds], PERMUTATIONS, rng)
    fold = folds[0]
    prefix = Pipeline(probe_pipeline("logreg", 0).steps[:-1])
    z_train = prefix.fit_transform(X[fold.train])
    return X, y, fold.train, fold.test, perm, z_train, prefix.transform(X[fold.test])


def _sklearn(z_train: np.ndarray, labels: np.ndarray) -> list[LogisticRegression]:
    return [logreg(0).fit(z_train, y) for y in labels]


@pytest.mark.parametrize("n_classes", [3, 2])
def test_batched_fits_are_scikit_learns_fit_by_fit(n_classes: int) -> None:
    _, _, train, test, perm, z_train, z_test = _design(n_classes)
    labels = perm[:, train] if n_classes == 3 else perm[:60, train]
    fit = fit_multinomial_batch(
        z_train, labels, C=LOGREG_C, tol=LOGREG_TOL, max_iter=LOGREG_MAX_ITER
    )
    models = _sklearn(z_train, labels)
    pred = fit.predict(z_test)
    y_test = perm[:, test] if n_classes == 3 else perm[:60, test]
    same_acc = [
        np.sum(m.predict(z_test) == yt) == np.sum(p == yt)
        for m, p, yt in zip(models, pred, y_test, strict=True)
    ]
    rel = [
        np.abs(m.coef_ - c).max() / np.abs(m.coef_).max()
        for m, c in zip(models, fit.coef, strict=True)
    ]
    icpt = [np.abs(m.intercept_ - b).max() for m, b in zip(models, fit.intercept, strict=True)]
    assert fit.coef.shape == (len(labels), 1 if n_classes == 2 else 3, z_train.shape[1])
    assert np.mean(same_acc) >= 0.99
    assert np.mean(np.array(rel) <= COEF_RTOL) >= COEF_SHARE
    assert np.median(rel) <= 1e-4 and np.median(icpt) <= 1e-4
    assert fit.converged.all()
    n_iter = np.array([m.n_iter_[0] for m in models])
    assert np.mean(n_iter == fit.n_iter) >= 0.97


def test_fit_fold_permutation_counts_match_scikit_learn_refits() -> None:
    X, y, train, test, perm, z_train, z_test = _design(3, seed=1)
    out = fit_fold(X, y, train, test, probes=("logreg",), seed=0, permuted_y=perm[:50])
    expected = [
        int(np.sum(m.predict(z_test) == yp[test]))
        for m, yp in zip(_sklearn(z_train, perm[:50, train]), perm[:50], strict=True)
    ]
    assert np.mean(out.permutation_correct["logreg"] == np.array(expected)) >= 0.98


def test_a_labelling_without_every_class_falls_back_to_scikit_learn() -> None:
    X, y, train, test, perm, z_train, z_test = _design(3, seed=2)
    labels = perm[:3].copy()
    labels[1, train] = np.where(labels[1, train] == 2, 1, labels[1, train])  # class 2 gone
    with pytest.raises(ValueError):
        fit_multinomial_batch(z_train, labels[:, train])
    out = fit_fold(X, y, train, test, probes=("logreg",), seed=0, permuted_y=labels)
    one = logreg(0).fit(z_train, labels[1, train]).predict(z_test)
    assert out.permutation_correct["logreg"][1] == int(np.sum(one == labels[1, test]))


def test_warm_start_reaches_the_optimum_and_predict_breaks_ties_like_argmax() -> None:
    _, _, train, _, perm, z_train, z_test = _design(3, seed=3)
    labels = perm[:4, train]
    cold = fit_multinomial_batch(z_train, labels, tol=1e-9, max_iter=2000)
    start = np.concatenate([cold.coef[0], cold.intercept[0][:, None]], axis=1)
    warm = fit_multinomial_batch(z_train, labels[:1], tol=1e-9, max_iter=2000, warm_start=start)
    assert warm.n_iter[0] <= 5 < cold.n_iter[0]
    # float32 products: the optimum is known to ~1e-4 of the coefficients' scale
    assert np.abs(warm.coef[0] - cold.coef[0]).max() <= 1e-3 * np.abs(cold.coef[0]).max()
    tied = cold.__class__(
        np.zeros((1, 3, 2)), np.zeros((1, 3)), np.array([4, 5, 6]), np.zeros(1), np.ones(1, bool)
    )
    assert (tied.predict(np.ones((2, 2), np.float32)) == 4).all()


def test_label_vectors_beyond_one_chunk_are_fitted_on_their_own_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # More permutations than one chunk holds (the default chunk is 256; 1,000 permutations are
    # four chunks): every chunk must fit its own label vectors, so the answer cannot depend on
    # the chunk size. (A chunk once refitted the first chunk's labels after its first step.)
    from opcircuits.analysis import solver

    _, _, train, _, perm, z_train, z_test = _design(3)
    labels = perm[:40, train]
    whole = fit_multinomial_batch(z_train, labels, C=LOGREG_C, tol=LOGREG_TOL, max_iter=50)
    monkeypatch.setattr(solver, "CHUNK", 7)
    chunked = fit_multinomial_batch(z_train, labels, C=LOGREG_C, tol=LOGREG_TOL, max_iter=50)
    np.testing.assert_array_equal(chunked.predict(z_test), whole.predict(z_test))
    # float32 products of another batch shape round differently (measured up to 1.4e-6 on
    # coefficients of ~0.15); fitting another chunk's labels differs by orders more
    np.testing.assert_allclose(chunked.coef, whole.coef, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(chunked.n_iter, whole.n_iter)
