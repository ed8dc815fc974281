"""The task planner: every fit an analysis needs, as independent tasks run in worker processes.

A *problem* is one learning problem on the stored states: which rows, which labels, which folds
(the operation category; the same on a step-matched subsample; the step count itself; the binary
"uses ×/÷?" and "uses +/−?"). A task is one (problem, fold): every view's probe fits there with
their extras (shuffled labels, control task, permutation refits, confound + states), which share
the fold's scaled (position, layer) blocks; or one control fit on one fold, or one descriptive
analysis of a view. `plan` lists them in a fixed order (heavy ones
first), `run` executes them with joblib and gathers the results by key, in plan order, so the
numbers never depend on --jobs: each task runs single-threaded BLAS with fixed random states.

A report section that needs new fits adds a problem, or a task kind here (`Task.kind`, a branch
in `_task` and its slot in `Fits`), and reads its results from `Fits`.
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
import sklearn

from opcircuits.analysis import clustering, confound, controls, similarity
from opcircuits.analysis.control_task import control_labels, first_word
from opcircuits.analysis.features import View, view_matrix
from opcircuits.analysis.inference import stratified_permutations
from opcircuits.analysis.inputs import AnalysisInput, records_column
from opcircuits.analysis.probes import PROBES, FoldPrefixes, ProblemFeatures, fit_prepared
from opcircuits.analysis.scoring import Fold, make_folds
from opcircuits.analysis.workers import one_blas_thread, worker_config
from opcircuits.progress import stage_progress

CATEGORY = "category"
# The descriptive permutation tests need no refits: this many times more permutations.
CHEAP_FACTOR = 5
MUL_DIV, ADD_SUB = frozenset("*/"), frozenset("+-")
# Fewer problems with a step j: its operation is not probed (intervals too wide to matter).
MIN_STEP_OP_PROBLEMS = 40


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
class ViewFit:
    """The probe fits of one view on one fold, with their extras."""

    view: View
    probes: tuple[str, ...]
    shuffled: bool = False
    permute: bool = False
    control_task: bool = False
    incremental: bool = False


@dataclass(frozen=True)
class Task:
    kind: str  # "fold" | "text" | "confound" | "cluster" | "similarity"
    problem: str = CATEGORY
    fold: Fold | None = None
    view: View | None = None  # "cluster" and "similarity"
    # "fold": every view's fits on this fold, which share its scaled (position, layer) blocks
    fits: tuple[ViewFit, ...] = ()


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
                folds = make_folds(y, options.folds, options.repeats, options.seed)
                if questions is not None and not controls.text_control_fits(y, folds):
                    continue  # too few problems of a class for the text control's inner split
                out[name] = Problem(name, rows, y, ["no", "yes"], folds, main_views, questions)
    out.update(step_problems(inp, options))
    return out


def step_problems(inp: AnalysisInput, options: Any) -> dict[str, Problem]:
    """`step<j>_op`: step j's operation family (×/÷ = 1, +/− = 0) over the problems with a
    step-resolved label (`step_ops`) and at least j steps, probed at `bot` and at every latent
    position: where is each step's operation decodable?"""
    step_ops = records_column(inp.all_records, "step_ops")
    views = [
        v for v in inp.views if v.kind == "position" and v.name in step_op_positions(inp.positions)
    ]
    if step_ops is None or not views:
        return {}
    texts = records_column(inp.all_records, "question")
    out: dict[str, Problem] = {}
    longest = max((len(o) for o in step_ops if o is not None), default=0)
    for j in range(1, longest + 1):
        rows = np.array(
            [i for i, o in enumerate(step_ops) if o is not None and len(o) >= j], dtype=np.int64
        )
        y = np.array([int(str(step_ops[i][j - 1]) in MUL_DIV) for i in rows], dtype=np.int64)
        if len(rows) < MIN_STEP_OP_PROBLEMS or np.bincount(y, minlength=2).min() < options.folds:
            continue
        questions = None
        if texts is not None and all(isinstance(texts[i], str) for i in rows):
            questions = [texts[i] for i in rows]
        folds = make_folds(y, options.folds, options.repeats, options.seed)
        if questions is not None and not controls.text_control_fits(y, folds):
            continue  # too few problems of a class for the text control's inner split
        name = f"step{j}_op"
        out[name] = Problem(name, rows, y, ["add_sub", "mul_div"], folds, views, questions)
    return out


