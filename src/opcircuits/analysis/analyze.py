"""`analyze`: read a thought store, run every probe, control and descriptive analysis on the same
folds, and write analysis_report.json, the figures, ANALYSIS_SUMMARY.md and report.html.

The JSON holds every number plus the options and the store manifest; it contains no timestamps
and is byte-identical for the same store, options and seed (whatever --jobs is: each task runs
single-threaded BLAS with fixed random states, and results are assembled in a fixed order).
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from opcircuits.analysis import clustering, controls, logit_lens, model_accuracy, similarity
from opcircuits.analysis.features import MAIN_VIEWS, View, build_views, view_matrix
from opcircuits.analysis.probes import PROBES, fit_fold
from opcircuits.analysis.scoring import Fold, Scores, make_folds, paired_difference, score
from opcircuits.analysis.stats import permutation_p_value
from opcircuits.errors import OpcircuitsError
from opcircuits.files import write_json_atomic
from opcircuits.options import AnalyzeOptions

log = logging.getLogger(__name__)

REPORT_FORMAT = 1
JSON_NAME = "analysis_report.json"
CATEGORY_ORDER = ("pure_addition", "pure_multiplication", "mixed")
BASELINE_CONTROLS = ("majority", "shuffled_labels", "question_text", "confound")


# --- inputs ---------------------------------------------------------------------------------------


def _column(records: Any, name: str) -> list[Any] | None:
    """A records column as a list, or None when absent or entirely null (legacy imports)."""
    if name not in records.columns:
        return None
    values = [None if _is_null(v) else v for v in records[name].tolist()]
    return None if all(v is None for v in values) else values


def _is_null(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _encode(categories: Sequence[str]) -> tuple[list[str], np.ndarray]:
    present = sorted(set(categories))
    names = [c for c in CATEGORY_ORDER if c in present] + [
        c for c in present if c not in CATEGORY_ORDER
    ]
    index = {c: i for i, c in enumerate(names)}
    return names, np.array([index[c] for c in categories], dtype=np.int64)


@contextlib.contextmanager
def _shared(hidden: np.ndarray, jobs: int) -> Iterator[np.ndarray]:
    """For several workers, a read-only memmap: joblib passes it by file name, not by copy."""
    if jobs == 1:
        yield hidden
        return
    with tempfile.TemporaryDirectory(prefix="opcircuits-analyze-") as tmp:
        path = Path(tmp) / "hidden.npy"
        np.save(path, hidden)
        yield np.load(path, mmap_mode="r")


# --- the per-fold tasks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Task:
    kind: str  # "view" | "text" | "confound" | "cluster" | "similarity"
    fold: Fold | None = None
    view: View | None = None
    probes: tuple[str, ...] = ()
    shuffled: bool = False
    permute: bool = False


def _run_task(
    task: _Task,
    source: np.ndarray,
    positions: list[str],
    layers: list[int],
    y: np.ndarray,
    questions: list[str] | None,
    confound_x: np.ndarray | None,
    permuted_y: np.ndarray | None,
    seed: int,
    permutations: int,
) -> Any:
    fold = task.fold
    if task.kind == "cluster":
        return clustering.cluster_view(view_matrix(source, task.view, positions, layers), y)
    if task.kind == "similarity":
        X = view_matrix(source, task.view, positions, layers)
        return similarity.within_between(X, y, int(y.max()) + 1, permutations, seed)
    if task.kind == "text":
        return controls.text_fold(questions or [], y, fold.train, fold.test, seed)
    if task.kind == "confound":
        return controls.confound_fold(confound_x, y, fold.train, fold.test, seed)
    X = view_matrix(source, task.view, positions, layers)
    shuffled = None
    if task.shuffled:
        rng = np.random.default_rng([seed, 2, fold.index])
        shuffled = rng.permutation(y[fold.train])
    return fit_fold(
        X,
        y,
        fold.train,
        fold.test,
        probes=task.probes,
        seed=seed,
        shuffled_train_y=shuffled,
        permuted_y=permuted_y if task.permute else None,
    )


def _run_all(tasks: list[_Task], jobs: int, **shared: Any) -> list[Any]:
    columns = [TextColumn("analyze"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    out: list[Any] = []
    with Progress(*columns, transient=True) as progress:
        bar = progress.add_task("fits", total=len(tasks))
        parallel = joblib.Parallel(n_jobs=jobs, return_as="generator")
        for result in parallel(joblib.delayed(_run_task)(t, **shared) for t in tasks):
            out.append(result)
            progress.advance(bar)
    return out


# --- assembling numbers ---------------------------------------------------------------------------


def _clean(obj: Any) -> Any:
    """JSON-ready: numpy → Python, floats rounded to 6 decimals, NaN/inf → null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.integer | bool | np.bool_):
        return obj.item() if isinstance(obj, np.generic) else obj
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return None if not math.isfinite(f) else round(f, 6) + 0.0
    return obj


