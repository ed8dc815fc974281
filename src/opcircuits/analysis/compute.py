"""The analysis's numbers: read a thought store, run every probe, control and descriptive analysis
on the same folds, and return the report as a dict (nothing is written here; the `analyze`
command in `opcircuits.report.analyze` draws the figures and writes the files).

`compute_report(store, options)` is the report; `compute` also returns what the figures need
beyond the JSON. The JSON holds every number plus the options and the
store manifest; it contains no timestamps and is byte-identical for the same store, options and
seed (whatever --jobs is: each task runs single-threaded BLAS with fixed random states, and
results are assembled in a fixed order).

A new report section is a function in `sections.py` returning its top-level JSON keys, called
from `compute` below (after the sections whose numbers it uses); if it needs new fits, it adds a
task kind in `tasks.py`; its sentences are a function in `opcircuits.report.findings`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from opcircuits.analysis import causal, claims, secondary, sections, tasks
from opcircuits.analysis.features import MAIN_VIEWS
from opcircuits.analysis.inputs import AnalysisInput, load_input
from opcircuits.analysis.scoring import paired_difference
from opcircuits.analysis.sections import BASELINE_CONTROLS
from opcircuits.errors import OpcircuitsError
from opcircuits.jsonable import jsonable
from opcircuits.options import AnalyzeOptions

log = logging.getLogger(__name__)

REPORT_FORMAT = 2
JSON_NAME = "analysis_report.json"
DIGITS = 6  # floats in the report are rounded to this many decimals


@dataclass
class Computed:
    """A computed report and what its figures need beyond the JSON."""

    report: dict[str, Any]
    pca_coords: dict[str, np.ndarray]  # view → [N, 2] PCA scores
    y: np.ndarray  # labels of the analyzed problems


def compute_report(store: Any, options: AnalyzeOptions | None = None) -> dict:
    """The analysis report of `store` (a path or an opened `Store`) as a dict; writes nothing.

    With `options.matched_store` (a step-matched sample of problems from the same model: every
    category with the same `n_steps` histogram) and `options.random_store` (the same problems
    extracted from the same architecture with re-initialized weights, `extract --reinit`), those
    stores are analyzed in brief too, for the report's step-matched and random-model sections."""
    return compute(store, options or AnalyzeOptions()).report


def _open(store: Any) -> tuple[Any, str]:
    from opcircuits.store import open_store

    if isinstance(store, str | Path):
        return open_store(store), str(store)
    return store, str(store.path)


def _fit(inp: AnalysisInput, options: AnalyzeOptions, brief: bool = False) -> tuple:
    jobs = joblib.effective_n_jobs(options.jobs)
    log.info(
        "analyzing %d problems, positions %s, layers %s, %d views, %d folds, %d jobs%s",
        inp.n,
        inp.positions,
        inp.layers,
        len(inp.views),
        len(inp.folds),
        jobs,
        " (brief)" if brief else "",
    )
    plan = tasks.plan(inp, options, brief=brief)
    fits = tasks.run(plan, inp, jobs, options.seed, options.permutations)
    if fits.not_converged:
        inp.notes.append(
            f"{fits.not_converged} logistic-regression or MLP fits stopped at their iteration "
            "limit before converging."
        )
    return plan, fits


def compute(store: Any, options: AnalyzeOptions) -> Computed:
    store, label = _open(store)
    inp = load_input(store, options)
    plan, fits = _fit(inp, options)
    ctrl = sections.controls(inp, plan, fits)
    probes = sections.probes(inp, plan, fits, ctrl, options.permutations)
    report: dict[str, Any] = {
        "format_version": REPORT_FORMAT,
        # `jobs` changes no number, so it is left out: the JSON is the same for any --jobs.
        "options": {k: v for k, v in asdict(options).items() if k != "jobs"},
        "store": {"path": label, "manifest": store.manifest},
        "data": _data(inp, options),
        "methods": _methods(options),
        "best_control": ctrl.best,
        "controls": ctrl.json,
        "probes": probes.json,
        "permutation_tests": probes.permutation_json,
        **sections.token_layer(inp, probes),
        "pre_thought": sections.pre_thought(inp, probes.scores, ctrl),
        "step_confound": secondary.step_confound(inp, plan, fits, ctrl),
        "binary_probes": secondary.binary_probes(inp, plan, fits),
        **sections.descriptive(fits),
        "logit_lens": sections.lens(inp, tasks.CHEAP_FACTOR * options.permutations, options.seed),
        "model": sections.model_answers(inp, fits, options.repeats),
        "step_matched_sample": None,
        "random_model": None,
        "examples": sections.examples(inp),
        "notes": inp.notes,
    }
    if options.matched_store is not None:
        report["step_matched_sample"] = _brief(options.matched_store, options)[0]
    if options.random_store is not None:
        report["random_model"] = _versus_random(options.random_store, options, inp, probes)
    report["inference"] = claims.decide_claims(report, options.primary)
    report["causal_tests"] = None
    if options.interventions is not None:
        result = causal.load_result(options.interventions)
        report["causal_tests"] = causal.report_section(
            result, str(options.interventions), store.manifest
        )
    coords = {view: c.coords for view, c in fits.clusters.items()}
    return Computed(jsonable(report, digits=DIGITS), coords, inp.y)


