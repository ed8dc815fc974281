"""Folds, and scores computed from out-of-fold predictions (all probes and controls share folds)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold

from opcircuits.analysis.inference import corrected_t_p
from opcircuits.analysis.stats import Interval, corrected_t_interval
from opcircuits.errors import OpcircuitsError


@dataclass(frozen=True)
class Fold:
    index: int
    repeat: int
    train: np.ndarray
    test: np.ndarray


def make_folds(y: np.ndarray, folds: int, repeats: int, seed: int) -> list[Fold]:
    counts = np.bincount(y)
    if folds < 2 or repeats < 1:
        raise OpcircuitsError("need --folds ≥ 2 and --repeats ≥ 1", field="folds")
    if counts.min() < folds:
        raise OpcircuitsError(
            f"the smallest category has {int(counts.min())} problems, fewer than --folds {folds}",
            field="folds",
        )
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    return [
        Fold(i, i // folds, np.asarray(tr), np.asarray(te))
        for i, (tr, te) in enumerate(cv.split(np.zeros(len(y)), y))
    ]


def test_fraction(folds: list[Fold]) -> float:
    return float(np.mean([len(f.test) / len(f.train) for f in folds]))


@dataclass
class Scores:
    """Per-fold accuracies and pooled metrics of one probe or control."""

    fold_accuracy: np.ndarray
    interval: Interval
    precision_macro: float
    recall_macro: float
    f1_macro: float
    confusion: np.ndarray  # summed over all folds of all repeats

    def summary(self) -> dict:
        return {
            "accuracy": self.interval.mean,
            "ci_low": self.interval.low,
            "ci_high": self.interval.high,
            "std": float(np.std(self.fold_accuracy, ddof=1))
            if self.fold_accuracy.size > 1
            else 0.0,
            "precision_macro": self.precision_macro,
            "recall_macro": self.recall_macro,
            "f1_macro": self.f1_macro,
            "confusion": self.confusion.tolist(),
            # Per category (in the report's category order): share of its problems predicted
            # as it, over all folds of all repeats.
            "recall_per_category": (
                np.diag(self.confusion) / np.maximum(self.confusion.sum(axis=1), 1)
            ).tolist(),
            "fold_accuracy": self.fold_accuracy.tolist(),
        }


def score(y: np.ndarray, folds: list[Fold], preds: list[np.ndarray], n_classes: int) -> Scores:
    """Scores from per-fold predictions (`preds[i]` predicts `folds[i].test`)."""
    acc, prec, rec, f1 = [], [], [], []
    conf = np.zeros((n_classes, n_classes), dtype=np.int64)
    for fold, pred in zip(folds, preds, strict=True):
        truth = y[fold.test]
        acc.append(float(np.mean(pred == truth)))
        fold_conf = confusion(truth, pred, n_classes)
        p, r, f = macro_prf(fold_conf)
        prec.append(p)
        rec.append(r)
        f1.append(f)
        conf += fold_conf
    fold_acc = np.array(acc)
    return Scores(
        fold_accuracy=fold_acc,
        interval=corrected_t_interval(fold_acc, test_fraction(folds), bounds=(0.0, 1.0)),
        precision_macro=float(np.mean(prec)),
        recall_macro=float(np.mean(rec)),
        f1_macro=float(np.mean(f1)),
        confusion=conf,
    )


def confusion(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """sklearn's `confusion_matrix(truth, pred, labels=range(n_classes))` (rows: truth)."""
    cells = np.asarray(truth, dtype=np.int64) * n_classes + np.asarray(pred, dtype=np.int64)
    return np.bincount(cells, minlength=n_classes**2).reshape(n_classes, n_classes)


def macro_prf(conf: np.ndarray) -> tuple[float, float, float]:
    """sklearn's `precision_recall_fscore_support(average="macro", zero_division=0)` over every
    label, from the confusion matrix, with its arithmetic (F1 = 2·tp / (true + predicted)); a
    tenth of its cost, which the report's many scored folds paid serially."""
    tp = np.diag(conf).astype(np.float64)
    predicted, true = conf.sum(axis=0), conf.sum(axis=1)

    def divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        out = np.zeros(len(num))
        nonzero = den != 0
        out[nonzero] = num[nonzero] / den[nonzero]
        return out

    f = divide(2.0 * tp, 1.0 * true.astype(np.float64) + predicted.astype(np.float64))
    return (
        float(np.mean(divide(tp, predicted.astype(np.float64)))),
        float(np.mean(divide(tp, true.astype(np.float64)))),
        float(np.mean(f)),
    )


def paired_difference(a: np.ndarray, b: np.ndarray, folds: list[Fold]) -> dict:
    """Mean per-fold difference a − b with the corrected resampled t-interval, and the one-sided
    p-value of the same corrected t-test for a > b (uncorrected for multiplicity)."""
    diff = np.asarray(a) - np.asarray(b)
    iv = corrected_t_interval(diff, test_fraction(folds), bounds=(-1.0, 1.0))
    # One test problem's share of a fold's accuracy: the variance floor when every fold agrees.
    resolution = 1.0 / min(len(f.test) for f in folds) if folds else None
    p = corrected_t_p(diff, test_fraction(folds), resolution)
    return {"value": iv.mean, "ci_low": iv.low, "ci_high": iv.high, "p_value": p}