def _selectivity(acc: np.ndarray, ctrl: dict[str, Scores], folds: list[Fold]) -> dict:
    return {name: paired_difference(acc, s.fold_accuracy, folds) for name, s in ctrl.items()}


def analyze(
    store_path: str | Path, out_dir: str | Path, options: AnalyzeOptions | None = None
) -> dict:
    """Analyse the store at `store_path`; write all outputs into `out_dir`; return the report."""
    from opcircuits.analysis import plots  # matplotlib only where figures are drawn
    from opcircuits.report import write_reports
    from opcircuits.store import open_store

    options = options or AnalyzeOptions()
    started = time.perf_counter()
    store = open_store(store_path)
    if not store.complete:
        raise OpcircuitsError("store is incomplete; finish extraction first", path=store_path)
    pos_idx = store.position_indices(options.positions)
    lay_idx = store.layer_indices(options.layers)
    positions = [store.positions[i] for i in pos_idx]
    layers = [store.layers[i] for i in lay_idx]
    records = store.records
    hidden = store.hidden(positions, layers)
    notes: list[str] = []
    # A stratified fold needs every category in every test fold: categories with fewer problems
    # than folds (e.g. a stray "unclassified" one) are left out, and the report says so.
    counts = records["category"].astype(str).value_counts()
    small = sorted(c for c, k in counts.items() if k < options.folds)
    if small and len(counts) - len(small) >= 2:
        keep = ~records["category"].astype(str).isin(small).to_numpy()
        records = records[keep].reset_index(drop=True)
        hidden = hidden[keep]
        notes.append(
            "Left out categories with fewer problems than --folds: "
            + ", ".join(f"{c} ({counts[c]})" for c in small)
            + "."
        )
    categories = [str(c) for c in records["category"].tolist()]
    names, y = _encode(categories)
    if len(names) < 2:
        raise OpcircuitsError(
            f"need at least 2 categories to probe, found {names}",
            path=store_path,
            field="category",
        )
    n, n_cls = len(y), len(names)
    folds = make_folds(y, options.folds, options.repeats, options.seed)
    views = build_views(positions, layers)
    jobs = joblib.effective_n_jobs(options.jobs)
    log.info(
        "analysing %d problems, positions %s, layers %s, %d views, %d folds, %d jobs",
        n,
        positions,
        layers,
        len(views),
        len(folds),
        jobs,
    )

    questions = _column(records, "question")
    n_steps = _column(records, "n_steps")
    confound_cols, confound_names = [], []
    if n_steps is not None and all(v is not None for v in n_steps):
        confound_cols.append(np.asarray(n_steps, dtype=np.float64))
        confound_names.append("n_steps")
    if questions is not None and all(isinstance(q, str) for q in questions):
        confound_cols.append(np.array([len(q.split()) for q in questions], dtype=np.float64))
        confound_names.append("question_words")
    else:
        questions = None
        notes.append("The store has no question text: the question-text control is skipped.")
    confound_x = np.column_stack(confound_cols) if confound_cols else None
    if confound_x is None:
        notes.append("The store has neither n_steps nor question text: no confound control.")
    elif len(confound_names) < 2:
        notes.append(f"The confound control uses {confound_names[0]} only (the other is missing).")

    main_views = [v for v in views if v.kind == "main"]
    shuffle_view = main_views[0].name if main_views else views[-1].name
    rng = np.random.default_rng([options.seed, 1])
    permuted_y = (
        np.stack([y[rng.permutation(n)] for _ in range(options.permutations)]).astype(np.int16)
        if options.permutations
        else None
    )
    tasks: list[_Task] = []
    # `first` and `last` hold exactly the features of the first and last latent positions' views,
    # so those position views reuse their logistic-regression predictions instead of refitting.
    same_as = {v.positions[0]: v.name for v in main_views if v.name in ("first", "last")}
    for view in sorted(views, key=lambda v: v.kind != "main"):  # heavy tasks first
        if view.kind == "position" and view.name in same_as:
            continue
        for fold in folds:
            tasks.append(
                _Task(
                    "view",
                    fold,
                    view,
                    PROBES if view.kind == "main" else ("logreg",),
                    shuffled=view.name == shuffle_view,
                    permute=view.kind == "main" and fold.repeat == 0 and permuted_y is not None,
                )
            )
    if questions is not None:
        tasks += [_Task("text", f) for f in folds]
    if confound_x is not None:
        tasks += [_Task("confound", f) for f in folds]
    # Descriptive analyses (all problems, no folds) share the worker pool.
    desc_views = [v for v in views if v.kind == "main" or v.name == "bot"]
    tasks += [_Task("cluster", view=v) for v in desc_views]
    tasks += [_Task("similarity", view=v) for v in views if v.kind in ("main", "position")]

    with _shared(hidden, jobs) as source:
        results = _run_all(
            tasks,
            jobs,
            source=source,
            positions=positions,
            layers=layers,
            y=y,
            questions=questions,
            confound_x=confound_x,
            permuted_y=permuted_y,
            seed=options.seed,
            permutations=options.permutations,
        )

    # Collect per-fold predictions.
    preds: dict[tuple[str, str], list[np.ndarray]] = {}
    perm_correct: dict[str, np.ndarray] = {}
    not_converged = 0
    cluster_json, cluster_coords, sim_json = [], {}, []
    for task, res in zip(tasks, results, strict=True):
        if task.kind == "cluster":
            cluster_coords[task.view.name] = res.coords
            cluster_json.append({"view": task.view.name, **res.summary()})
            continue
        if task.kind == "similarity":
            sim_json.append({"view": task.view.name, **res})
            continue
        if task.kind != "view":
            preds.setdefault(("control", task.kind), []).append(res)
            continue
        for probe, p in res.predictions.items():
            preds.setdefault((task.view.name, probe), []).append(p)
        not_converged += res.not_converged
        if res.permutation_correct is not None:
            acc = perm_correct.setdefault(task.view.name, np.zeros(options.permutations))
            acc += res.permutation_correct
    if not_converged:
        notes.append(
            f"{not_converged} logistic-regression or MLP fits stopped at their iteration "
            "limit before converging."
        )

    for pos, main_name in same_as.items():
        preds[(pos, "logreg")] = preds[(main_name, "logreg")]

    def scores_of(key: tuple[str, str]) -> Scores:
        return score(y, folds, preds[key], n_cls)

    # Controls.
    ctrl: dict[str, Scores] = {}
    majority = [controls.majority_predict(y, f.train, f.test) for f in folds]
    ctrl["majority"] = score(y, folds, majority, n_cls)
    ctrl["shuffled_labels"] = scores_of((shuffle_view, "shuffled_labels"))
    if questions is not None:
        ctrl["question_text"] = scores_of(("control", "text"))
    if confound_x is not None:
        ctrl["confound"] = scores_of(("control", "confound"))
    pre = scores_of(("bot", "logreg")) if "bot" in positions else None
    if pre is None:
        notes.append("No `bot` position selected: the pre-thought control is skipped.")
    control_desc = {
        "majority": "always the training fold's most frequent category",
        "shuffled_labels": f"logistic regression on the `{shuffle_view}` view, trained on "
        "shuffled labels",
        "question_text": "TF-IDF (word 1-2-grams) + logistic regression on the question text",
        "confound": "logistic regression on cubic terms of " + " and ".join(confound_names),
        "pre_thought": "logistic regression on the `bot` position (before any latent step), "
        "layers concatenated",
    }
    controls_json = [
        {"name": k, "description": control_desc[k], **s.summary()} for k, s in ctrl.items()
    ]
    if pre is not None:
        controls_json.append(
            {"name": "pre_thought", "description": control_desc["pre_thought"], **pre.summary()}
        )
    best_control = max(ctrl, key=lambda k: (ctrl[k].interval.mean, -list(ctrl).index(k)))

    # Probes (main views × all probes; position views × logistic regression).
    repeat0 = [i for i, f in enumerate(folds) if f.repeat == 0]
    probes_json: list[dict] = []
    permutation_json: list[dict] = []
    probe_scores: dict[tuple[str, str], Scores] = {}
    for view in [v for v in views if v.kind in ("main", "position")]:
        for probe in PROBES if view.kind == "main" else ("logreg",):
            s = scores_of((view.name, probe))
            probe_scores[(view.name, probe)] = s
            p_value = None
            if probe == "logreg" and view.name in perm_correct:
                observed = (
                    float(
                        sum(
                            np.sum(preds[(view.name, probe)][i] == y[folds[i].test])
                            for i in repeat0
                        )
                    )
                    / n
                )
                null = perm_correct[view.name] / n
                p_value = permutation_p_value(observed, null)
                permutation_json.append(
                    {
                        "view": view.name,
                        "probe": probe,
                        "n_permutations": options.permutations,
                        "observed_accuracy": observed,
                        "null_mean": float(null.mean()),
                        "null_q95": float(np.quantile(null, 0.95)),
                        "p_value": p_value,
                    }
                )
            sel_all = _selectivity(s.fold_accuracy, ctrl, folds)
            entry = {
                "view": view.name,
                "view_kind": view.kind,
                "probe": probe,
                **s.summary(),
                "p_value": p_value,
                "selectivity": {"control": best_control, **sel_all[best_control]},
                "selectivity_vs": sel_all,
                "selectivity_vs_pre_thought": (
                    paired_difference(s.fold_accuracy, pre.fold_accuracy, folds)
                    if pre is not None and view.name != "bot"
                    else None
                ),
            }
            probes_json.append(entry)

    # Token × layer map.
    map_json = []
    for view in [v for v in views if v.kind == "cell"]:
        s = scores_of((view.name, "logreg"))
        map_json.append(
            {
                "position": view.positions[0],
                "layer": view.layers[0],
                "accuracy": s.interval.mean,
                "ci_low": s.interval.low,
                "ci_high": s.interval.high,
                "f1_macro": s.f1_macro,
                "selectivity": {
                    "control": best_control,
                    **paired_difference(s.fold_accuracy, ctrl[best_control].fold_accuracy, folds),
                },
            }
        )
    best_cell = max(map_json, key=lambda c: c["accuracy"])
    sweep = len(layers) >= 3 and layers == list(range(layers[0], layers[0] + len(layers)))

    # Pre-thought vs each latent step.
    pre_json = []
    if pre is not None:
        for view in [v for v in views if v.kind == "position" and v.name != "bot"]:
            s = probe_scores[(view.name, "logreg")]
            pre_json.append(
                {
                    "position": view.name,
                    "accuracy": s.interval.mean,
                    "ci_low": s.interval.low,
                    "ci_high": s.interval.high,
                    "minus_pre_thought": paired_difference(
                        s.fold_accuracy, pre.fold_accuracy, folds
                    ),
                }
            )

    # Logit lens.
    lens_tokens = _column(records, "lens_top_tokens")
    ops_used = _column(records, "ops_used")
    lens_json: dict[str, Any] = {"available": lens_tokens is not None}
    if lens_tokens is None:
        notes.append("The store has no logit-lens columns: the logit-lens section is skipped.")
    else:
        # The lens covers every stored position (not only the analysed ones).
        lens_json.update(
            logit_lens.analyse(lens_tokens, categories, names, ops_used, store.positions)
        )
        if ops_used is None:
            notes.append("The store has no ops_used column: operator matches are not computed.")

    # The model's own answers.
    correct = _column(records, "correct")
    model_json: dict[str, Any] = {"available": correct is not None}
    if correct is None:
        notes.append("The store has no answers (`correct`): model accuracy is skipped.")
    else:
        ok = np.array([bool(c) if c is not None else False for c in correct])
        split = []
        for view in main_views:
            for probe in PROBES:
                split.append(
                    {
                        "view": view.name,
                        "probe": probe,
                        **model_accuracy.probe_by_correctness(
                            y, folds, preds[(view.name, probe)], ok, options.repeats
                        ),
                    }
                )
        model_json.update(
            answer_accuracy=model_accuracy.answer_accuracy(correct, categories, names),
            probe_by_correctness=split,
        )

    report: dict[str, Any] = {
        "format_version": REPORT_FORMAT,
        # `jobs` changes no number, so it is left out: the JSON is the same for any --jobs.
        "options": {k: v for k, v in asdict(options).items() if k != "jobs"},
        "store": {"path": str(store_path), "manifest": store.manifest},
        "data": {
            "n_problems": n,
            "categories": names,
            "class_counts": {c: int(np.sum(y == i)) for i, c in enumerate(names)},
            "chance": 1.0 / n_cls,
            "majority_rate": float(np.bincount(y).max() / n),
            "positions": positions,
            "layers": layers,
            "hidden_size": int(hidden.shape[-1]),
            "views": [v.to_dict() for v in views],
            "folds": options.folds,
            "repeats": options.repeats,
            "n_fold_scores": len(folds),
            "confound_features": confound_names,
        },
        "methods": {
            "ci": "95% corrected resampled t-interval (Nadeau & Bengio 2003) over the "
            f"{len(folds)} fold scores: mean ± t(J-1) * sqrt((1/J + n_test/n_train) * s²)",
            "selectivity": "probe accuracy minus a control's accuracy on the same folds; the "
            "interval is the same corrected t-interval over per-fold differences. "
            "`selectivity` is against the best of " + ", ".join(BASELINE_CONTROLS),
            "permutation": f"labels permuted {options.permutations} times; logistic regression "
            "refitted on the first repeat's folds; p = (1 + #null ≥ observed) / "
            "(1 + permutations)",
            "similarity": "mean cosine within − between categories over distinct pairs; "
            "p from label permutations",
        },
        "best_control": best_control,
        "controls": controls_json,
        "probes": probes_json,
        "permutation_tests": permutation_json,
        "token_layer_map": map_json,
        "best_cell": {
            "position": best_cell["position"],
            "layer": best_cell["layer"],
            "accuracy": best_cell["accuracy"],
        },
        "layer_sweep": sweep,
        "pre_thought": pre_json,
        "clustering": cluster_json,
        "similarity": sim_json,
        "logit_lens": lens_json,
        "model": model_json,
        "examples": _examples(records, categories, names, lens_tokens, correct),
        "notes": notes,
    }
    report = _clean(report)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report["figures"] = plots.draw_all(report, cluster_coords, y, out_dir)
    write_json_atomic(out_dir / JSON_NAME, report)
    write_reports(report, out_dir)
    log.info("analysis written to %s in %.1f s", out_dir, time.perf_counter() - started)
    return report


def _examples(
    records: Any,
    categories: list[str],
    names: list[str],
    lens_tokens: list[Any] | None,
    correct: list[Any] | None,
    per_category: int = 2,
) -> list[dict]:
    """A few problems per category (the first in dataset order), shown in the HTML report."""
    ids = [str(i) for i in records["id"].tolist()]
    questions = _column(records, "question")
    out = []
    for cat in names:
        for i in [i for i, c in enumerate(categories) if c == cat][:per_category]:
            top1 = None
            if lens_tokens is not None and lens_tokens[i] is not None:
                top1 = [
                    logit_lens.printable(list(t)[0]) if t is not None and len(t) else ""
                    for t in lens_tokens[i]
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


__all__ = ["AnalyzeOptions", "analyze", "MAIN_VIEWS"]
