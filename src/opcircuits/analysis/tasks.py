"""The task planner: every fit an analysis needs, as independent tasks run in worker processes.

A *problem* is one learning problem on the stored states: which rows, which labels, which folds
(the operation category; the same on a step-matched subsample; the step count itself; the binary
"uses ×/÷?" and "uses +/−?"). A task is one (problem, view, fold) probe fit with its extras
(shuffled labels, control task, permutation refits, confound + states), one control fit on one
fold, or one descriptive analysis of a view. `plan` lists them in a fixed order (heavy ones
first), `run` executes them with joblib and gathers the results by key, in plan order, so the
numbers never depend on --jobs: each task runs single-threaded BLAS with fixed random states.

A report section that needs new fits adds a problem, or a task kind here (`Task.kind`, a branch
in `_run_one` and its slot in `Fits`), and reads its results from `Fits`.
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
from threadpoolctl import threadpool_limits

from opcircuits.analysis import clustering, confound, controls, similarity
from opcircuits.analysis.control_task import control_labels, first_word
from opcircuits.analysis.features import View, view_matrix
from opcircuits.analysis.inference import stratified_permutations
from opcircuits.analysis.inputs import AnalysisInput, records_column
from opcircuits.analysis.probes import PROBES, fit_fold
from opcircuits.analysis.scoring import Fold, make_folds
from opcircuits.analysis.workers import worker_config
from opcircuits.progress import stage_progress

CATEGORY = "category"
# The descriptive permutation tests need no refits, so they afford this many times more
# permutations (and p-values small enough to survive the multiplicity correction).
CHEAP_FACTOR = 5
MUL_DIV, ADD_SUB = frozenset("*/"), frozenset("+-")


@dataclass
class Problem:
    """One learning problem: rows of the stored states, their labels, folds over them."""

    name: str
    rows: np.ndarray  # rows of AnalysisInput.hidden
    y: np.ndarray
    class_names: list[str]
    folds: list[Fold]
    views: list[View]  # the views probed (logistic regression)
    questions: list[str] | None = None  # for the question-text control
    confound_x: np.ndarray | None = None  # for the confound control and the incremental test
    n_steps: np.ndarray | None = None  # for the step-lookup control
    control_y: np.ndarray | None = None  # the control task's labels (Hewitt & Liang)

    @property
    def n(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Task:
    kind: str  # "view" | "text" | "confound" | "cluster" | "similarity"
    problem: str = CATEGORY
    fold: Fold | None = None
    view: View | None = None
    probes: tuple[str, ...] = ()
    shuffled: bool = False
    permute: bool = False
    control_task: bool = False
    incremental: bool = False


@dataclass
class Fits:
    """Every task's result, gathered by key (lists follow the problem's folds)."""

    # (problem, view, name) → per-fold predictions; name: a probe, "shuffled_labels",
    # "control_task:<probe>", "incremental", or ("control", kind) views for controls.
    preds: dict[tuple[str, str, str], list[np.ndarray]] = field(default_factory=dict)
    # (problem, view, probe) → correct counts per permutation, summed over the first repeat
    perm_correct: dict[tuple[str, str, str], np.ndarray] = field(default_factory=dict)
    not_converged: int = 0
    clusters: dict[str, clustering.Clustering] = field(default_factory=dict)
    similarity: dict[str, dict] = field(default_factory=dict)


@dataclass
class Plan:
    tasks: list[Task]
    problems: dict[str, Problem]
    shuffle_view: str  # the view whose fits also give the shuffled-label control
    same_as: dict[str, str]  # position view → main view with exactly its features
    permuted_y: np.ndarray | None  # [permutations, N] labels of the category problem
    permute_probes: tuple[str, ...]  # the probes refitted on every permutation


def problems(inp: AnalysisInput, options: Any) -> dict[str, Problem]:
    """The category problem and, where the store allows, the secondary ones."""
    main_views = inp.main_views
    control_y = None
    if inp.questions is not None:
        control_y = control_labels([first_word(q) for q in inp.questions], inp.y, options.seed)
    out = {
        CATEGORY: Problem(
            CATEGORY,
            inp.rows,
            inp.y,
            inp.names,
            inp.folds,
            inp.views,
            inp.questions,
            inp.confound_x,
            inp.n_steps,
            control_y,
        )
    }
    if not main_views:
        return out
    steps = inp.n_steps
    if steps is not None and not confound.is_matched(inp.y, steps):
        keep = confound.matched_subsample(inp.y, steps, options.seed)
        y = inp.y[keep]
        if len(keep) and np.bincount(y, minlength=inp.n_classes).min() >= options.folds:
            out["step_matched"] = Problem(
                "step_matched",
                inp.rows[keep],
                y,
                inp.names,
                make_folds(y, options.folds, options.repeats, options.seed),
                main_views,
                n_steps=steps[keep],
            )
    if steps is not None:
        bins, names = confound.step_bins(steps, options.folds)
        if len(names) >= 2:
            out["n_steps"] = Problem(
                "n_steps",
                inp.rows,
                bins,
                names,
                make_folds(bins, options.folds, options.repeats, options.seed),
                main_views,
            )
    ops = records_column(inp.all_records, "ops_used")
    if ops is not None:
        rows = np.array([i for i, o in enumerate(ops) if o is not None], dtype=np.int64)
        texts = records_column(inp.all_records, "question")
        for name, family in (("uses_mul_div", MUL_DIV), ("uses_add_sub", ADD_SUB)):
            y = np.array([int(bool(family & {str(s) for s in ops[i]})) for i in rows])
            if len(rows) and np.bincount(y, minlength=2).min() >= options.folds:
                questions = None
                if texts is not None and all(isinstance(texts[i], str) for i in rows):
                    questions = [texts[i] for i in rows]
                out[name] = Problem(
                    name,
                    rows,
                    y,
                    ["no", "yes"],
                    make_folds(y, options.folds, options.repeats, options.seed),
                    main_views,
                    questions,
                )
    return out


def plan(inp: AnalysisInput, options: Any, brief: bool = False) -> Plan:
    """Every fit of the analysis, heavy tasks first. `brief`: only the category problem's
    logistic regression (with its controls and permutations) on `inp.views`."""
    probs = problems(inp, options)
    if brief:
        probs = {CATEGORY: probs[CATEGORY]}
    cat = probs[CATEGORY]
    views, folds = inp.views, inp.folds
    main_views = inp.main_views
    shuffle_view = main_views[0].name if main_views else views[-1].name
    permuted_y = None
    if options.permutations:
        # Shuffled within each test fold × n_steps stratum of the first repeat: every fold keeps
        # its class counts and every label its step counts (the null: nothing beyond the steps).
        rng = np.random.default_rng([options.seed, 1])
        groups = [f.test for f in folds if f.repeat == 0]
        groups = groups if inp.n_steps is None else confound.fold_strata(folds, inp.n_steps)
        permuted_y = stratified_permutations(inp.y, groups, options.permutations, rng)
    permute_probes = PROBES if options.permute_all_probes and not brief else ("logreg",)
    tasks: list[Task] = []
    # `first` and `last` hold exactly the features of the first and last latent positions' views,
    # so those position views reuse their predictions instead of refitting.
    same_as = {v.positions[0]: v.name for v in main_views if v.name in ("first", "last")}
    for view in sorted(views, key=lambda v: v.kind != "main"):
        if view.kind == "position" and view.name in same_as:
            continue
        for fold in folds:
            tasks.append(
                Task(
                    "view",
                    CATEGORY,
                    fold,
                    view,
                    PROBES if view.kind == "main" and not brief else ("logreg",),
                    shuffled=view.name == shuffle_view,
                    permute=fold.repeat == 0 and permuted_y is not None,
                    control_task=cat.control_y is not None and not brief,
                    incremental=view.kind == "main" and cat.confound_x is not None and not brief,
                )
            )
    for prob in probs.values():
        if prob.name == CATEGORY:
            continue
        tasks += [
            Task("view", prob.name, f, v, ("logreg",)) for v in prob.views for f in prob.folds
        ]
    for prob in probs.values():
        if prob.questions is not None:
            tasks += [Task("text", prob.name, f) for f in prob.folds]
    if cat.confound_x is not None:
        tasks += [Task("confound", CATEGORY, f) for f in folds]
    if brief:
        return Plan(tasks, probs, shuffle_view, same_as, permuted_y, permute_probes)
    # Descriptive analyses (all problems, no folds) share the worker pool.
    tasks += [Task("cluster", view=v) for v in views if v.kind == "main" or v.name == "bot"]
    tasks += [Task("similarity", view=v) for v in views if v.kind in ("main", "position")]
    return Plan(tasks, probs, shuffle_view, same_as, permuted_y, permute_probes)


def run(the_plan: Plan, inp: AnalysisInput, jobs: int, seed: int, permutations: int) -> Fits:
    """Run every task (in worker processes when jobs > 1) and gather the results."""
    shared = dict(
        positions=inp.positions,
        layers=inp.layers,
        problems=the_plan.problems,
        permuted_y=the_plan.permuted_y,
        permute_probes=the_plan.permute_probes,
        seed=seed,
        cheap_permutations=CHEAP_FACTOR * permutations,
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
    _last_view.clear()  # jobs=1: release the store's states held by the cache
    fits = Fits()
    for task, res in zip(the_plan.tasks, results, strict=True):
        if task.kind == "cluster":
            fits.clusters[task.view.name] = res
        elif task.kind == "similarity":
            fits.similarity[task.view.name] = res
        elif task.kind != "view":
            fits.preds.setdefault((task.problem, "control", task.kind), []).append(res)
        else:
            for name, p in res.predictions.items():
                fits.preds.setdefault((task.problem, task.view.name, name), []).append(p)
            fits.not_converged += res.not_converged
            for probe, correct in res.permutation_correct.items():
                key = (task.problem, task.view.name, probe)
                fits.perm_correct[key] = fits.perm_correct.get(key, 0) + correct
    for pos, main_name in the_plan.same_as.items():
        for name in ("logreg", "control_task:logreg"):
            if (CATEGORY, main_name, name) in fits.preds:
                fits.preds[(CATEGORY, pos, name)] = fits.preds[(CATEGORY, main_name, name)]
        if (CATEGORY, main_name, "logreg") in fits.perm_correct:
            fits.perm_correct[(CATEGORY, pos, "logreg")] = fits.perm_correct[
                (CATEGORY, main_name, "logreg")
            ]
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
    problems: dict[str, Problem],
    permuted_y: np.ndarray | None,
    permute_probes: tuple[str, ...],
    seed: int,
    cheap_permutations: int,
) -> Any:
    prob = problems[task.problem]
    y, fold = prob.y, task.fold
    if task.kind in ("cluster", "similarity"):
        X = _view_matrix(source, task.view, positions, layers, prob)
        # Single-threaded BLAS as the fits: two threads per worker on two cores oversubscribe
        # them (a 600 × 600 eigh took seconds instead of 0.03).
        with threadpool_limits(1):
            if task.kind == "cluster":
                return clustering.cluster_view(X, y, cheap_permutations, seed)
            return similarity.within_between(X, y, int(y.max()) + 1, cheap_permutations, seed)
    if task.kind == "text":
        return controls.text_fold(prob.questions or [], y, fold.train, fold.test, seed)
    if task.kind == "confound":
        return controls.confound_fold(prob.confound_x, y, fold.train, fold.test, seed)
    X = _view_matrix(source, task.view, positions, layers, prob)
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
        permute_probes=permute_probes if task.view.kind == "main" else ("logreg",),
        control_y=prob.control_y if task.control_task else None,
        confound=prob.confound_x if task.incremental else None,
    )


# The last view matrix built in this process: a view's folds are consecutive tasks in the plan,
# so a worker builds each view's features once or twice instead of once per fold.
_last_view: list[Any] = []  # [(source key, view, problem name), the source, the matrix]


def _view_matrix(
    source: np.ndarray, view: View, positions: list[str], layers: list[int], prob: Problem
) -> np.ndarray:
    # A worker unpickles a new memmap per task: its file (in a fresh scratch folder per run)
    # names it; an in-process array is held here, so its id is not reused while cached.
    name = getattr(source, "filename", None)
    key = (name or id(source), source.shape, view, prob.name, prob.n)
    if _last_view and _last_view[0] == key and (name or _last_view[1] is source):
        return _last_view[2]
    _last_view.clear()  # drop the previous view first: only one held at a time
    X = view_matrix(source, view, positions, layers, prob.rows)
    X.flags.writeable = False  # shared by tasks: nobody may change it
    _last_view.extend([key, source, X])
    return X
