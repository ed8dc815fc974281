"""Validation of the report's claims: 20 seeded pure-noise stores and one planted-signal store.

    python benchmarks/validate_claims.py [--stores 20] [--permutations 200] [--repeats 3]
        [--jobs -1] [--out FILE]

Each store holds 600 problems (200 per category) × 7 positions × 3 layers × 64 Gaussian features,
with question text, step counts, operations and logit-lens tokens drawn independently of the
category (so nothing but the planted cell carries the category). Every store is analyzed with the
default options (5 folds × 3 repeats, 200 permutations) unless --permutations/--repeats say
otherwise: the permutation p-values stay valid with fewer permutations (only the smallest
attainable p grows, 1/(B+1)), so a cheaper run still checks the error rate. The report may claim an
effect on at most about 5% of the noise stores (its family-wise error rate) and must find the
planted cell; the rendered summary must say "No effect is claimed." exactly where nothing is.
Not part of the test run (21 full analyses); it writes `benchmarks/results/validate-claims.json`
(`results.write_result`; --out elsewhere), from which the docs quote it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from results import write_result

from opcircuits.analysis.compute import compute_report
from opcircuits.options import AnalyzeOptions
from opcircuits.report.render import render_markdown
from opcircuits.store import write_store

CATS = ["pure_addition", "pure_multiplication", "mixed"]
POSITIONS = ["bot"] + [f"latent_{k}" for k in range(1, 7)]
LAYERS = [4, 8, 14]
PLANTED = ("latent_3", 8)  # the planted cell
WORDS = "apples each more total left times cost week buys has pens boxes friend store".split()


def build(path: Path, seed: int, planted: bool, n: int = 600, dim: int = 64) -> Path:
    rng = np.random.default_rng([seed, 7])
    y = np.arange(n) % 3
    rng.shuffle(y)
    hidden = rng.standard_normal((n, len(POSITIONS), len(LAYERS), dim), dtype=np.float32)
    if planted:
        p, layer = POSITIONS.index(PLANTED[0]), LAYERS.index(PLANTED[1])
        hidden[:, p, layer, :3] += 0.8 * np.eye(3, dtype=np.float32)[y]
    records = []
    for i in range(n):
        ops = [["+"], ["*"], ["+", "*"]][int(rng.integers(3))]  # independent of the category
        records.append(
            {
                "id": f"test_{i}",
                "category": CATS[y[i]],
                "question": " ".join(rng.choice(WORDS, size=20)) + f" {i}?",
                "gold": 1.0,
                "predicted": 1.0,
                "correct": bool(rng.random() < 0.5),
                "n_steps": int(rng.integers(2, 7)),
                "ops_used": ops,
                "lens_top_tokens": [
                    [str(rng.choice([" +", " *", "5", " the"]))] for _ in POSITIONS
                ],
            }
        )
    write_store(path, hidden, records, LAYERS, POSITIONS, model="validation", store_dtype="float32")
    return path


def summarize(name: str, report: dict) -> dict:
    cells = report["token_layer_map"]
    best = max(cells, key=lambda c: c["accuracy"])
    inf = report["inference"]
    return {
        "store": name,
        "claims": inf["claims"],
        "decoding_p_family": inf["primary"]["p_family"],
        "best_cell": f"{best['position']}@{best['layer']}",
        "best_cell_accuracy": best["accuracy"],
        "best_cell_p_family": best["p_family"],
        # The uncorrected view of the same question: the best cell's CI above chance.
        "best_cell_ci_low_above_chance": best["ci_low"] > report["data"]["chance"],
        # No figures are drawn here (compute_report); the text does not depend on them.
        "summary_says_no_effect": "No effect is claimed."
        in render_markdown({**report, "figures": []}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stores", type=int, default=20)
    ap.add_argument("--permutations", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=-1)
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    start, load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        stores = [(f"noise_{s}", s, False) for s in range(args.stores)] + [("planted", 100, True)]
        for name, seed, planted in stores:
            path = build(Path(tmp) / name, seed, planted)
            opts = AnalyzeOptions(
                permutations=args.permutations, repeats=args.repeats, jobs=args.jobs
            )
            rows.append(summarize(name, compute_report(path, opts)))
            print(json.dumps(rows[-1]), flush=True)
    noise = [r for r in rows if r["store"] != "planted"]
    planted = rows[-1]
    cpu = sum(
        getattr(resource.getrusage(w), f)
        for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for f in ("ru_utime", "ru_stime")
    )
    figures = {
        "noise_stores": len(noise),
        "permutations": args.permutations,
        "repeats": args.repeats,
        "noise_stores_with_any_claim": sum(bool(r["claims"]) for r in noise),
        "family_wise_error_rate": sum(bool(r["claims"]) for r in noise) / max(len(noise), 1),
        "summary_agrees_with_claims": all(
            r["summary_says_no_effect"] == (not r["claims"]) for r in rows
        ),
        "noise_stores_best_cell_ci_above_chance_uncorrected": sum(
            r["best_cell_ci_low_above_chance"] for r in noise
        ),
        "planted_cell_claimed": f"decoding: logreg:{PLANTED[0]}@{PLANTED[1]}" in planted["claims"],
        "planted_claims": len(planted["claims"]),
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(cpu, 1),
        "load_average_before": load,
        "stores": rows,  # one row per store, as printed
    }
    path = write_result(
        "validate-claims",
        "validate_claims",
        figures,
        notes="FWER = share of pure-noise stores with any claim; 2 shared CPU cores",
        out=args.out,
    )
    print(json.dumps({k: v for k, v in figures.items() if k != "stores"}, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