def _brief(store: Any, options: AnalyzeOptions) -> tuple[dict[str, Any], AnalysisInput, Any]:
    """Logistic regression on the main views with the baseline controls and the family-wise
    permutation test over those views: the companion stores' analysis."""
    store, label = _open(store)
    inp = load_input(store, options)
    inp.views = inp.main_views
    if not inp.views:
        raise OpcircuitsError("the store has no latent positions to probe", path=label)
    plan, fits = _fit(inp, options, brief=True)
    ctrl = sections.controls(inp, plan, fits)
    probes = sections.probes(inp, plan, fits, ctrl, options.permutations)
    steps = inp.n_steps
    out = {
        "store": label,
        "model": store.manifest.get("model"),
        "n_problems": inp.n,
        "class_counts": {c: int(np.sum(inp.y == i)) for i, c in enumerate(inp.names)},
        "majority_rate": float(np.bincount(inp.y).max() / inp.n),
        "mean_steps_by_category": (
            None
            if steps is None
            else {c: float(steps[inp.y == i].mean()) for i, c in enumerate(inp.names)}
        ),
        "best_control": ctrl.best,
        "controls": [
            {k: c[k] for k in ("name", "accuracy", "ci_low", "ci_high")} for c in ctrl.json
        ],
        "probes": [
            {
                k: p[k]
                for k in ("view", "probe", "accuracy", "ci_low", "ci_high", "p_value", "p_family")
            }
            | {"gain_over_baseline": p["gain_over_baseline"]}
            for p in probes.json
            if p["probe"] == "logreg"
        ],
        "notes": inp.notes,
    }
    return out, inp, probes


def _versus_random(
    store: Any, options: AnalyzeOptions, inp: AnalysisInput, probes: sections.Probes
) -> dict[str, Any]:
    out, rinp, rprobes = _brief(store, options)
    same = list(rinp.records["id"]) == list(inp.records["id"]) and rinp.categories == inp.categories
    if not same:
        raise OpcircuitsError(
            "the re-initialized model's store holds other problems (or another order) than the "
            "analyzed store: extract it from the same problem file",
            path=out["store"],
        )
    for row in out["probes"]:
        trained = probes.scores[(row["view"], "logreg")]
        random = rprobes.scores[(row["view"], "logreg")]
        row["trained_accuracy"] = trained.interval.mean
        row["trained_minus_random"] = paired_difference(
            trained.fold_accuracy, random.fold_accuracy, inp.folds
        )
    return out


def _data(inp: AnalysisInput, options: AnalyzeOptions) -> dict[str, Any]:
    y, n = inp.y, inp.n
    return {
        "n_problems": n,
        "categories": inp.names,
        "class_counts": {c: int(np.sum(y == i)) for i, c in enumerate(inp.names)},
        "chance": 1.0 / inp.n_classes,
        "majority_rate": float(np.bincount(y).max() / n),
        "positions": inp.positions,
        "layers": inp.layers,
        "hidden_size": int(inp.hidden.shape[-1]),
        "views": [v.to_dict() for v in inp.views],
        "folds": options.folds,
        "repeats": options.repeats,
        "n_fold_scores": len(inp.folds),
        "confound_features": inp.confound_names,
    }


def _methods(options: AnalyzeOptions) -> dict[str, str]:
    family = "every probe" if options.permute_all_probes else "logistic regression"
    return {
        "ci": "95% corrected resampled t-interval (Nadeau & Bengio 2003) over the fold scores: "
        "mean ± t(J-1) * sqrt((1/J + n_test/n_train) * s²); paired differences use the same "
        "interval on per-fold differences, and their p-value is the one-sided corrected t-test",
        "gain_over_baseline": "probe accuracy minus the strongest baseline control's ("
        + ", ".join(BASELINE_CONTROLS)
        + ") on the same folds",
        "selectivity": "Hewitt & Liang (2019): probe accuracy minus the same probe's accuracy on "
        "a control task (labels a fixed random function of the question's first word, with the "
        "real class sizes), same folds",
        "permutation": f"labels permuted {options.permutations} times within each test fold of "
        f"the first repeat; {family} refitted on every view and token × layer cell; p_value: "
        "(1 + #null ≥ observed) / (1 + permutations) per probe; p_family: the same against "
        "each permutation's maximum over the family (max-statistic, family-wise)",
        "claims": "the summary claims an effect only under the gatekeeping rule: the decoding "
        "family (p_family) at α = 0.05 first, then the secondary families with Holm within "
        "each and across families (see `inference`)",
        "similarity": "mean cosine within − between categories over distinct pairs; "
        f"p from {tasks.CHEAP_FACTOR * options.permutations} label permutations",
        "silhouette": "Kaufman & Rousseeuw: ≤ 0.25 no substantial structure, 0.26–0.50 weak, "
        "0.51–0.70 reasonable, > 0.70 strong; p from label permutations",
        "logit_lens": "operator matches against permutations of ops_used across problems "
        "(the problem is the unit)",
    }


__all__ = ["AnalyzeOptions", "compute", "compute_report", "MAIN_VIEWS"]
