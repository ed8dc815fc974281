"""Benchmark: how well the question text alone reads the category (and each step's operation) of
`opcircuits data synth --kind rules` problems (not a test; the figures go into
`benchmarks/results/<name>.json`, default `synth-rules-control`, which docs/guide/data.md renders).

The category is read by the analysis's own question-text control (`controls.question_text_scores`:
TF-IDF word 1–2-grams + logistic regression, C by an inner 3-fold grid search, stratified outer
folds). The same pipeline, with a token pattern that also keeps one-character words (the default
drops them, and with them the numbers 1–9), is reported as a stricter variant. Each step's
operation (+ − × ÷, and additive vs multiplicative) is read by the same control among the
problems that have that step, next to its majority baseline.

    nice -n 10 python benchmarks/synth_rules_control.py --n 1500 --seed 1 --split test
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from benchmarks.results import write_result  # noqa: E402
from opcircuits.analysis import controls  # noqa: E402
from opcircuits.analysis.scoring import make_folds, score  # noqa: E402
from opcircuits.data.annotations import CATEGORIES  # noqa: E402
from opcircuits.data.synth import SynthOptions, synth  # noqa: E402

ALL_TOKENS = r"(?u)\b\w+\b"


def strict_scores(questions: list[str], y: np.ndarray, folds: int, seed: int) -> float:
    """The control with one-character words kept (so every number is a feature)."""
    fold_list = make_folds(y, folds, 1, seed)
    preds = []
    for f in fold_list:
        pipe = controls.text_pipeline(seed).set_params(estimator__tfidf__token_pattern=ALL_TOKENS)
        with threadpool_limits(1):
            pipe.fit([questions[i] for i in f.train], y[f.train])
            preds.append(pipe.predict([questions[i] for i in f.test]))
    return score(y, fold_list, preds, int(y.max()) + 1).interval.mean


def step_figures(records: list[dict], folds: int, seed: int) -> dict[str, float]:
    """Per step j: the control's accuracy on the step's operation (4-way and family) and the
    majority baseline, among the problems with at least j steps."""
    out: dict[str, float] = {}
    for j in range(1, max(r["n_steps"] for r in records) + 1):
        rows = [r for r in records if r["n_steps"] >= j]
        ops = [r["step_ops"][j - 1] for r in rows]
        questions = [r["question"] for r in rows]
        for name, labels in (("op", ops), ("family", ["+-".count(o) > 0 for o in ops])):
            kinds = sorted(set(labels))
            y = np.array([kinds.index(v) for v in labels])
            if np.bincount(y).min() < folds:
                continue
            acc = controls.question_text_scores(questions, y, folds, 1, seed).interval.mean
            out[f"step{j}_{name}_accuracy"] = round(acc, 3)
            out[f"step{j}_{name}_majority"] = round(max(Counter(labels).values()) / len(y), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--split", default="test")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--name", default="synth-rules-control")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.jsonl"
        synth(SynthOptions(kind="rules", out=path, n=args.n, seed=args.seed, split=args.split))
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    questions = [r["question"] for r in records]
    y = np.array([CATEGORIES.index(r["category"]) for r in records])
    cat = controls.question_text_scores(questions, y, args.folds, args.repeats, args.seed)
    figures = {
        "problems": len(records),
        "chance": round(1 / len(CATEGORIES), 3),
        "category_accuracy": round(cat.interval.mean, 3),
        "category_ci_low": round(cat.interval.low, 3),
        "category_ci_high": round(cat.interval.high, 3),
        "category_accuracy_all_tokens": round(
            strict_scores(questions, y, args.folds, args.seed), 3
        ),
        **step_figures(records, args.folds, args.seed),
    }
    notes = (
        f"data synth --kind rules --n {args.n} --seed {args.seed} --split {args.split}; "
        f"{args.folds}-fold x {args.repeats}; all_tokens: the control keeping one-character words"
    )
    print(write_result(args.name, "synth_rules_control", figures, notes=notes, out=args.out))
    for key, value in figures.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
