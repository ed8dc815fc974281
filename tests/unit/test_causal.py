"""Causal-test statistics on tables whose effects are known by construction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from opcircuits.analysis.causal import effects, excludes_zero
from opcircuits.errors import OpcircuitsError


def table(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """Two categories of n problems. `knock mul` breaks 90% of the multiplication problems the
    model got right and no addition problem; `noise` flips a random 5% either way; `patch` makes
    every third problem give its source's answer."""
    rng = np.random.default_rng(seed)
    rows = []
    for cat in ("pure_addition", "pure_multiplication"):
        for i in range(n):
            pid = f"{cat}_{i}"
            ok = bool(rng.random() < 0.8)
            logp = float(rng.normal(-2, 0.5))
            base = {"id": pid, "category": cat}
            rows.append({**base, "intervention": "none", "kind": "none", "correct": ok,
                         "logp_gold": logp, "changed": False})  # fmt: skip
            broken = cat == "pure_multiplication" and ok and rng.random() < 0.9
            rows.append({**base, "intervention": "knock mul", "kind": "zero", "layer": 2,
                         "correct": ok and not broken, "logp_gold": logp - 3.0 * broken,
                         "changed": bool(broken)})  # fmt: skip
            flip = bool(rng.random() < 0.05)
            rows.append({**base, "intervention": "noise", "kind": "zero", "layer": 3,
                         "correct": ok != flip, "logp_gold": logp, "changed": flip})  # fmt: skip
            follows = i % 3 == 0
            rows.append({**base, "intervention": "patch", "kind": "patch", "layer": None,
                         "correct": ok and not follows, "logp_gold": logp,
                         "changed": follows, "follows_source": follows})  # fmt: skip
    return pd.DataFrame(rows)


def pick(rows, intervention, category):
    (row,) = [r for r in rows if r["intervention"] == intervention and r["category"] == category]
    return row


def test_effects_are_paired_means_with_intervals_that_find_the_real_effect():
    t = table()
    eff, inter = effects(t, n_boot=1000, seed=1)
    clean = t[t.kind == "none"].set_index("id")
    for cat in ("pure_addition", "pure_multiplication"):
        sub = t[(t.intervention == "knock mul") & (t.category == cat)].set_index("id")
        expected = (clean.loc[sub.index, "correct"].astype(float) - sub["correct"]).mean()
        row = pick(eff, "knock mul", cat)
        assert row["drop"] == pytest.approx(expected)
        assert row["n"] == 60 and row["layer"] == 2 and row["kind"] == "zero"
        assert row["accuracy_clean"] == pytest.approx(clean[clean.category == cat].correct.mean())
        assert row["accuracy"] == pytest.approx(row["accuracy_clean"] - row["drop"])
        assert row["drop_ci"][0] <= row["drop"] <= row["drop_ci"][1]
    mul = pick(eff, "knock mul", "pure_multiplication")
    add = pick(eff, "knock mul", "pure_addition")
    assert mul["drop"] > 0.5 and excludes_zero(mul["drop_ci"]) and mul["logp_drop"] > 1
    assert add["drop"] == 0 and add["drop_ci"] == [0.0, 0.0]
    # The interaction: the multiplication-specific effect, with an interval excluding zero.
    (x,) = [r for r in inter if r["intervention"] == "knock mul"]
    assert (x["a"], x["b"]) == ("pure_addition", "pure_multiplication")
    assert x["drop"] == pytest.approx(add["drop"] - mul["drop"])
    assert excludes_zero(x["drop_ci"]) and x["drop_ci"][1] < 0
    # Noise that hits both categories alike: no interaction detected.
    (y,) = [r for r in inter if r["intervention"] == "noise"]
    assert not excludes_zero(y["drop_ci"])
    # Pooled over categories.
    both = pick(eff, "knock mul", "all")
    assert both["n"] == 120 and both["drop"] == pytest.approx((mul["drop"] + add["drop"]) / 2)
    # Patching: the share of answers that became the source's.
    assert pick(eff, "patch", "all")["follows_source"] == pytest.approx(40 / 120)
    assert pick(eff, "noise", "all")["follows_source"] is None


