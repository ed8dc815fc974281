"""Strong family-wise error control, measured by simulation with the procedures' own code.

Each rate is over R simulated datasets; the assertion allows the binomial Monte-Carlo error:
observed ≤ α + 3·sqrt(α(1 − α)/R)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from opcircuits.analysis.causal import effects
from opcircuits.analysis.claims import _family
from opcircuits.analysis.confound import fold_strata
from opcircuits.analysis.inference import ALPHA, decide, stratified_permutations
from opcircuits.analysis.scoring import make_folds


def bound(reps: int, alpha: float = ALPHA) -> float:
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)


def false_claims(out: dict, nulls: set[str]) -> bool:
    return any(c in nulls for c in out["claims"])


def test_ten_families_each_holding_one_real_effect_hold_the_error_rate() -> None:
    """The configuration the gatekeeping across families failed (0.39 at k = 10): the primary
    test passes, and each of 10 secondary families holds one real effect (p ≈ 0) and one true
    null (uniform p). R = 2000 datasets."""
    rng = np.random.default_rng(0)
    reps, hits = 2000, 0
    nulls = {f"s{k}: null" for k in range(10)}
    for _ in range(reps):
        primary = _family("decoding", [("probe", 1e-4)], adjust=False)
        fams = [
            _family(f"s{k}", [("real", 1e-6), ("null", float(rng.uniform()))]) for k in range(10)
        ]
        hits += false_claims(decide(primary, fams), nulls)
    assert hits / reps <= bound(reps)


def test_a_true_null_in_the_primary_family_beside_a_real_one_holds_the_error_rate() -> None:
    """Primary: one real member and one true null (its max-statistic p uniform); 5 secondary
    families of one real and one null member each. False claims anywhere, R = 2000."""
    rng = np.random.default_rng(1)
    reps, hits = 2000, 0
    nulls = {"decoding: null"} | {f"s{k}: null" for k in range(5)}
    for _ in range(reps):
        primary = _family("decoding", [("real", 1e-4), ("null", float(rng.uniform()))], False)
        fams = [
            _family(f"s{k}", [("real", 1e-6), ("null", float(rng.uniform()))]) for k in range(5)
        ]
        hits += false_claims(decide(primary, fams), nulls)
    assert hits / reps <= bound(reps)


def test_the_real_effects_are_still_claimed() -> None:
    primary = _family("decoding", [("probe", 1e-3)], adjust=False)
    fams = [_family(f"s{k}", [("real", 1e-4), ("null", 0.5)]) for k in range(10)]
    out = decide(primary, fams)
    assert out["claims"] == ["decoding: probe"] + [f"s{k}: real" for k in range(10)]


def _table(cats: list[str], broken: dict[str, np.ndarray]) -> pd.DataFrame:
    """Every clean answer correct; intervention name → which problems it breaks."""
    n = len(cats)
    rows = [
        {"id": str(i), "category": cats[i], "intervention": "none", "kind": "none",
         "correct": True, "logp_gold": 0.0, "changed": False}
        for i in range(n)
    ]  # fmt: skip
    for name, mask in broken.items():
        rows += [
            {"id": str(i), "category": cats[i], "intervention": name, "kind": "zero",
             "correct": not mask[i], "logp_gold": -3.0 * mask[i], "changed": bool(mask[i])}
            for i in range(n)
        ]  # fmt: skip
    return pd.DataFrame(rows)


def test_a_small_one_sided_drop_is_claimed_beside_a_truncation_sized_one() -> None:
    """20 of 600 answers broken, none fixed (McNemar p ≈ 2e-6), next to an intervention that
    breaks 400: the single-step max of raw means gave p_family = 0.30; studentized step-down
    claims it."""
    n = 600
    cats = ["a", "b"] * (n // 2)
    small = np.zeros(n, bool)
    small[:20] = True
    big = np.arange(n) < 400
    eff, _ = effects(_table(cats, {"small": small, "trunc": big}), n_boot=999, seed=0)
    pooled = {e["intervention"]: e for e in eff if e["category"] == "all"}
    assert pooled["trunc"]["drop_p_family"] < 0.01
    assert pooled["small"]["drop_p_family"] < ALPHA
    assert pooled["small"]["logp_drop_p_family"] < ALPHA


def test_interaction_claims_on_label_permuted_tables_hold_the_error_rate() -> None:
    """Category labels shuffled across problems: no intervention's effect depends on the
    category, so a claimed interaction is false. 3 interventions of different sizes, 3
    categories, R = 200 tables (bound: α + 3·sqrt(α(1 − α)/200) ≈ 0.096)."""
    rng = np.random.default_rng(2)
    reps, hits = 200, 0
    n = 90
    for r in range(reps):
        cats = list(rng.permutation(["x", "y", "z"] * (n // 3)))
        broken = {f"i{k}": rng.random(n) < q for k, q in enumerate((0.05, 0.2, 0.5))}
        _, inter = effects(_table(cats, broken), n_boot=199, seed=r)
        hits += any(x["drop_claimed"] for x in inter)
    assert hits / reps <= bound(reps)


def test_a_planted_interaction_is_claimed() -> None:
    n = 300
    cats = ["x", "y"] * (n // 2)
    hit_x = np.array([c == "x" for c in cats]) & (np.arange(n) % 5 < 3)  # 60% of x, none of y
    _, inter = effects(_table(cats, {"site": hit_x}), n_boot=499, seed=0)
    (x,) = inter
    assert x["drop_claimed"] and x["drop_p_family"] < 0.01


def test_the_step_stratified_permutation_keeps_every_stratum_s_label_counts() -> None:
    rng = np.random.default_rng(3)
    y = np.arange(120) % 3
    steps = rng.integers(2, 6, 120)
    folds = make_folds(y, 4, 2, 0)
    groups = fold_strata(folds, steps)
    assert sorted(np.concatenate(groups).tolist()) == list(range(120))  # one repeat covers all
    perms = stratified_permutations(y, groups, 30, rng)
    assert not (perms == y).all()
    for p in perms:
        for s in np.unique(steps):
            m = steps == s
            assert (np.bincount(p[m], minlength=3) == np.bincount(y[m], minlength=3)).all()
        for f in folds[:4]:
            assert sorted(p[f.test]) == sorted(y[f.test])
