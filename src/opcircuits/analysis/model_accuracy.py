"""How well the model itself answers, per category; and whether probes read thoughts better on
problems it answers correctly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from opcircuits.analysis.scoring import Fold
from opcircuits.analysis.stats import wilson_interval


def answer_accuracy(
    correct: Sequence[object], categories: Sequence[str], category_names: Sequence[str]
) -> list[dict]:
    """Per category (and "all"): share of problems answered correctly, Wilson 95% interval."""
    out = []
    ok = np.array([bool(c) if c is not None else False for c in correct])
    known = np.array([c is not None for c in correct])
    cats = np.asarray(categories)
    for cat in [*category_names, "all"]:
        mask = known & ((cats == cat) if cat != "all" else True)
        n, k = int(mask.sum()), int(ok[mask].sum())
        iv = wilson_interval(k, n)
        out.append(
            {
                "category": cat,
                "n": n,
                "correct": k,
                "accuracy": iv.mean,
                "ci_low": iv.low,
                "ci_high": iv.high,
            }
        )
    return out


def probe_by_correctness(
    y: np.ndarray, folds: list[Fold], preds: list[np.ndarray], correct: np.ndarray, repeats: int
) -> dict:
    """Out-of-fold probe accuracy on problems the model answered correctly vs incorrectly.

    Every problem is predicted once per repeat; those predictions are pooled, and the Wilson
    interval counts each problem once (n / repeats), since repeats are not independent. Whether
    the two accuracies differ is Fisher's exact test on the first repeat (each problem once).
    """
    hit = {True: [0, 0], False: [0, 0]}
    for fold, pred in zip(folds, preds, strict=True):
        for flag in (True, False):
            m = correct[fold.test] == flag
            hit[flag][0] += int(np.sum(pred[m] == y[fold.test][m]))
            hit[flag][1] += int(m.sum())
    table = np.zeros((2, 2), dtype=np.int64)  # rows: answered correctly / not; cols: hit / miss
    for fold, pred in zip(folds, preds, strict=True):
        if fold.repeat != 0:
            continue
        ok = pred == y[fold.test]
        for r, flag in enumerate((True, False)):
            m = correct[fold.test] == flag
            table[r] += [int(np.sum(ok[m])), int(np.sum(~ok[m]))]
    both = table.sum(axis=1).all()
    out: dict = {"difference_p": float(stats.fisher_exact(table)[1]) if both else None}
    for flag, name in ((True, "correct"), (False, "incorrect")):
        k, n = hit[flag]
        iv = wilson_interval(k / repeats, n / repeats)
        out[name] = {
            "n_problems": n // repeats,
            "n_predictions": n,
            "accuracy": iv.mean if n else None,
            "ci_low": iv.low if n else None,
            "ci_high": iv.high if n else None,
        }
    return out
