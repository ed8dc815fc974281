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

from opcircuits.analysis import (
    causal,
    claims,
    intermediate,
    secondary,
    sections,
    tasks,
    tuned_lens,
)
from opcircuits.analysis.features import MAIN_VIEWS
from opcircuits.analysis.inputs import AnalysisInput, check_folds, kept_categories, load_input
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
    # More workers than CPUs cannot be faster, and each holds its own copy of the libraries: a
    # --jobs of hundreds would exhaust the memory (the results do not depend on it).
    jobs = min(joblib.effective_n_jobs(options.jobs), joblib.cpu_count())
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
    if not brief:
        _check_primary(plan, options)
    fits = tasks.run(plan, inp, jobs, options.seed, options.permutations)
    if fits.not_converged:
        inp.notes.append(
            f"{fits.not_converged} logistic-regression or MLP fits stopped at their iteration "
            "limit before converging."
        )
    return plan, fits


def _check_primary(plan: tasks.Plan, options: AnalyzeOptions) -> None:
    """A pre-registered probe must be one the permutation tests cover: checked before the fits
    (the claims found out only after the whole analysis)."""
    if options.primary is None:
        return
    members = tasks.permutation_members(plan)
    if options.primary not in members:
        why = (
            "there are no permutation tests (--permutations 0)"
            if not options.permutations
            else "the permutation-tested probes are "
            + ", ".join(sorted(members, key=lambda m: (len(m), m))[:8])
            + (" …" if len(members) > 8 else "")
            + " (the random forest and MLP need --permute-all-probes)"
        )
        raise OpcircuitsError(
            f"{options.primary!r} is not a permutation-tested probe: {why}", field="primary"
        )


def compute(store: Any, options: AnalyzeOptions) -> Computed:
    # The sweep's results are read and checked first: a bad file stops the analysis before it
    # starts, not after it.
    result = None
    if options.interventions is not None:
        result = causal.load_result(options.interventions)
    atp = None
    if options.attribution is not None:
        from opcircuits.analysis import attribution

        atp = attribution.report_section(
            attribution.load_result(options.attribution), str(options.attribution)
        )
    store, label = _open(store)
    lens = None  # checked before the fits too: a lens of another store is refused at once
    if options.tuned_lens is not None:
        lens = tuned_lens.load(options.tuned_lens, store.manifest)
    inp = load_input(store, options)
    for companion in (options.matched_store, options.random_store):  # their checks, first too
        if companion is not None:
            check_folds(_open(companion)[0], options)
    if options.random_store is not None:
        _check_same_problems(_open(options.random_store)[0], inp, options)
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
        "step_operations": secondary.step_operations(inp, plan, fits),
        **sections.descriptive(fits),
        "logit_lens": sections.lens(inp, tasks.CHEAP_FACTOR * options.permutations, options.seed),
        "intermediate_values": intermediate.section(
            inp, folds=options.folds, permutations=options.permutations, seed=options.seed
        ),
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
    if result is not None:
        report["causal_tests"] = causal.report_section(
            result, str(options.interventions), store.manifest
        )
    report["attribution"] = atp
    report["tuned_lens"] = None
    if lens is not None:
        report["tuned_lens"] = tuned_lens.section(lens, str(options.tuned_lens))
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


def _check_same_problems(store: Any, inp: AnalysisInput, options: AnalyzeOptions) -> None:
    """The random-model store must hold the analyzed problems, in order: checked on its records
    before any work (its comparison probe by probe needs the same folds)."""
    records = store.records
    records = records[kept_categories(records, options.folds)[0]]
    same = (
        list(records["id"]) == list(inp.records["id"])
        and [str(c) for c in records["category"]] == inp.categories
    )
    if not same:
        raise OpcircuitsError(
            "the re-initialized model's store holds other problems (or another order) than the "
            "analyzed store: extract it from the same problem file",
            path=store.path,
            field="random_store",
        )


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
        "intermediate_values": "r_j's first token among the final layer's top-k lens tokens, "
        f"against {tasks.CHEAP_FACTOR * options.permutations} permutations of the results within "
        "n_steps strata; value probes: ridge R² out of fold against "
        f"{options.permutations} such permutations; p_family: step-down maxT over each "
        "heat map's cells (its own family, outside the operation claims)",
    }


__all__ = ["AnalyzeOptions", "compute", "compute_report", "MAIN_VIEWS"]
