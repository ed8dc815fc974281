"""The task planner: every fit an analysis needs, as independent tasks run in worker processes.

A task is one (view, fold) probe fit, one control fit on one fold, or one descriptive analysis of
a view. `plan` lists them in a fixed order (heavy ones first), `run` executes them with joblib and
gathers the results by kind, in plan order, so the numbers never depend on --jobs: each task runs
single-threaded BLAS with fixed random states.

A report section that needs new fits adds a task kind here (`Task.kind`, a branch in `_run_one`
and its slot in `Fits`) and reads its results from `Fits`.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from opcircuits.analysis import clustering, controls, similarity
from opcircuits.analysis.features import View, view_matrix
from opcircuits.analysis.inputs import AnalysisInput
from opcircuits.analysis.probes import PROBES, fit_fold
from opcircuits.analysis.scoring import Fold
from opcircuits.analysis.workers import worker_config
from opcircuits.progress import stage_progress


@dataclass(frozen=True)
class Task:
    kind: str  # "view" | "text" | "confound" | "cluster" | "similarity"
    fold: Fold | None = None
    view: View | None = None
    probes: tuple[str, ...] = ()
    shuffled: bool = False
    permute: bool = False


@dataclass
class Fits:
    """Every task's result, gathered by kind (lists follow the folds' order)."""

    preds: dict[tuple[str, str], list[np.ndarray]] = field(default_factory=dict)
    perm_correct: dict[str, np.ndarray] = field(default_factory=dict)  # view → [perm] counts
    not_converged: int = 0
    clusters: dict[str, clustering.Clustering] = field(default_factory=dict)
    similarity: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    tasks: list[Task]
    shuffle_view: str  # the view whose fits also give the shuffled-label control
    same_as: dict[str, str]  # position view → main view with exactly its features
    permuted_y: np.ndarray | None  # [permutations, N] labels shared by every permutation test


def plan(inp: AnalysisInput, permutations: int, seed: int) -> Plan:
    """Every fit of the analysis, heavy tasks first."""
    views, folds, y = inp.views, inp.folds, inp.y
    main_views = inp.main_views
    shuffle_view = main_views[0].name if main_views else views[-1].name
    rng = np.random.default_rng([seed, 1])
    permuted_y = (
        np.stack([y[rng.permutation(inp.n)] for _ in range(permutations)]).astype(np.int16)
        if permutations
        else None
    )
    tasks: list[Task] = []
    # `first` and `last` hold exactly the features of the first and last latent positions' views,
    # so those position views reuse their logistic-regression predictions instead of refitting.
    same_as = {v.positions[0]: v.name for v in main_views if v.name in ("first", "last")}
    for view in sorted(views, key=lambda v: v.kind != "main"):
        if view.kind == "position" and view.name in same_as:
            continue
        for fold in folds:
            tasks.append(
                Task(
                    "view",
                    fold,
                    view,
                    PROBES if view.kind == "main" else ("logreg",),
                    shuffled=view.name == shuffle_view,
                    permute=view.kind == "main" and fold.repeat == 0 and permuted_y is not None,
                )
            )
    if inp.questions is not None:
        tasks += [Task("text", f) for f in folds]
    if inp.confound_x is not None:
        tasks += [Task("confound", f) for f in folds]
    # Descriptive analyses (all problems, no folds) share the worker pool.
    tasks += [Task("cluster", view=v) for v in views if v.kind == "main" or v.name == "bot"]
    tasks += [Task("similarity", view=v) for v in views if v.kind in ("main", "position")]
    return Plan(tasks, shuffle_view, same_as, permuted_y)


def run(the_plan: Plan, inp: AnalysisInput, jobs: int, seed: int, permutations: int) -> Fits:
    """Run every task (in worker processes when jobs > 1) and gather the results."""
    shared = dict(
        positions=inp.positions,
        layers=inp.layers,
        y=inp.y,
        questions=inp.questions,
        confound_x=inp.confound_x,
        permuted_y=the_plan.permuted_y,
        seed=seed,
        permutations=permutations,
    )
    results: list[Any] = []
    with (
        _shared(inp.hidden, jobs) as source,
        worker_config(),  # a kill -9 of this process ends the workers too
        stage_progress("analyze") as progress,
    ):
        bar = progress.add_task("fits", total=len(the_plan.tasks))
        parallel = joblib.Parallel(n_jobs=jobs, return_as="generator")
        tasks = (joblib.delayed(_run_one)(t, source=source, **shared) for t in the_plan.tasks)
        for result in parallel(tasks):
            results.append(result)
            progress.advance(bar)
    fits = Fits()
    for task, res in zip(the_plan.tasks, results, strict=True):
        if task.kind == "cluster":
            fits.clusters[task.view.name] = res
        elif task.kind == "similarity":
            fits.similarity[task.view.name] = res
        elif task.kind != "view":
            fits.preds.setdefault(("control", task.kind), []).append(res)
        else:
            for probe, p in res.predictions.items():
                fits.preds.setdefault((task.view.name, probe), []).append(p)
            fits.not_converged += res.not_converged
            if res.permutation_correct is not None:
                acc = fits.perm_correct.setdefault(task.view.name, np.zeros(permutations))
                acc += res.permutation_correct
    for pos, main_name in the_plan.same_as.items():
        fits.preds[(pos, "logreg")] = fits.preds[(main_name, "logreg")]
    return fits


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


def _run_one(
    task: Task,
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
