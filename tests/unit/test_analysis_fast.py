"""The analysis's shortcuts give what the straightforward computation gives: the batched
silhouette null, the text control's shared TF-IDF grid search, the per-worker view cache."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import silhouette_score
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from opcircuits.analysis import clustering, controls, tasks
from opcircuits.analysis.features import build_views, view_matrix
from opcircuits.analysis.stats import permutation_p_value


def test_batched_silhouettes_equal_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    X = rng.standard_normal((90, 8)) + 0.7 * np.eye(3, 8)[y]
    dist = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    ys = np.stack([y] + [y[rng.permutation(90)] for _ in range(30)])
    expected = [silhouette_score(dist, labels, metric="precomputed") for labels in ys]
    np.testing.assert_allclose(clustering.silhouettes(dist, ys), expected, rtol=0, atol=1e-12)
    # The null as it was computed one labelling at a time, from the same random stream.
    order = np.random.default_rng([5, 4])
    null = [clustering.silhouette(dist, y[order.permutation(90)]) for _ in range(250)]
    p, q95 = clustering.silhouette_null(dist, y, 250, 5)
    assert p == permutation_p_value(clustering.silhouette(dist, y), np.array(null))
    assert q95 == pytest.approx(float(np.quantile(null, 0.95)), abs=1e-12)


def test_text_control_equals_its_grid_search() -> None:
    rng = np.random.default_rng(1)
    words = np.array([f"w{i}" for i in range(40)])
    y = np.arange(150) % 3
    # Category-specific words in some questions: the inner scores differ between the C values.
    questions = [
        " ".join(rng.choice(words, 12)) + (f" cue{y[i]}" if rng.random() < 0.4 else "")
        for i in range(150)
    ]
    chosen = set()
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(questions, y):
        search = controls.text_pipeline(0).fit([questions[i] for i in train], y[train])
        expected = search.predict([questions[i] for i in test])
        got = controls.text_fold(questions, y, train, test, 0)
        np.testing.assert_array_equal(got, expected)
        best = search.best_params_["clf__C"]
        assert controls._best_text_c([questions[i] for i in train], y[train], 0) == best
        chosen.add(best)
    assert len(chosen) > 1  # the folds disagree on C: the choice itself is tested


def test_view_cache_returns_each_views_own_features() -> None:
    rng = np.random.default_rng(2)
    positions, layers = ["bot", "latent_1", "latent_2"], [1, 2]
    hidden = rng.standard_normal((20, 3, 2, 4)).astype(np.float16)
    other = hidden.copy() + np.float16(1)
    views = build_views(positions, layers)
    prob = tasks.Problem("p", np.arange(20), np.arange(20) % 2, ["a", "b"], [], views)
    sub = tasks.Problem("q", np.arange(10), np.arange(10) % 2, ["a", "b"], [], views)
    for source in (hidden, other, hidden):
        for view in views + views[:1]:
            for problem in (prob, prob, sub):
                got = tasks._view_matrix(source, view, positions, layers, problem)
                want = view_matrix(source, view, positions, layers, problem.rows)
                np.testing.assert_array_equal(got, want)
                assert not got.flags.writeable


def test_fold_scores_equal_sklearns_metrics() -> None:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from opcircuits.analysis.scoring import confusion, macro_prf

    rng = np.random.default_rng(3)
    for k in (2, 3, 4):
        for _ in range(60):
            n = int(rng.integers(1, 40))
            truth, pred = rng.integers(0, k, n), rng.integers(0, k, n)
            if rng.random() < 0.3:  # a label never predicted, or predictions of one label
                pred[:] = pred[0]
            labels = list(range(k))
            conf = confusion(truth, pred, k)
            np.testing.assert_array_equal(conf, confusion_matrix(truth, pred, labels=labels))
            expected = precision_recall_fscore_support(
                truth, pred, labels=labels, average="macro", zero_division=0
            )[:3]
            assert macro_prf(conf) == expected  # bit for bit


def test_fit_fold_predicts_as_each_probes_own_pipeline() -> None:
    # The shared prefix (one scaler for the forest too, one span for logistic regression and the
    # MLP) gives every probe exactly the predictions of its documented Pipeline.
    from opcircuits.analysis.probes import PROBES, fit_fold, probe_pipeline

    rng = np.random.default_rng(4)
    y = np.arange(120) % 3
    X = rng.standard_normal((120, 300), dtype=np.float32) * rng.uniform(0.1, 5, 300)
    X[:, :6] += np.eye(3, dtype=np.float32)[y].repeat(2, axis=1)
    train, test = np.arange(90), np.arange(90, 120)
    control = rng.integers(0, 3, 120)
    out = fit_fold(X, y, train, test, probes=PROBES, seed=0, control_y=control)
    with threadpool_limits(1):  # as fit_fold runs them (and no oversubscribed BLAS threads)
        for probe in PROBES:
            for name, labels in ((probe, y), (f"control_task:{probe}", control)):
                want = probe_pipeline(probe, 0).fit(X[train], labels[train]).predict(X[test])
                np.testing.assert_array_equal(out.predictions[name], want)


def test_fold_prefixes_equal_each_views_own_prefix() -> None:
    # The views of one fold share their scaled (position, layer) blocks and the blocks' products:
    # a view of one block (and `mean`) gets the span coordinates of its own scaler → SpanPCA bit
    # for bit, a view of several the same span up to rounding (its Gram matrix summed over the
    # blocks); the scaled features are bit for bit, and every probe predicts the same (float16
    # states, as extraction writes them).
    from opcircuits.analysis.probes import (
        PROBES,
        FoldPrefixes,
        ProblemFeatures,
        fit_fold,
        fit_prepared,
        prefix,
    )

    rng = np.random.default_rng(5)
    positions, layers = ["bot", "latent_1", "latent_2"], [1, 2]
    n = 60
    y = np.arange(n) % 3
    hidden = (rng.standard_normal((n, 3, 2, 50)) * rng.uniform(0.1, 4, 50)).astype(np.float16)
    hidden[:, 1, 0, :4] += np.float16(1.5) * np.eye(3, 4, dtype=np.float16)[y]
    rows = np.arange(5, n)  # a problem over some of the rows, as the step-matched one
    states = hidden[rows]
    test = np.arange(0, 55, 5)
    train = np.setdiff1d(np.arange(55), test)  # 44 rows: every view takes the span branch
    shared = FoldPrefixes(ProblemFeatures(states, positions, layers), train, test)
    for view in build_views(positions, layers):
        X = view_matrix(hidden, view, positions, layers, rows)
        want = prefix(X, train, test)
        exact = view.pool == "mean" or len(view.positions) * len(view.layers) == 1
        for with_x in (False, True):
            got = shared.view(view, with_x)
            if exact:
                for a, b in zip(got.z, want.z, strict=True):
                    np.testing.assert_array_equal(a, b)
            else:  # the same Gram matrices: the coordinates up to a rotation
                for a, b in ((got.z[0], want.z[0]), (got.z[1], want.z[1])):
                    np.testing.assert_allclose(
                        a @ got.z[0].T, b @ want.z[0].T, rtol=0, atol=2e-5 * len(X[0])
                    )
            assert (got.x is None) == (not with_x)
            if with_x:
                for a, b in zip(got.x, want.x, strict=True):
                    np.testing.assert_array_equal(a, b)
        got_fits = fit_prepared(got, y[rows], train, test, probes=PROBES, seed=0)
        want_fits = fit_fold(X, y[rows], train, test, probes=PROBES, seed=0)
        for name, pred in want_fits.predictions.items():
            np.testing.assert_array_equal(got_fits.predictions[name], pred)


def test_options_name_the_main_views_as_the_analysis_does() -> None:
    from opcircuits.analysis.features import MAIN_VIEWS
    from opcircuits.options import experiment

    assert experiment.MAIN_VIEWS == MAIN_VIEWS


def test_one_blas_thread_limits_as_threadpool_limits_and_restores() -> None:
    # The cached controller limits every library threadpool_limits(1) would, and undoes it; it
    # is made once, and again only after a new import (which may have loaded a library).
    import sys

    from threadpoolctl import threadpool_info

    from opcircuits.analysis import workers

    before = [(i["filepath"], i["num_threads"]) for i in threadpool_info()]
    made = []
    for _ in range(3):
        with workers.one_blas_thread():
            inside = threadpool_info()
            assert {i["filepath"] for i in inside} == {p for p, _ in before}
            assert all(i["num_threads"] == 1 for i in inside)
        made.append(workers._controller[0])
        assert [(i["filepath"], i["num_threads"]) for i in threadpool_info()] == before
    assert made[1] is made[0] and made[2] is made[0]
    sys.modules["opcircuits_test_new_module"] = sys  # as an import would add one
    try:
        with workers.one_blas_thread():
            pass
        assert workers._controller[0] is not made[0]
    finally:
        del sys.modules["opcircuits_test_new_module"]
