"""The analysis with its two comparison stores: a step-matched sample and the same problems from
a re-initialized model (what `run --mode full` extracts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_store import FAST, LAYERS, POSITIONS, make_store

from opcircuits.analysis.compute import compute_report
from opcircuits.errors import OpcircuitsError
from opcircuits.options import AnalyzeOptions
from opcircuits.store import open_store, write_store


def test_trained_thoughts_are_compared_with_a_random_model_and_a_matched_sample(
    tmp_path: Path,
) -> None:
    trained = make_store(tmp_path / "trained", "planted", seed=0)
    random = make_store(tmp_path / "random", "noise", seed=0)  # same problems, no signal
    matched = make_store(tmp_path / "matched", "planted", seed=4)
    opts = AnalyzeOptions(**FAST, matched_store=matched, random_store=random)
    report = compute_report(trained, opts)
    rows = {r["view"]: r for r in report["random_model"]["probes"]}
    assert rows["first"]["trained_minus_random"]["ci_low"] > 0.4
    # `last` holds the same noise in both stores: no difference at all.
    assert rows["last"]["trained_minus_random"]["value"] == 0
    sample = report["step_matched_sample"]
    assert sample["n_problems"] == 120 and sample["store"] == str(matched)
    first = next(r for r in sample["probes"] if r["view"] == "first")
    assert first["accuracy"] > 0.9 and first["p_family"] < 0.05
    claims = report["inference"]["claims"]
    assert "trained_vs_random: logreg:first" in claims
    assert "step_matched_sample: logreg:first" in claims
    assert not [c for c in claims if c.endswith(":last")]


def test_a_random_store_of_other_problems_is_refused(tmp_path: Path) -> None:
    trained = make_store(tmp_path / "trained", "planted")
    src = open_store(make_store(tmp_path / "src", "noise"))
    other = tmp_path / "other"
    recs = src.records.iloc[:60].reset_index(drop=True)
    write_store(other, src.hidden()[:60], recs, LAYERS, POSITIONS, model="m", store_dtype="float32")
    opts = AnalyzeOptions(**{**FAST, "permutations": 0}, random_store=other)
    with pytest.raises(OpcircuitsError, match="other problems"):
        compute_report(trained, opts)
