"""Measurement (not a test): does `erase` remove the decodable category on a real organism? A
logistic-regression probe of the category (5-fold stratified cross-validation) on each site's
clean states, on the states `erase` leaves (LEACE, cross-fitted as the sweep runs it) and on
those `erase_random` leaves (a random subspace of the same rank). The numbers are in
docs/guide/causal-tests.md:

    opcircuits data synth --out data/synth_test_300.jsonl --n 300 --seed 7 --split test
    nice -n 10 python benchmarks/erasure_probe.py --data data/synth_test_300.jsonl
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

from opcircuits.codi import interventions as iv
from opcircuits.codi.checkpoint import load_codi
from opcircuits.data.io import read_problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="demo-arith")
    ap.add_argument("--sites", default="bot@2,latent_1@0,latent_1@2")
    ap.add_argument("--seed", type=int, default=0, help="erasure's folds and random subspaces")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, tok = load_codi(args.model, device="cpu")
    problems = [iv.Problem.from_record(r) for r in read_problems(args.data)]
    engine = iv.Engine(model, tok, max_new_tokens=16)
    batches = iv.plan_batches([engine.prompt_length(p.question) for p in problems], 64)
    sites = [s for (s,) in iv.parse_sites(args.sites, engine.K, model.num_layers)]
    ref = iv.clean_reference(engine, problems, batches, sorted({s.layer for s in sites}))
    ref.erase_seed = args.seed
    ivs = [iv.Intervention(k, (s,)) for s in sites for k in ("erase", "erase_random")]
    states = {}
    for batch in iv.run_interventions(engine, problems, batches, ivs, ref, record=True):
        states.update({(o.intervention.label, o.problem): o.states for o in batch})
    y = np.array([p.category for p in problems])
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    print(f"{len(problems)} problems, majority rate {max(np.mean(y == c) for c in set(y)):.2f}")
    print("site          clean  erase  erase_random")
    for s in sites:
        li = ref.layer_index(s.layer)
        acc = []
        for label in ("none", f"erase {s.name}", f"erase_random {s.name}"):
            X = np.stack([states[label, i][s.step, li].numpy() for i in range(len(problems))])
            probe = LogisticRegression(max_iter=5000)
            acc.append(float(cross_val_score(probe, X, y, cv=cv).mean()))
        print(f"{s.name:<12}  {acc[0]:.2f}   {acc[1]:.2f}   {acc[2]:.2f}")


if __name__ == "__main__":
    main()
