"""`analyze`: read a thought store, run every probe, control and descriptive analysis on the same
folds, and write analysis_report.json, the figures, ANALYSIS_SUMMARY.md and report.html.

`compute_report(store, options)` computes the report (no files written); `analyze` computes,
draws the figures and writes everything. The JSON holds every number plus the options and the
store manifest; it contains no timestamps and is byte-identical for the same store, options and
seed (whatever --jobs is: each task runs single-threaded BLAS with fixed random states, and
results are assembled in a fixed order).

A new report section is a function in `sections.py` returning its top-level JSON keys, called
from `_compute` below (after the sections whose numbers it uses); if it needs new fits, it adds a
task kind in `tasks.py`; its sentences are a function in `opcircuits.findings`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from opcircuits.analysis import sections, tasks
from opcircuits.analysis.features import MAIN_VIEWS
from opcircuits.analysis.inputs import AnalysisInput, load_input
from opcircuits.analysis.sections import BASELINE_CONTROLS
from opcircuits.files import atomic_dir, check_replaceable, refuse_same_files, write_json_atomic
from opcircuits.jsonable import jsonable
from opcircuits.options import AnalyzeOptions

log = logging.getLogger(__name__)

REPORT_FORMAT = 1
JSON_NAME = "analysis_report.json"
DIGITS = 6  # floats in the report are rounded to this many decimals


@dataclass
class Computed:
    """A computed report and what its figures need beyond the JSON."""

    report: dict[str, Any]
    pca_coords: dict[str, np.ndarray]  # view → [N, 2] PCA scores
    y: np.ndarray  # labels of the analyzed problems


def compute_report(store: Any, options: AnalyzeOptions | None = None) -> dict:
    """The analysis report of `store` (a path or an opened `Store`) as a dict; writes nothing."""
    return _compute(store, options or AnalyzeOptions()).report


def analyze(
    store_path: str | Path, out_dir: str | Path, options: AnalyzeOptions | None = None
) -> dict:
    """Analyze the store at `store_path`; write all outputs into `out_dir`; return the report."""
    from opcircuits.analysis import plots  # matplotlib only where figures are drawn
    from opcircuits.report import write_reports

    # Before any computing: the output must not be the store, nor a folder of someone else's.
    refuse_same_files({"out": out_dir}, {"--store": store_path})
    check_replaceable(out_dir)
    started = time.perf_counter()
    computed = _compute(store_path, options or AnalyzeOptions())
    report = computed.report
    # Written into a scratch folder swapped in whole: a crash or a full disk leaves the previous
    # report as it was, never a mix of old and new files.
    with atomic_dir(out_dir) as scratch:
        report["figures"] = plots.draw_all(report, computed.pca_coords, computed.y, scratch)
        write_json_atomic(scratch / JSON_NAME, report)
        write_reports(report, scratch)
    log.info("analysis written to %s in %.1f s", out_dir, time.perf_counter() - started)
    return report


def _compute(store: Any, options: AnalyzeOptions) -> Computed:
    from opcircuits.store import open_store

    label = str(store) if isinstance(store, str | Path) else str(store.path)
    if isinstance(store, str | Path):
        store = open_store(store)
    inp = load_input(store, options)
    jobs = joblib.effective_n_jobs(options.jobs)
    log.info(
        "analyzing %d problems, positions %s, layers %s, %d views, %d folds, %d jobs",
        inp.n,
        inp.positions,
        inp.layers,
        len(inp.views),
        len(inp.folds),
        jobs,
    )
    plan = tasks.plan(inp, options.permutations, options.seed)
    fits = tasks.run(plan, inp, jobs, options.seed, options.permutations)
    if fits.not_converged:
        inp.notes.append(
            f"{fits.not_converged} logistic-regression or MLP fits stopped at their iteration "
            "limit before converging."
        )
    ctrl = sections.controls(inp, fits, plan.shuffle_view)
    probes = sections.probes(inp, fits, ctrl, options.permutations)
    report: dict[str, Any] = {
        "format_version": REPORT_FORMAT,
        # `jobs` changes no number, so it is left out: the JSON is the same for any --jobs.
        "options": {k: v for k, v in asdict(options).items() if k != "jobs"},
        "store": {"path": label, "manifest": store.manifest},
        "data": _data(inp, options),
        "methods": _methods(inp, options),
        "best_control": ctrl.best,
        "controls": ctrl.json,
        "probes": probes.json,
        "permutation_tests": probes.permutation_json,
        **sections.token_layer(inp, fits, ctrl),
        "pre_thought": sections.pre_thought(inp, probes.scores, ctrl),
        **sections.descriptive(fits),
        "logit_lens": sections.lens(inp),
        "model": sections.model_answers(inp, fits, options.repeats),
        "examples": sections.examples(inp),
        "notes": inp.notes,
    }
    coords = {view: c.coords for view, c in fits.clusters.items()}
    return Computed(jsonable(report, digits=DIGITS), coords, inp.y)


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


def _methods(inp: AnalysisInput, options: AnalyzeOptions) -> dict[str, str]:
    return {
        "ci": "95% corrected resampled t-interval (Nadeau & Bengio 2003) over the "
        f"{len(inp.folds)} fold scores: mean ± t(J-1) * sqrt((1/J + n_test/n_train) * s²)",
        "selectivity": "probe accuracy minus a control's accuracy on the same folds; the "
        "interval is the same corrected t-interval over per-fold differences. "
        "`selectivity` is against the best of " + ", ".join(BASELINE_CONTROLS),
        "permutation": f"labels permuted {options.permutations} times; logistic regression "
        "refitted on the first repeat's folds; p = (1 + #null ≥ observed) / "
        "(1 + permutations)",
        "similarity": "mean cosine within − between categories over distinct pairs; "
        "p from label permutations",
    }


__all__ = ["AnalyzeOptions", "analyze", "compute_report", "MAIN_VIEWS"]