def step_op_positions(positions: list[str]) -> list[str]:
    """Where a step's operation is looked for: `bot` (it reads the question) and the thoughts."""
    return [p for p in positions if p == "bot" or p.startswith("latent")]


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
    nonlinear = options.nonlinear_views  # the forest's and MLP's main views
    nonlinear = {v.name for v in main_views} if nonlinear == "all" else set(nonlinear)
    tasks: list[Task] = []
    # `first`/`last` are the first/last latent positions' views: reuse their predictions.
    same_as = {v.positions[0]: v.name for v in main_views if v.name in ("first", "last")}
    # One task per fold with every view's fits, which share the fold's (position, layer) blocks
    # (probes.FoldPrefixes); the first repeat's folds, with the permutation refits, come first.
    for fold in folds:
        fits = [
            ViewFit(
                view,
                PROBES
                if view.name in nonlinear and view.kind == "main" and not brief
                else ("logreg",),
                shuffled=view.name == shuffle_view,
                permute=fold.repeat == 0 and permuted_y is not None,
                control_task=cat.control_y is not None and not brief,
                incremental=view.kind == "main" and cat.confound_x is not None and not brief,
            )
            for view in views
            if not (view.kind == "position" and view.name in same_as)
        ]
        tasks.append(Task("fold", CATEGORY, fold, fits=tuple(fits)))
    for prob in probs.values():
        if prob.name == CATEGORY:
            continue
        fits = tuple(ViewFit(v, ("logreg",)) for v in prob.views)
        tasks += [Task("fold", prob.name, f, fits=fits) for f in prob.folds]
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
    _last_view.clear()  # jobs=1: release the store's states held by the caches
    _last_states.clear()
    fits = Fits()
    for task, res in zip(the_plan.tasks, results, strict=True):
        if task.kind == "cluster":
            fits.clusters[task.view.name] = res
        elif task.kind == "similarity":
            fits.similarity[task.view.name] = res
        elif task.kind != "fold":
            fits.preds.setdefault((task.problem, "control", task.kind), []).append(res)
        else:
            for view, out in res.items():
                for name, p in out.predictions.items():
                    fits.preds.setdefault((task.problem, view, name), []).append(p)
                fits.not_converged += out.not_converged
                for probe, correct in out.permutation_correct.items():
                    key = (task.problem, view, probe)
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


def permutation_members(the_plan: Plan) -> set[str]:
    """`probe:view` of every member the permutation tests will cover (what `--primary` may
    name): the view tasks refitted on the permutations, and the position views that reuse
    `first` / `last`."""
    out: set[str] = set()
    for t in the_plan.tasks:
        if t.kind == "fold" and t.problem == CATEGORY:
            for f in t.fits:
                if f.permute:  # as `run` refits them: the permuted probes this view fits
                    out |= {f"{p}:{f.view.name}" for p in the_plan.permute_probes if p in f.probes}
    out |= {f"logreg:{pos}" for pos, main in the_plan.same_as.items() if f"logreg:{main}" in out}
    return out


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


def _run_one(task: Task, **kwargs: Any) -> Any:
    # scikit-learn's checks skipped (our estimators' parameters are fixed, load_input refuses
    # NaN and inf): a tenth of the forest's time and of a small logistic regression's; same fits.
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        return _task(task, **kwargs)


def _task(
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
        with one_blas_thread():
            if task.kind == "cluster":
                return clustering.cluster_view(X, y, cheap_permutations, seed)
            return similarity.within_between(X, y, int(y.max()) + 1, cheap_permutations, seed)
    if task.kind == "text":
        return controls.text_fold(prob.questions or [], y, fold.train, fold.test, seed)
    if task.kind == "confound":
        return controls.confound_fold(prob.confound_x, y, fold.train, fold.test, seed)
    features = _problem_features(source, prob, positions, layers)
    prefixes = FoldPrefixes(features, fold.train, fold.test)
    out = {}
    with one_blas_thread():  # as every fit: results do not depend on --jobs
        for f in task.fits:
            shuffled = None
            if f.shuffled:
                rng = np.random.default_rng([seed, 2, fold.index])
                shuffled = rng.permutation(y[fold.train])
            permute = tuple(p for p in permute_probes if p in f.probes)
            forest = "random_forest" in f.probes or (f.permute and "random_forest" in permute)
            out[f.view.name] = fit_prepared(
                prefixes.view(f.view, with_x=forest),
                y,
                fold.train,
                fold.test,
                probes=f.probes,
                seed=seed,
                shuffled_train_y=shuffled,
                permuted_y=permuted_y if f.permute else None,
                permute_probes=permute,
                control_y=prob.control_y if f.control_task else None,
                confound=prob.confound_x if f.incremental else None,
            )
    return out


# The last problem's rows of the states in this process, with its blocks and pooled views: its
# folds are consecutive tasks in the plan, so a worker makes them once or twice per problem.
_last_states: list[Any] = []  # [(source key, problem name), the source, its ProblemFeatures]


def _problem_features(
    source: np.ndarray, prob: Problem, positions: list[str], layers: list[int]
) -> ProblemFeatures:
    """The problem's rows of the states [n, P, L, D] (in the store's dtype) and what every fold
    makes of them."""
    name = getattr(source, "filename", None)
    key = (name or id(source), source.shape, prob.name, prob.n)
    if _last_states and _last_states[0] == key and (name or _last_states[1] is source):
        return _last_states[2]
    _last_states.clear()
    states = np.asarray(source[prob.rows])
    states.flags.writeable = False
    _last_states.extend([key, source, ProblemFeatures(states, positions, layers)])
    return _last_states[2]


# The last view matrix built in this process (descriptive tasks may follow on the same view).
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
