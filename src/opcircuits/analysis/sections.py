"""One function per report section: each turns the fits into the section's JSON.

Sections run in the order `analyze.compute_report` calls them; a later one may use an earlier
one's scores (every probe is compared with the controls). Each returns plain data (numpy values
are converted when the whole report is cleaned) and appends to `inp.notes` what it had to skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from opcircuits.analysis import controls as control_fits
from opcircuits.analysis import logit_lens, model_accuracy
from opcircuits.analysis.inputs import AnalysisInput
from opcircuits.analysis.probes import PROBES
from opcircuits.analysis.scoring import Scores, paired_difference, score
from opcircuits.analysis.stats import permutation_p_value
from opcircuits.analysis.tasks import Fits

BASELINE_CONTROLS = ("majority", "shuffled_labels", "question_text", "confound")


def _scores(inp: AnalysisInput, fits: Fits, key: tuple[str, str]) -> Scores:
    return score(inp.y, inp.folds, fits.preds[key], inp.n_classes)


# --- controls -------------------------------------------------------------------------------------


@dataclass
class Controls:
    scores: dict[str, Scores]  # the baseline controls, in BASELINE_CONTROLS order
    pre: Scores | None  # logistic regression on `bot` (None without a bot position)
    best: str  # the baseline control with the highest accuracy
    json: list[dict]


def controls(inp: AnalysisInput, fits: Fits, shuffle_view: str) -> Controls:
    folds, y = inp.folds, inp.y
    ctrl: dict[str, Scores] = {}
    majority = [control_fits.majority_predict(y, f.train, f.test) for f in folds]
    ctrl["majority"] = score(y, folds, majority, inp.n_classes)
    ctrl["shuffled_labels"] = _scores(inp, fits, (shuffle_view, "shuffled_labels"))
    if inp.questions is not None:
        ctrl["question_text"] = _scores(inp, fits, ("control", "text"))
    if inp.confound_x is not None:
        ctrl["confound"] = _scores(inp, fits, ("control", "confound"))
    pre = _scores(inp, fits, ("bot", "logreg")) if "bot" in inp.positions else None
    if pre is None:
        inp.notes.append("No `bot` position selected: the pre-thought control is skipped.")
    description = {
        "majority": "always the training fold's most frequent category",
        "shuffled_labels": f"logistic regression on the `{shuffle_view}` view, trained on "
        "shuffled labels",
        "question_text": "TF-IDF (word 1-2-grams) + logistic regression on the question text",
        "confound": "logistic regression on cubic terms of " + " and ".join(inp.confound_names),
        "pre_thought": "logistic regression on the `bot` position (before any latent step), "
        "layers concatenated",
    }
    out = [{"name": k, "description": description[k], **s.summary()} for k, s in ctrl.items()]
    if pre is not None:
        out.append(
            {"name": "pre_thought", "description": description["pre_thought"], **pre.summary()}
        )
    best = max(ctrl, key=lambda k: (ctrl[k].interval.mean, -list(ctrl).index(k)))
    return Controls(ctrl, pre, best, out)


# --- probes ---------------------------------------------------------------------------------------


@dataclass
class Probes:
    scores: dict[tuple[str, str], Scores]  # (view, probe) → scores
    json: list[dict]
    permutation_json: list[dict]


def probes(inp: AnalysisInput, fits: Fits, ctrl: Controls, permutations: int) -> Probes:
    """Main views × every probe, position views × logistic regression; each against the controls."""
    y, folds = inp.y, inp.folds
    repeat0 = [i for i, f in enumerate(folds) if f.repeat == 0]
    out, perm_out, scores = [], [], {}
    for view in [v for v in inp.views if v.kind in ("main", "position")]:
        for probe in PROBES if view.kind == "main" else ("logreg",):
            s = _scores(inp, fits, (view.name, probe))
            scores[(view.name, probe)] = s
            p_value = None
            if probe == "logreg" and view.name in fits.perm_correct:
                preds = fits.preds[(view.name, probe)]
                hits = sum(np.sum(preds[i] == y[folds[i].test]) for i in repeat0)
                observed = float(hits) / inp.n
                null = fits.perm_correct[view.name] / inp.n
                p_value = permutation_p_value(observed, null)
                perm_out.append(
                    {
                        "view": view.name,
                        "probe": probe,
                        "n_permutations": permutations,
                        "observed_accuracy": observed,
                        "null_mean": float(null.mean()),
                        "null_q95": float(np.quantile(null, 0.95)),
                        "p_value": p_value,
                    }
                )
            vs = {
                k: paired_difference(s.fold_accuracy, c.fold_accuracy, folds)
                for k, c in ctrl.scores.items()
            }
            out.append(
                {
                    "view": view.name,
                    "view_kind": view.kind,
                    "probe": probe,
                    **s.summary(),
                    "p_value": p_value,
                    "selectivity": {"control": ctrl.best, **vs[ctrl.best]},
                    "selectivity_vs": vs,
                    "selectivity_vs_pre_thought": (
                        paired_difference(s.fold_accuracy, ctrl.pre.fold_accuracy, folds)
                        if ctrl.pre is not None and view.name != "bot"
                        else None
                    ),
                }
            )
    return Probes(scores, out, perm_out)


# --- token × layer --------------------------------------------------------------------------------


def token_layer(inp: AnalysisInput, fits: Fits, ctrl: Controls) -> dict[str, Any]:
    """Logistic regression on every single (position, layer) cell."""
    best_control = ctrl.scores[ctrl.best]
    cells = []
    for view in [v for v in inp.views if v.kind == "cell"]:
        s = _scores(inp, fits, (view.name, "logreg"))
        cells.append(
            {
                "position": view.positions[0],
                "layer": view.layers[0],
                "accuracy": s.interval.mean,
                "ci_low": s.interval.low,
                "ci_high": s.interval.high,
                "f1_macro": s.f1_macro,
                "selectivity": {
                    "control": ctrl.best,
                    **paired_difference(s.fold_accuracy, best_control.fold_accuracy, inp.folds),
                },
            }
        )
    best = max(cells, key=lambda c: c["accuracy"])
    layers = inp.layers
    return {
        "token_layer_map": cells,
        "best_cell": {k: best[k] for k in ("position", "layer", "accuracy")},
        # A layer sweep plot needs several consecutive layers.
        "layer_sweep": len(layers) >= 3
        and layers == list(range(layers[0], layers[0] + len(layers))),
    }


# --- pre-thought ----------------------------------------------------------------------------------


def pre_thought(inp: AnalysisInput, probe_scores: dict, ctrl: Controls) -> list[dict]:
    """Each latent step's position view against the `bot` state (before any latent step)."""
    if ctrl.pre is None:
        return []
    rows = []
    for view in [v for v in inp.views if v.kind == "position" and v.name != "bot"]:
        s = probe_scores[(view.name, "logreg")]
        rows.append(
            {
                "position": view.name,
                "accuracy": s.interval.mean,
                "ci_low": s.interval.low,
                "ci_high": s.interval.high,
                "minus_pre_thought": paired_difference(
                    s.fold_accuracy, ctrl.pre.fold_accuracy, inp.folds
                ),
            }
        )
    return rows


