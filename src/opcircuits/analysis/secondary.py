"""The secondary questions, each from its own fits: is the category information more than the step
count (incremental test, within strata, a step-matched subsample)? How well do the states decode
the step count itself? Do they separate the two operation families (binary probes)?
"""

from __future__ import annotations

from typing import Any

import numpy as np

from opcircuits.analysis import confound
from opcircuits.analysis.inputs import AnalysisInput
from opcircuits.analysis.scoring import Scores, paired_difference
from opcircuits.analysis.sections import Controls, interval, majority_scores, scores_of
from opcircuits.analysis.tasks import CATEGORY, Fits, Plan, Problem


def _vs_majority(prob: Problem, fits: Fits, majority: Scores) -> list[dict]:
    """Logistic regression on each of the problem's views against always guessing the majority."""
    out = []
    for view in prob.views:
        s = scores_of(prob, fits, view.name, "logreg")
        out.append(
            {
                "view": view.name,
                **interval(s),
                "f1_macro": s.f1_macro,
                "recall_per_category": s.summary()["recall_per_category"],
                "gain_over_majority": paired_difference(
                    s.fold_accuracy, majority.fold_accuracy, prob.folds
                ),
            }
        )
    return out


def step_confound(inp: AnalysisInput, plan: Plan, fits: Fits, ctrl: Controls) -> dict[str, Any]:
    """(a) LR on confound features + states vs LR on the confound features alone, same folds;
    (b) accuracy within n_steps strata and on a step-matched subsample; (c) n_steps decoded."""
    out: dict[str, Any] = {"available": inp.n_steps is not None}
    if inp.n_steps is None:
        inp.notes.append("The store has no n_steps column: the step-confound section is skipped.")
        return out
    cat = plan.problems[CATEGORY]
    incremental = []
    if "confound" in ctrl.scores:
        base = ctrl.scores["confound"]
        for view in inp.main_views:
            both = scores_of(cat, fits, view.name, "incremental")
            incremental.append(
                {
                    "view": view.name,
                    "confound_plus_states": interval(both),
                    "confound_alone": interval(base),
                    "difference": paired_difference(
                        both.fold_accuracy, base.fold_accuracy, inp.folds
                    ),
                }
            )
    strata = [
        {
            "view": view.name,
            **confound.within_strata(
                inp.y, inp.n_steps, inp.folds, fits.preds[(CATEGORY, view.name, "logreg")]
            ),
        }
        for view in inp.main_views
    ]
    out.update(
        incremental=incremental,
        within_strata=strata,
        input_matched=confound.is_matched(inp.y, inp.n_steps),
        steps_by_category={
            c: {
                str(int(s)): int(k)
                for s, k in zip(
                    *np.unique(inp.n_steps[inp.y == i], return_counts=True), strict=True
                )
            }
            for i, c in enumerate(inp.names)
        },
        mean_steps_by_category={
            c: float(inp.n_steps[inp.y == i].mean()) for i, c in enumerate(inp.names)
        },
    )
    matched = plan.problems.get("step_matched")
    if matched is not None:
        maj = majority_scores(matched)
        out["step_matched"] = {
            "n_problems": matched.n,
            "class_counts": dict(
                zip(matched.class_names, np.bincount(matched.y).tolist(), strict=True)
            ),
            "majority_rate": float(np.bincount(matched.y).max() / matched.n),
            "probes": _vs_majority(matched, fits, maj),
        }
    elif not out["input_matched"]:
        inp.notes.append(
            "Too few problems share step counts across categories for a step-matched subsample."
        )
    steps = plan.problems.get("n_steps")
    if steps is not None:
        maj = majority_scores(steps)
        out["n_steps_decoding"] = {
            "bins": steps.class_names,
            "majority_rate": float(np.bincount(steps.y).max() / steps.n),
            "probes": _vs_majority(steps, fits, maj),
        }
    return out


def binary_probes(inp: AnalysisInput, plan: Plan, fits: Fits) -> list[dict]:
    """ "Uses ×/÷?" and "uses +/−?" over every problem with `ops_used` (all categories)."""
    out = []
    for name in ("uses_mul_div", "uses_add_sub"):
        prob = plan.problems.get(name)
        if prob is None:
            continue
        maj = majority_scores(prob)
        entry: dict[str, Any] = {
            "task": name,
            "n_problems": prob.n,
            "positives": int(prob.y.sum()),
            "majority_rate": float(np.bincount(prob.y).max() / prob.n),
            "probes": _vs_majority(prob, fits, maj),
            "question_text": None,
        }
        if prob.questions is not None:
            text = scores_of(prob, fits, "control", "text")
            entry["question_text"] = interval(text)
            for row in entry["probes"]:
                s = scores_of(prob, fits, row["view"], "logreg")
                row["gain_over_question_text"] = paired_difference(
                    s.fold_accuracy, text.fold_accuracy, prob.folds
                )
        out.append(entry)
    if not out:
        inp.notes.append(
            "The store has no ops_used column: the binary operation probes are skipped."
        )
    return out


def step_operations(inp: AnalysisInput, plan: Plan, fits: Fits) -> list[dict]:
    """Step j's operation family at `bot` and at every latent position: accuracy, the gain over
    the stronger of the majority and the question-text control, and (latent positions) the
    difference from `bot` on the same folds. A thought that decodes its own step's operation
    where `bot` and the question text do not is the step-resolved evidence the category cannot
    give."""
    out = []
    for prob in plan.problems.values():
        if not prob.name.startswith("step") or not prob.name.endswith("_op"):
            continue
        j = int(prob.name[len("step") : -len("_op")])
        maj = majority_scores(prob)
        text = scores_of(prob, fits, "control", "text") if prob.questions is not None else None
        use_text = text is not None and text.interval.mean >= maj.interval.mean
        base, base_name = (text, "question_text") if use_text else (maj, "majority")
        bot = (
            scores_of(prob, fits, "bot", "logreg")
            if any(v.name == "bot" for v in prob.views)
            else None
        )
        rows = []
        for view in prob.views:
            sc = scores_of(prob, fits, view.name, "logreg")
            row: dict[str, Any] = {
                "view": view.name,
                **interval(sc),
                "gain_over_baseline": paired_difference(
                    sc.fold_accuracy, base.fold_accuracy, prob.folds
                ),
                "minus_bot": None,
            }
            if bot is not None and view.name != "bot":
                row["minus_bot"] = paired_difference(
                    sc.fold_accuracy, bot.fold_accuracy, prob.folds
                )
            rows.append(row)
        out.append(
            {
                "step": j,
                "own_thought": f"latent_{j}",
                "n_problems": prob.n,
                "mul_div": int(prob.y.sum()),
                "majority_rate": float(np.bincount(prob.y).max() / prob.n),
                "question_text": interval(text) if text is not None else None,
                "baseline": base_name,
                "positions": rows,
            }
        )
    if not out and inp.views:
        inp.notes.append(
            "No step-resolved operation labels (step_ops: every solution step one operation): "
            "the step-operation probes are skipped."
        )
    return sorted(out, key=lambda e: e["step"])
