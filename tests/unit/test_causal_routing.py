"""The routing controls' statistics and sentences on a table whose routing is known by
construction: the first thought's content and the question → answer path matter, the later
thoughts' content and the answer's attention to them do not, and the natural truncation's drop
is a position effect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from opcircuits.analysis.causal import effects, routing


def table(n: int = 150, seed: int = 0, first_matters: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for cat in ("pure_addition", "pure_multiplication"):
        for i in range(n):
            pid = f"{cat}_{i}"
            ok = bool(rng.random() < 0.8)
            logp = float(rng.normal(-2, 0.5))
            ld_clean, ld_partner = float(rng.normal(-5, 1)), float(rng.normal(5, 1))
            base = {"id": pid, "category": cat, "changed_step": 1 + i % 2}

            def row(label, kind, correct, base=base, logp=logp, ok=ok, **kw):
                rows.append({**base, "intervention": label, "kind": kind, "correct": correct,
                             "logp_gold": logp, "changed": correct != ok, **kw})  # fmt: skip

            row("none", "none", ok, ld_answer=ld_clean, ld_first=ld_clean / 2,
                ld_partner_answer=ld_partner, ld_partner_first=ld_partner / 2)  # fmt: skip
            broken = ok and rng.random() < 0.8
            row("truncate 1", "truncate", ok and not broken, thoughts=1)
            row("truncate_pos 1", "truncate_pos", ok, thoughts=1)
            row("mean latent_1@0", "mean", ok and not (broken and first_matters),
                sites="latent_1@0", position="latent_1", layer=0)  # fmt: skip
            row("mean latent_2-6@0", "mean", ok, sites="latent_2-6@0")
            row("mean latent_2-6@0-4", "mean", ok, sites="latent_2-6@0-4")
            row("knockout answer>question", "knockout", ok and not broken)
            row("knockout answer>thoughts", "knockout", ok)
            row("patch latent_3@2", "patch", ok, sites="latent_3@2", position="latent_3",
                layer=2, ld_answer=ld_clean, ld_first=ld_clean / 2,
                follows_source=False)  # fmt: skip
            row("patch_step latent_1-6@2", "patch_step", ok, sites="latent_1-6@2",
                ld_answer=(ld_clean + ld_partner) / 2, ld_first=None)  # fmt: skip
            row("path all", "path", not ok, ld_answer=ld_partner, ld_first=ld_partner / 2,
                follows_source=True)  # fmt: skip
    return pd.DataFrame(rows)


def result(t: pd.DataFrame) -> dict:
    from opcircuits.intervene.outputs import _round

    eff, inter = effects(t, n_boot=300, seed=0)
    clean = {c: {"n": 150, "accuracy": 0.8, "ci": [0.7, 0.9]} for c in ("all", *CATS)}
    thoughts = [
        {"thoughts": k, "category": "all", "positions": p, "accuracy": a, "ci": [a, a], "n": 300}
        for p, curve in (("natural", {1: 0.16, 6: 0.8}), ("preserved", {1: 0.8, 6: 0.8}))
        for k, a in curve.items()
    ]
    return {"effects": eff, "interactions": inter, "clean": clean, "categories": list(CATS),
            "num_latent": 6, "thoughts": thoughts,
            "routing": {k: _round(v) if isinstance(v, list) else v
                        for k, v in routing(t, n_boot=300, seed=0).items()}}  # fmt: skip


CATS = ("pure_addition", "pure_multiplication")


def test_normalized_recovery_is_0_for_the_problems_run_and_1_for_the_partners():
    rec = routing(table(), n_boot=300, seed=0)["recovery"]
    got = {(r["intervention"], r["by"], r["group"], r["measure"]): r for r in rec}
    for measure in ("ld_answer", "ld_first"):
        assert got["patch latent_3@2", "category", "all", measure]["recovery"] == pytest.approx(0)
        assert got["path all", "category", "all", measure]["recovery"] == pytest.approx(1)
        for step in ("1", "2"):  # step-resolved where the partners carry changed_step
            assert got["path all", "changed_step", step, measure]["recovery"] == pytest.approx(1)
    half = got["patch_step latent_1-6@2", "changed_step", "1", "ld_answer"]["recovery"]
    assert half == pytest.approx(0.5)  # halfway: the mean of the two baselines
    assert {r["intervention"] for r in rec} == {
        "patch latent_3@2",
        "path all",
        "patch_step latent_1-6@2",
    }


def test_position_effect_is_the_preserved_minus_the_natural_truncation():
    t = table()
    (row,) = routing(t, n_boot=300, seed=0)["position_effect"]
    ok = t[t.intervention == "truncate_pos 1"].set_index("id")["correct"].astype(float)
    cut = t[t.intervention == "truncate 1"].set_index("id")["correct"].astype(float)
    assert row["thoughts"] == 1 and row["difference"] == pytest.approx((ok - cut).mean())
    assert row["difference_ci"][0] > 0


def test_sentences_say_what_routes_the_answer_and_nothing_the_numbers_contradict():
    from opcircuits.report.findings.causal import sentences

    text = " ".join(sentences(result(table()))["sentences"])
    assert "the only thought whose own content is shown to matter" in text and "`latent_1`" in text
    assert "The content of latent_2 … latent_6 is dispensable" in text and "±0.02" in text
    assert "The answer reads the question directly" in text
    assert "Blocking the answer's attention to all thoughts leaves accuracy unchanged" in text
    assert "is a position effect" in text
    assert "With the answer's positions kept, 1 of the 6 thoughts answer as well as all 6" in text
    assert "step 1: 0.50 at layer 2" in text and "step 2: 0.50 at layer 2" in text
    # Without the first thought's content mattering, nothing says the thoughts are needed.
    text = " ".join(sentences(result(table(first_matters=False)))["sentences"])
    assert "content is needed" not in text and "thoughts needed" not in text
    assert "nothing here shows that the answer needs the thoughts' content" in text


def test_nothing_is_dispensable_when_the_clean_run_answers_nothing():
    from opcircuits.report.findings.causal import sentences

    t = table()
    t["correct"] = False  # a model that answers nothing (the GSM8K demo)
    r = result(t)
    r["clean"]["all"]["accuracy"] = 0.0
    text = " ".join(sentences(r)["sentences"])
    assert "none is called so here" in text
    assert "latent_6 is dispensable" not in text and "leaves accuracy unchanged" not in text
    assert "content is needed" not in text and "reads the question directly" not in text


def test_a_joint_ablation_of_one_thought_is_named_alone() -> None:
    from opcircuits.report.findings.causal_routing import _thought_range

    assert _thought_range(6, 6) == "latent_6 alone"
    assert _thought_range(2, 6) == "latent_2 … latent_6 together"
