"""Benchmark: default `analyze` on a random 600-problem store (7 positions × 3 layers × 2048).

    python benchmarks/analyze.py [--problems 600] [--dim 2048] [--jobs -1] [--permutations N]
        [--keep DIR]
    python benchmarks/analyze.py --refit-cost [--refits 5]
    python benchmarks/analyze.py --breakdown [--permutations N]   (CPU-seconds per part)
    (each measuring run also takes --note TEXT and --result NAME)

Builds the store with `write_store` (float16, as extraction writes it; a weak category signal is
planted so the probes have something to fit), then times `analyze` with default options: every
probe, control and control task, the permutation family (logistic regression refitted on every
view and cell for each permutation), the step-confound problems, the binary probes, the
descriptive tests, figures and report. Prints the wall time, the CPU-seconds of the process and
its workers, and the load average, and writes them to `benchmarks/results/` (`write_result`:
`analyze-default-600` at the defaults, `analyze-<N>-permutations` with --permutations N).

`--refit-cost` analyzes nothing: it plans the default analysis of the same store, counts the
permutation-family refits (logistic regression on each permuted labelling, per view and fold) and
times them per view kind, single-threaded as the workers run them: every permutation of one task
through the batched solver the analysis uses, and `--refits` of them through scikit-learn one by
one (what the family cost before), so its cost can be stated on a machine too busy to run the
whole analysis.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from joblib.externals.loky import get_reusable_executor
from results import write_result

from opcircuits.options import AnalyzeOptions
from opcircuits.report.analyze import analyze
from opcircuits.store import write_store

# --breakdown: report part → the functions whose CPU time it is ("module:attribute", each wrapped
# with a CPU timer while the analysis runs; a call inside another of the same part counts once, a
# name the analyzed code lacks is skipped, so the script also measures earlier code). Parts do
# not overlap except "logistic regression (scikit-learn)", which counts every scikit-learn
# logistic regression fit (the probe, its controls, the confound and text controls' inner
# fits), "scaler" (the prefix's, the forest's and the confound control's), and "eigh" (every
# eigendecomposition: the span's and the descriptive analyses').
BREAKDOWN = {
    "random_forest": ["sklearn.ensemble._forest:ForestClassifier.fit"],
    "mlp": ["sklearn.neural_network._multilayer_perceptron:MLPClassifier.fit"],
    "permutation_refits": ["opcircuits.analysis.probes:_permutation_correct"],
    "logistic_regression_sklearn": ["sklearn.linear_model._logistic:LogisticRegression.fit"],
    "scaler": [
        "sklearn.preprocessing._data:StandardScaler.partial_fit",
        "sklearn.preprocessing._data:StandardScaler.transform",
    ],
    # the span's Gram products, eigendecompositions and projections (SpanPCA, FoldPrefixes)
    "span_pca": [
        "opcircuits.analysis.probes:SpanPCA._fit",
        "opcircuits.analysis.probes:SpanPCA.transform",
        "opcircuits.analysis.probes:FoldPrefixes._products",
        "opcircuits.analysis.probes:span_of_gram",
    ],
    "eigh": ["numpy.linalg:eigh"],
    "view_features": [
        "opcircuits.analysis.tasks:view_matrix",
        "opcircuits.analysis.probes:view_matrix",
    ],
    "text_control": ["opcircuits.analysis.controls:text_fold"],
    "clustering": ["opcircuits.analysis.clustering:cluster_view"],
    "similarity": ["opcircuits.analysis.similarity:within_between"],
    "fits_total": ["opcircuits.analysis.tasks:run"],
    "scoring": ["opcircuits.analysis.sections:score", "opcircuits.analysis.secondary:score"],
    "figures": ["opcircuits.report.figures:draw_all"],
    "analyze_total": ["opcircuits.report.analyze:analyze"],
}

CATS = ["pure_addition", "pure_multiplication", "mixed"]


def build(path: Path, n: int, dim: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    positions = ["bot"] + [f"latent_{k}" for k in range(1, 7)]
    layers = [4, 8, 14]
    y = np.arange(n) % 3
    hidden = rng.standard_normal((n, len(positions), len(layers), dim), dtype=np.float32)
    hidden[:, 3, 1, :30] += 0.5 * np.repeat(np.eye(3, dtype=np.float32), 10, axis=1)[y]
    words = ["apples", "each", "more", "total", "left", "times", "cost", "week", "buys", "has"]
    records = []
    for i in range(n):
        q = " ".join(rng.choice(words, size=25)) + f" {i}?"
        top = [[str(rng.choice([" +", " *", "5", " the"]))] for _ in positions]
        records.append(
            {
                "id": f"test_{i}",
                "category": CATS[y[i]],
                "question": q,
                "gold": 1.0,
                "predicted": 1.0,
                "correct": bool(rng.random() < 0.5),
                "n_steps": int(rng.integers(2, 8)),
                "ops_used": ["+", "*"][: 1 + y[i] % 2],
                "lens_top_tokens": top,
            }
        )
    write_store(path, hidden, records, layers, positions, model="benchmark-random")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--problems", type=int, default=600)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--jobs", type=int, default=-1)
    ap.add_argument("--keep", type=Path, default=None, help="write store and outputs here")
    ap.add_argument("--refit-cost", action="store_true", help="time permutation refits only")
    ap.add_argument("--refits", type=int, default=5, help="refits timed per view kind")
    ap.add_argument("--permutations", type=int, default=None, help="default: AnalyzeOptions'")
    ap.add_argument("--breakdown", action="store_true", help="profile: where the time goes")
    ap.add_argument("--note", default="", help="added to the result file's notes")
    ap.add_argument("--result", default=None, help="result file name (default: by the options)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        store = base / "store"
        if not (store / "manifest.json").exists():
            build(store, args.problems, args.dim)
        if args.refit_cost:
            refit_cost(store, args.refits)
            return
        if args.breakdown:
            breakdown(store, base / "out", args)
            return
        load_before = os.getloadavg()[0]
        cpu0 = _cpu_seconds()
        start = time.perf_counter()
        options = AnalyzeOptions(jobs=args.jobs)
        if args.permutations is not None:
            options = AnalyzeOptions(jobs=args.jobs, permutations=args.permutations)
        analyze(store, base / "out", options)
        wall = time.perf_counter() - start
        # Stop the worker processes so their CPU time is counted (RUSAGE_CHILDREN).
        get_reusable_executor().shutdown(wait=True)
        cpu = _cpu_seconds() - cpu0
        load_after = os.getloadavg()[0]
    # Other processes on a shared machine slow this down: the load average says how much.
    print(
        f"analyze: {args.problems} problems × 7 positions × 3 layers × {args.dim}, "
        f"{options.permutations} permutations, jobs={args.jobs} ({os.cpu_count()} CPUs): "
        f"{wall:.1f} s wall (1-min load average {load_before:.1f} before, {load_after:.1f} "
        f"after); {cpu:.1f} CPU-seconds in this process and its workers"
    )
    default = args.permutations is None and args.problems == 600 and args.dim == 2048
    name = "analyze-default-600" if default else f"analyze-{options.permutations}-permutations"
    name = args.result or name
    figures = {
        "problems": args.problems,
        "dim": args.dim,
        "permutations": options.permutations,
        "jobs": args.jobs,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(load_after, 2),
        **permutation_device(),
    }
    notes = "2 CPU cores shared with other processes: the load average says how busy"
    notes += "; the permutation family ran on the CPU (there is no GPU solver yet)"
    notes += f"; {args.note}" if args.note else ""
    print(f"written to {write_result(name, 'analyze', figures, notes=notes)}")


def permutation_device() -> dict:
    """Where the permutation family ran, and whether a GPU was there to run it on: the batched
    solver (`analysis/solver.py`) is numpy, so always the CPU for now (issue 24 asks for a GPU
    one)."""
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        gpu = None
    return {"permutation_family_device": "cpu", "gpu_present": gpu or "none"}


def refit_cost(store: Path, refits: int) -> None:
    """Count the default plan's permutation refits and time `refits` of them per view kind."""
    from sklearn.pipeline import Pipeline
    from threadpoolctl import threadpool_limits

    from opcircuits.analysis import tasks
    from opcircuits.analysis.features import view_matrix
    from opcircuits.analysis.inputs import load_input
    from opcircuits.analysis.probes import LOGREG_C, logreg, probe_pipeline
    from opcircuits.analysis.solver import fit_multinomial_batch
    from opcircuits.store import open_store

    options = AnalyzeOptions()
    inp = load_input(open_store(store), options)
    plan = tasks.plan(inp, options)
    cat = plan.problems[tasks.CATEGORY]
    # (view fit, fold) of every permuted view fit of the plan's per-fold tasks
    permuted = [(f, t.fold) for t in plan.tasks for f in t.fits if f.permute]
    total = 0.0
    by_kind: dict[str, list] = {}
    for f, fold in permuted:
        by_kind.setdefault(f.view.kind, []).append((f, fold))
    batch_total = 0.0
    for kind, group in sorted(by_kind.items()):
        f, fold = group[0]
        X = view_matrix(inp.hidden, f.view, inp.positions, inp.layers, cat.rows)
        train = fold.train
        with threadpool_limits(1):
            z = Pipeline(probe_pipeline("logreg", 0).steps[:-1]).fit_transform(X[train])
            start = time.process_time()
            for yp in plan.permuted_y[:refits]:
                logreg(0).fit(z, yp[train])
            each = (time.process_time() - start) / refits
            start = time.process_time()
            fit_multinomial_batch(z, plan.permuted_y[:, train], C=LOGREG_C, max_iter=300)
            batch = (time.process_time() - start) / len(plan.permuted_y)
        n = len(group) * options.permutations
        total += n * each
        batch_total += n * batch
        print(
            f"{kind}: {len(group)} view × fold tasks × {options.permutations} permutations = "
            f"{n} refits on {z.shape[0]} × {z.shape[1]} span coordinates, {each:.4f} CPU-s each "
            f"one by one (scikit-learn), {batch:.4f} batched"
        )
    print(
        f"permutation family: {len(permuted) * options.permutations} refits, about {total:.0f} "
        f"CPU-seconds one by one, {batch_total:.0f} batched "
        f"(1-min load average {os.getloadavg()[0]:.1f})"
    )


