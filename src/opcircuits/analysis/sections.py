"""One function per report section: each turns the fits into the section's JSON.

Sections run in the order `analyze.compute_report` calls them; a later one may use an earlier
one's scores (every probe is compared with the controls). Each returns plain data (numpy values
are converted when the whole report is cleaned) and appends to `inp.notes` what it had to skip.
The secondary problems (step confound, binary probes) are in `secondary.py`; what the report may
claim is decided in `claims.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from opcircuits.analysis import controls as control_fits
from opcircuits.analysis import logit_lens, model_accuracy
from opcircuits.analysis.inference import max_statistic
from opcircuits.analysis.inputs import AnalysisInput
from opcircuits.analysis.probes import PROBES
from opcircuits.analysis.scoring import Scores, paired_difference, score
from opcircuits.analysis.stats import permutation_p_value
from opcircuits.analysis.tasks import CATEGORY, Fits, Plan, Problem

BASELINE_CONTROLS = ("majority", "shuffled_labels", "question_text", "confound", "step_lookup")


def scores_of(prob: Problem, fits: Fits, view: str, name: str) -> Scores:
    return score(prob.y, prob.folds, fits.preds[(prob.name, view, name)], len(prob.class_names))


def majority_scores(prob: Problem) -> Scores:
    preds = [control_fits.majority_predict(prob.y, f.train, f.test) for f in prob.folds]
    return score(prob.y, prob.folds, preds, len(prob.class_names))


def interval(s: Scores) -> dict[str, float]:
    return {"accuracy": s.interval.mean, "ci_low": s.interval.low, "ci_high": s.interval.high}


# --- controls -------------------------------------------------------------------------------------


@dataclass
class Controls:
    scores: dict[str, Scores]  # the baseline controls, in BASELINE_CONTROLS order
    pre: Scores | None  # logistic regression on `bot` (None without a bot position)
    best: str  # the baseline control with the highest accuracy
    json: list[dict]


def controls(inp: AnalysisInput, plan: Plan, fits: Fits) -> Controls:
    cat = plan.problems[CATEGORY]
    folds, y = inp.folds, inp.y
    ctrl: dict[str, Scores] = {"majority": majority_scores(cat)}
    ctrl["shuffled_labels"] = scores_of(cat, fits, plan.shuffle_view, "shuffled_labels")
    if inp.questions is not None:
        ctrl["question_text"] = scores_of(cat, fits, "control", "text")
    if inp.confound_x is not None:
        ctrl["confound"] = scores_of(cat, fits, "control", "confound")
    if inp.n_steps is not None:
        preds = [control_fits.step_lookup_predict(inp.n_steps, y, f.train, f.test) for f in folds]
        ctrl["step_lookup"] = score(y, folds, preds, inp.n_classes)
    has_bot = (CATEGORY, "bot", "logreg") in fits.preds
    pre = scores_of(cat, fits, "bot", "logreg") if has_bot else None
    if pre is None and "bot" not in inp.positions:
        inp.notes.append("No `bot` position selected: the pre-thought control is skipped.")
    description = {
        "majority": "always the training fold's most frequent category",
        "shuffled_labels": f"logistic regression on the `{plan.shuffle_view}` view, trained on "
        "shuffled labels",
        "question_text": "TF-IDF (word 1-2-grams) + logistic regression on the question text, C "
        "chosen by a grid search over the whole pipeline",
        "confound": "logistic regression on cubic terms of " + " and ".join(inp.confound_names),
        "step_lookup": "the training fold's most frequent category for each n_steps value: the "
        "best any function of the step count alone can do",
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


# --- probes and the token × layer map -------------------------------------------------------------


@dataclass
class Probes:
    scores: dict[tuple[str, str], Scores]  # (view, probe) → scores
    json: list[dict]  # main and position views
    cells: list[dict]  # the token × layer map
    permutation_json: list[dict]


def _permutation(
    inp: AnalysisInput, fits: Fits, plan: Plan, permutations: int
) -> tuple[dict[tuple[str, str], dict], dict[tuple[str, str], float]]:
    """Per (view, probe) refitted on the shared permutations: observed first-repeat accuracy and
    its null; then the family-wise (max-statistic) p-value of every member."""
    y, folds, n = inp.y, inp.folds, inp.n
    repeat0 = [i for i, f in enumerate(folds) if f.repeat == 0]
    tests: dict[tuple[str, str], dict] = {}
    for (prob, view, probe), correct in fits.perm_correct.items():
        if prob != CATEGORY:
            continue
        preds = fits.preds[(CATEGORY, view, probe)]
        observed = float(sum(np.sum(preds[i] == y[folds[i].test]) for i in repeat0)) / n
        tests[(view, probe)] = {"observed": observed, "null": correct / n}
    family = max_statistic(
        {f"{v}|{p}": t["observed"] for (v, p), t in tests.items()},
        {f"{v}|{p}": t["null"] for (v, p), t in tests.items()},
    )
    return tests, {k: family[f"{k[0]}|{k[1]}"] for k in tests}


def probes(inp: AnalysisInput, plan: Plan, fits: Fits, ctrl: Controls, permutations: int) -> Probes:
    """Every probe on every view, against the controls, its control task and the permutations."""
    cat = plan.problems[CATEGORY]
    folds = inp.folds
    tests, family = _permutation(inp, fits, plan, permutations)
    rows, cells, perm_out, all_scores = [], [], [], {}
    for view in inp.views:
        for probe in PROBES if view.kind == "main" else ("logreg",):
            if (CATEGORY, view.name, probe) not in fits.preds:  # a brief analysis
                continue
            s = scores_of(cat, fits, view.name, probe)
            all_scores[(view.name, probe)] = s
            test = tests.get((view.name, probe))
            p_value = None
            if test is not None:
                p_value = permutation_p_value(test["observed"], test["null"])
                perm_out.append(
                    {
                        "view": view.name,
                        "probe": probe,
                        "n_permutations": permutations,
                        # Labels shuffled within these groups (tasks.plan): "fold × n_steps"
                        # tests decoding beyond what the step count explains.
                        "strata": "fold" if inp.n_steps is None else "fold × n_steps",
                        "observed_accuracy": test["observed"],
                        "null_mean": float(test["null"].mean()),
                        "null_q95": float(np.quantile(test["null"], 0.95)),
                        "p_value": p_value,
                        "p_family": family[(view.name, probe)],
                    }
                )
            vs = {
                k: paired_difference(s.fold_accuracy, c.fold_accuracy, folds)
                for k, c in ctrl.scores.items()
            }
            entry: dict[str, Any] = {
                "view": view.name,
                "view_kind": view.kind,
                "probe": probe,
                **s.summary(),
                "p_value": p_value,
                "p_family": family.get((view.name, probe)),
                "gain_over_baseline": {"control": ctrl.best, **vs[ctrl.best]},
                "gain_vs": vs,
                "gain_vs_pre_thought": (
                    paired_difference(s.fold_accuracy, ctrl.pre.fold_accuracy, folds)
                    if ctrl.pre is not None and view.name != "bot"
                    else None
                ),
                "control_task": None,
                "selectivity": None,
            }
            key = (CATEGORY, view.name, f"control_task:{probe}")
            if key in fits.preds:
                c = scores_of(cat, fits, view.name, f"control_task:{probe}")
                entry["control_task"] = {**interval(c), "f1_macro": c.f1_macro}
                entry["selectivity"] = paired_difference(s.fold_accuracy, c.fold_accuracy, folds)
            if view.kind == "cell":
                cells.append({"position": view.positions[0], "layer": view.layers[0], **entry})
            else:
                rows.append(entry)
    return Probes(all_scores, rows, cells, perm_out)


def token_layer(inp: AnalysisInput, probes_: Probes) -> dict[str, Any]:
    """The token × layer map (logistic regression on every single (position, layer) cell)."""
    cells = probes_.cells
    best = max(cells, key=lambda c: c["accuracy"])
    layers = inp.layers
    return {
        "token_layer_map": cells,
        "best_cell": {k: best[k] for k in ("position", "layer", "accuracy", "p_family")},
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
                **interval(s),
                "minus_pre_thought": paired_difference(
                    s.fold_accuracy, ctrl.pre.fold_accuracy, inp.folds
                ),
            }
        )
    return rows


# --- logit lens -----------------------------------------------------------------------------------


def lens(inp: AnalysisInput, permutations: int, seed: int) -> dict[str, Any]:
    tokens = inp.column("lens_top_tokens")
    ops_used = inp.column("ops_used")
    out: dict[str, Any] = {"available": tokens is not None}
    if tokens is None:
        inp.notes.append("The store has no logit-lens columns: the logit-lens section is skipped.")
        return out
    # The lens covers every stored position (not only the analyzed ones).
    out.update(
        logit_lens.analyze(
            tokens, inp.categories, inp.names, ops_used, inp.store.positions, permutations, seed
        )
    )
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
                inp.y, inp.folds, fits.preds[(CATEGORY, view.name, probe)], ok, repeats
            ),
        }
        for view in inp.main_views
        for probe in PROBES
        if (CATEGORY, view.name, probe) in fits.preds  # the forest and MLP: --nonlinear-views
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