# --- logit lens -----------------------------------------------------------------------------------


def lens(inp: AnalysisInput) -> dict[str, Any]:
    tokens = inp.column("lens_top_tokens")
    ops_used = inp.column("ops_used")
    out: dict[str, Any] = {"available": tokens is not None}
    if tokens is None:
        inp.notes.append("The store has no logit-lens columns: the logit-lens section is skipped.")
        return out
    # The lens covers every stored position (not only the analyzed ones).
    out.update(logit_lens.analyze(tokens, inp.categories, inp.names, ops_used, inp.store.positions))
    if ops_used is None:
        inp.notes.append("The store has no ops_used column: operator matches are not computed.")
    return out


# --- the model's answers --------------------------------------------------------------------------


def model_answers(inp: AnalysisInput, fits: Fits, repeats: int) -> dict[str, Any]:
    """Answer accuracy per category, and each main-view probe on correctly vs wrongly answered
    problems."""
    correct = inp.column("correct")
    out: dict[str, Any] = {"available": correct is not None}
    if correct is None:
        inp.notes.append("The store has no answers (`correct`): model accuracy is skipped.")
        return out
    ok = np.array([bool(c) if c is not None else False for c in correct])
    split = [
        {
            "view": view.name,
            "probe": probe,
            **model_accuracy.probe_by_correctness(
                inp.y, inp.folds, fits.preds[(view.name, probe)], ok, repeats
            ),
        }
        for view in inp.main_views
        for probe in PROBES
    ]
    out.update(
        answer_accuracy=model_accuracy.answer_accuracy(correct, inp.categories, inp.names),
        probe_by_correctness=split,
    )
    truncated = inp.column("answer_truncated")
    if truncated is not None:
        known = [t for t in truncated if t is not None]
        hit = sum(bool(t) for t in known)
        inp.notes.append(
            f"{hit} of {len(known)} answers hit the decoding limit (answer_truncated) before "
            "the model ended them" + (": their `correct` may understate the model." if hit else ".")
        )
    return out


# --- descriptive ----------------------------------------------------------------------------------


def descriptive(fits: Fits) -> dict[str, Any]:
    """Clustering and within/between similarity per view (no folds: all problems)."""
    return {
        "clustering": [{"view": v, **c.summary()} for v, c in fits.clusters.items()],
        "similarity": [{"view": v, **s} for v, s in fits.similarity.items()],
    }


# --- examples -------------------------------------------------------------------------------------


def examples(inp: AnalysisInput, per_category: int = 2) -> list[dict]:
    """A few problems per category (the first in dataset order), shown in the HTML report."""
    ids = [str(i) for i in inp.records["id"].tolist()]
    questions = inp.column("question")
    tokens = inp.column("lens_top_tokens")
    correct = inp.column("correct")
    out = []
    for cat in inp.names:
        for i in [i for i, c in enumerate(inp.categories) if c == cat][:per_category]:
            top1 = None
            if tokens is not None and tokens[i] is not None:
                top1 = [
                    logit_lens.printable(list(t)[0]) if t is not None and len(t) else ""
                    for t in tokens[i]
                ]
            out.append(
                {
                    "id": ids[i],
                    "category": cat,
                    "question": questions[i] if questions is not None else None,
                    "correct": None if correct is None or correct[i] is None else bool(correct[i]),
                    "lens_top1": top1,
                }
            )
    return out