def breakdown(store: Path, out: Path, args: argparse.Namespace) -> None:
    """Analyze in this process with each part's functions timed; write their CPU-seconds."""
    import opcircuits.report.analyze as entry

    options = AnalyzeOptions(jobs=1)
    if args.permutations is not None:
        options = AnalyzeOptions(jobs=1, permutations=args.permutations)
    load_before = os.getloadavg()[0]
    parts = {name: 0.0 for name in BREAKDOWN}
    cpu0 = _cpu_seconds()
    with _timed(parts):
        entry.analyze(store, out, options)
    cpu = _cpu_seconds() - cpu0
    figures = {
        "problems": args.problems,
        "dim": args.dim,
        "permutations": options.permutations,
        "jobs": 1,
        "cpu_s": round(cpu, 1),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        **{f"{name}_s": round(value, 1) for name, value in parts.items()},
        **permutation_device(),
    }
    for name, value in parts.items():
        print(f"{name:>28}: {value:7.1f} s")
    notes = (
        "CPU-seconds (time.process_time) of each part's functions in one process (--jobs 1); "
        "2 CPU cores shared with other processes: the load average says how busy"
    )
    notes += f"; {args.note}" if args.note else ""
    name = "analyze-breakdown" + ("" if args.permutations is None else f"-{options.permutations}")
    name = args.result or name
    print(f"written to {write_result(name, 'analyze', figures, notes=notes)}")


@contextlib.contextmanager
def _timed(parts: dict[str, float]) -> Iterator[None]:
    """Wrap every BREAKDOWN function with a CPU timer adding to its part (restored after)."""
    import functools
    import importlib

    depth = dict.fromkeys(parts, 0)
    undo = []

    def timer(part: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*a: object, **k: object) -> object:
            depth[part] += 1
            start = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                depth[part] -= 1
                if not depth[part]:
                    parts[part] += time.process_time() - start

        return timed

    for part, targets in BREAKDOWN.items():
        for target in targets:
            module, _, path = target.partition(":")
            owner: object = importlib.import_module(module)
            *outer, attr = path.split(".")
            try:
                for name in outer:
                    owner = getattr(owner, name)
                fn = getattr(owner, attr)
            except AttributeError:  # not in the analyzed code (an earlier version)
                continue
            had = attr in vars(owner)
            undo.append((owner, attr, fn, had))
            setattr(owner, attr, timer(part, fn))
    try:
        yield
    finally:
        for owner, attr, fn, had in reversed(undo):
            if had:
                setattr(owner, attr, fn)
            else:
                delattr(owner, attr)


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