def test_effects_are_reproducible_and_seeded():
    t = table()

    def key(r):
        return r["intervention"], r.get("category", r.get("a"))

    for x, y in zip(
        effects(t, n_boot=200, seed=3),
        effects(t.sample(frac=1, random_state=0), n_boot=200, seed=3),
        strict=True,
    ):
        assert sorted(x, key=key) == sorted(y, key=key)
    a = pick(effects(t, n_boot=200, seed=3)[0], "knock mul", "pure_multiplication")["drop_ci"]
    b = pick(effects(t, n_boot=200, seed=4)[0], "knock mul", "pure_multiplication")["drop_ci"]
    assert a != b


def test_interval_covers_the_true_effect_about_as_often_as_its_level_says():
    """Tables drawn from one population where the intervention flips 20% of the odd problems'
    answers (a true mean drop of 0.2 * 0.5 * (0.6 - 0.4) = 0.02): the 95% interval holds it in
    about 95% of them (binomial: at least 52 of 60 unless the interval is too narrow)."""
    covered = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        n = 80
        ok = rng.random(n) < 0.6
        flip = (rng.random(n) < 0.2) & (np.arange(n) % 2 == 1)
        rows = [
            {
                "id": str(i),
                "category": "c",
                "intervention": "none",
                "kind": "none",
                "correct": bool(ok[i]),
                "logp_gold": 0.0,
                "changed": False,
            }
            for i in range(n)
        ]
        rows += [{"id": str(i), "category": "c", "intervention": "x", "kind": "zero",
                  "correct": bool(ok[i] != flip[i]), "logp_gold": 0.0,
                  "changed": bool(flip[i])} for i in range(n)]  # fmt: skip
        lo, hi = pick(effects(pd.DataFrame(rows), n_boot=300, seed=seed)[0], "x", "c")["drop_ci"]
        covered += lo <= 0.02 <= hi
    assert covered >= 52


def test_a_table_without_its_clean_run_is_refused():
    t = table()
    with pytest.raises(OpcircuitsError, match="no clean run"):
        effects(t[t.kind != "none"])
    with pytest.raises(OpcircuitsError, match="lacks columns"):
        effects(t.drop(columns=["logp_gold"]))


def test_family_wise_p_claims_the_planted_effect_and_holds_the_error_rate_on_noise():
    eff, _ = effects(table(), n_boot=999, seed=2)
    knock, noise = pick(eff, "knock mul", "all"), pick(eff, "noise", "all")
    assert knock["drop_p_family"] == pytest.approx(1 / 1000)  # no flip reaches the planted drop
    assert knock["logp_drop_p_family"] == pytest.approx(1 / 1000)
    assert noise["drop_p_family"] > 0.05
    assert "drop_p_family" not in pick(eff, "knock mul", "pure_addition")  # pooled rows only
    # Tables with no effect at all: a claim (p_family < 0.05) in about 5% of them at most.
    claims = 0
    for seed in range(40):
        t = table(n=30, seed=100 + seed)
        t = t[t.intervention.isin(["none", "noise"])]
        rows, _ = effects(t, n_boot=199, seed=seed)
        claims += pick(rows, "noise", "all")["drop_p_family"] < 0.05
    assert claims <= 5


def test_causal_sentences_claim_only_what_passes_and_say_when_nothing_does():
    from opcircuits.report.findings.causal import sentences

    def result(t):
        eff, inter = effects(t, n_boot=500, seed=0)
        for e in eff:
            e["position"] = "latent_2" if e["kind"] == "zero" else None
        clean = {c: {"n": 60, "accuracy": 0.8, "ci": [0.7, 0.9]} for c in ("all", *CATS)}
        return {"effects": eff, "interactions": inter, "clean": clean, "categories": list(CATS),
                "num_latent": 6, "thoughts": []}  # fmt: skip

    text = " ".join(sentences(result(table()))["sentences"])
    assert "Zero-ablating `latent_2` at layer 2 lowers accuracy by" in text
    assert "the difference," in text and "pure multiplication" in text
    assert "pass the interaction test at family-wise" in text
    nothing = table()
    nothing = nothing[nothing.intervention.isin(["none", "noise"])]
    text = " ".join(sentences(result(nothing))["sentences"])
    assert "No single-site ablation lowers accuracy at family-wise" in text
    assert "lowers accuracy by" not in text and "the difference," not in text
    assert "No operation-specific effect is claimed" in text


CATS = ("pure_addition", "pure_multiplication")
