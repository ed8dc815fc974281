"""The corrected inference and the confound helpers, on inputs whose answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from opcircuits.analysis import confound
from opcircuits.analysis.control_task import control_labels, first_word
from opcircuits.analysis.inference import (
    corrected_t_p,
    decide,
    holm,
    max_statistic,
    stratified_permutations,
    tost_p,
)
from opcircuits.analysis.logit_lens import analyze
from opcircuits.analysis.scoring import make_folds


def test_max_statistic_compares_each_member_with_the_family_maximum() -> None:
    null = {"a": np.array([0.30, 0.50, 0.40, 0.35]), "b": np.array([0.60, 0.31, 0.32, 0.33])}
    # Per permutation the family maximum is 0.6, 0.5, 0.4, 0.35.
    single = max_statistic({"a": 0.45, "b": 0.70}, null, step_down=False)
    assert single["a"] == pytest.approx(3 / 5)  # 0.6 and 0.5 reach 0.45
    assert single["b"] == pytest.approx(1 / 5)
    # Step-down: b (rejected first) leaves the maximum; a is compared with its own null only.
    p = max_statistic({"a": 0.45, "b": 0.70}, null)
    assert p["a"] == pytest.approx(2 / 5) and p["b"] == pytest.approx(1 / 5)
    # A member alone: its own permutation p-value.
    assert max_statistic({"a": 0.45}, {"a": null["a"]})["a"] == pytest.approx(2 / 5)


def test_holm_adjusts_step_down_and_keeps_order() -> None:
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None], nan_ok=True)
    assert holm([]) == []


def test_corrected_t_p_matches_the_interval() -> None:
    diffs = np.array([0.1, 0.12, 0.08, 0.11, 0.09])
    assert corrected_t_p(diffs, 0.25) < 0.01
    assert corrected_t_p(-diffs, 0.25) > 0.99
    assert corrected_t_p(np.array([0.1]), 0.25) is None


def test_corrected_t_p_is_never_zero_when_every_fold_agrees() -> None:
    same = np.full(10, 0.05)
    p = corrected_t_p(same, 0.2, resolution=1 / 20)
    assert 0 < p < 0.05
    assert 0 < corrected_t_p(same, 0.2) < 1
    assert corrected_t_p(np.zeros(10), 0.2) == 0.5
    assert corrected_t_p(-same, 0.2, resolution=1 / 20) > 0.95


def test_tost_bounds_the_effect_within_delta_only_with_enough_data() -> None:
    rng = np.random.default_rng(0)
    tight = rng.normal(0.0, 0.1, 400)
    assert tost_p(tight, 0.05) < 0.01  # mean ≈ 0, se 0.005: within ±0.05
    assert tost_p(tight[:10], 0.05) > 0.05  # too few: equivalence not shown
    assert tost_p(tight + 0.2, 0.05) > 0.99  # a real effect of 0.2 is not "no effect"
    assert tost_p(np.array([1.0]), 0.05) is None


def test_the_gate_keeps_secondary_claims_until_the_primary_test_passes() -> None:
    fam = lambda name, ps: {  # noqa: E731
        "family": name,
        "members": [{"name": f"m{i}", "p_value": p} for i, p in enumerate(ps)],
    }
    closed = decide(fam("decoding", [0.2]), [fam("s1", [0.0001]), fam("s2", [0.001])])
    assert closed["claims"] == [] and not closed["gate_open"]
    open_ = decide(fam("decoding", [0.01]), [fam("s1", [0.0001]), fam("s2", [0.03])])
    # A single primary member is the gate (a fixed sequence); then Holm over all secondary
    # members: s1 at 0.0002, s2 at 0.03 → both pass.
    assert open_["claims"] == ["decoding: m0", "s1: m0", "s2: m0"]
    assert open_["secondary"][1]["members"][0]["p_final"] == pytest.approx(0.03)
    strict = decide(
        fam("decoding", [0.01]), [fam("s1", [0.03]), fam("s2", [0.03]), fam("s3", [0.6])]
    )
    assert strict["claims"] == ["decoding: m0"]  # 3 × 0.03 > 0.05


def test_noise_p_values_rarely_pass_the_gate() -> None:
    """Under the global null every p-value is uniform: claims in at most ~α of the reports."""
    rng = np.random.default_rng(0)
    fam = lambda name, ps: {  # noqa: E731
        "family": name,
        "members": [{"name": f"m{i}", "p_value": float(p)} for i, p in enumerate(ps)],
    }
    hits = 0
    for _ in range(2000):
        primary = fam("decoding", [min(1.0, rng.uniform() * 1)])
        secondary = [fam(f"s{k}", holm(rng.uniform(size=5).tolist())) for k in range(8)]
        hits += bool(decide(primary, secondary)["claims"])
    assert hits / 2000 < 0.06


def test_stratified_permutations_keep_every_group_s_class_counts() -> None:
    y = np.arange(60) % 3
    folds = make_folds(y, 5, 1, 0)
    groups = [f.test for f in folds]
    perms = stratified_permutations(y, groups, 20, np.random.default_rng(0))
    assert perms.shape == (20, 60) and not (perms == y).all()
    for g in groups:
        for p in perms:
            assert sorted(p[g]) == sorted(y[g])


def test_step_matched_subsample_and_bins() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 100)
    steps = np.concatenate(
        [rng.integers(1, 4, 100), rng.integers(2, 6, 100), rng.integers(3, 9, 100)]
    )
    assert not confound.is_matched(y, steps)
    keep = confound.matched_subsample(y, steps, seed=0)
    assert confound.is_matched(y[keep], steps[keep]) and len(keep) > 0
    assert set(np.unique(steps[keep])) <= {2, 3}  # only the values every category has
    bins, names = confound.step_bins(steps, 20)
    assert np.bincount(bins).min() >= 20 and len(names) == bins.max() + 1
    assert names[0] == "1" and "–" in names[-1]


def test_within_strata_the_step_count_alone_scores_the_ceiling() -> None:
    y = np.array([0, 0, 1, 1, 0, 1, 1, 1])
    steps = np.array([2, 2, 2, 2, 3, 3, 3, 3])
    folds = make_folds(np.array([0, 1] * 4), 2, 1, 0)
    # Predicting each stratum's majority everywhere: exactly the step-only ceiling.
    preds = [np.where(steps[f.test] == 2, 0, 1) for f in folds]
    out = confound.within_strata(y, steps, folds, preds)
    assert out["accuracy"] == pytest.approx(out["step_only_ceiling"]) == pytest.approx(0.625)


def test_control_task_labels_follow_the_first_word_with_the_real_class_sizes() -> None:
    questions = [f"{w} has {i} apples" for i, w in enumerate(["Tom", "Ann", "The", "A"] * 30)]
    questions += [f"Q{i}: how many?" for i in range(30)]
    y = np.arange(150) % 3
    keys = [first_word(q) for q in questions]
    labels = control_labels(keys, y, seed=0)
    for k in set(keys):
        assert len(set(labels[[i for i, x in enumerate(keys) if x == k]])) == 1
    assert abs(np.bincount(labels, minlength=3) - np.bincount(y)).max() <= 30
    assert (control_labels(keys, y, seed=0) == labels).all()
    assert first_word("  “Tom’s” cat") == "tom"


def test_logit_lens_test_takes_the_problem_as_the_unit() -> None:
    """One problem read 6 times as its own operator is one problem, not six independent hits."""
    from scipy import stats

    n = 40
    tokens = [[["the"]] * 7 for _ in range(n)]
    tokens[0] = [["the"]] + [[" +"]] * 6  # problem 0 reads '+' at every latent step
    tokens[1] = tokens[2] = [["the"], [" *"]] + [["the"]] * 5  # two problems read '*' once
    ops = [["+"], ["*"], ["*"]] + [["*"] if i % 2 else ["+"] for i in range(3, n)]
    cats = ["pure_addition"] * n
    positions = ["bot"] + [f"latent_{k}" for k in range(1, 7)]
    out = analyze(tokens, cats, ["pure_addition"], ops, positions, 1000, 0)
    m = out["operator_match_latent"]
    assert (m["n_operator_reads"], m["matches"], m["n_problems"]) == (8, 8, 3)
    # Eight "independent" reads at the 50% base rate would be significant...
    assert stats.binomtest(8, 8, 0.5).pvalue < 0.01
    # ...but three problems matching their operators is not.
    assert m["p_value"] > 0.1


def test_analyze_options_refuse_a_malformed_primary(tmp_path: Path) -> None:
    from opcircuits.errors import OpcircuitsError
    from opcircuits.options import AnalyzeOptions

    with pytest.raises(OpcircuitsError, match="probe:view"):
        AnalyzeOptions(primary="mean")
