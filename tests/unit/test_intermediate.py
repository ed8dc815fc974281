"""Intermediate values: a store whose `latent_2` state carries r_2 linearly (layer 2 only) and
whose `latent_1` lens shows r_1's token must be reported so, and nowhere else; the same store with
the step results shuffled across problems must report nothing; a store without `step_results`
is skipped with a note."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler
from synthetic_store import FAST, FILLER

from opcircuits.analysis import intermediate
from opcircuits.analysis.compute import compute_report
from opcircuits.analysis.inputs import load_input
from opcircuits.analysis.value_probes import (
    ALPHA_GRID,
    _fold_predictions,
    fit_cell,
    stratified_folds,
)
from opcircuits.errors import OpcircuitsError
from opcircuits.options import AnalyzeOptions
from opcircuits.report.analyze import analyze
from opcircuits.report.findings import findings
from opcircuits.store import open_store, write_store

POSITIONS = ["bot", "latent_1", "latent_2", "latent_3"]
LAYERS = [1, 2]
N, D, TOP_K = 150, 24, 5


def _store(path: Path, mode: str, seed: int = 0, spaced: str | None = None) -> Path:
    """mode: "planted" (r_2 in latent_2@2, r_1's token in latent_1's lens), "shuffled" (the same
    states and lens, the results of other problems), "legacy" (no step-result columns).
    spaced: the lens shows r_1 in its other spelling (after a space: id value + 100), with
    ("column") or without ("absent") the store's `step_result_space_ids`."""
    rng = np.random.default_rng(seed)
    n_steps = rng.integers(2, 4, size=N)  # 2 or 3 steps
    results = rng.integers(1, 51, size=(N, 3))  # independent r_1, r_2, r_3 in 1..50
    hidden = rng.standard_normal((N, len(POSITIONS), len(LAYERS), D)).astype(np.float32)
    r2 = (results[:, 1] - results[:, 1].mean()) / results[:, 1].std()
    hidden[:, 2, 1, :3] += 1.5 * r2[:, None]  # r_2, linearly, in three directions
    # The lens: token ids 1..60 at random (numbers' ids are their values here), and r_1's id in
    # latent_1's top-k for every problem.
    lens = rng.integers(1, 61, size=(N, len(POSITIONS), TOP_K))
    lens[:, 1, 2] = results[:, 0] + (100 if spaced else 0)
    # The lens at both stored layers: r_1's id only at layer 1 (the final-layer lens above is
    # what the Table 3 rates read; this one is each layer's).
    per_layer = rng.integers(1, 61, size=(N, len(POSITIONS), len(LAYERS), TOP_K))
    per_layer[:, 1, 0, 0] = results[:, 0]
    shown = results.copy()
    if mode == "shuffled":  # among problems with the same number of steps, so lengths still fit
        for s in (2, 3):
            rows = np.flatnonzero(n_steps == s)
            shown[rows] = shown[rng.permutation(rows)]
    recs = []
    for i in range(N):
        rec = {
            "id": f"test_{i}",
            "category": ["pure_addition", "pure_multiplication", "mixed"][i % 3],
            "question": " ".join(rng.choice(FILLER, size=8)) + "?",
            "n_steps": int(n_steps[i]),
            "lens_top_ids": lens[i].tolist(),
            "lens_layer_top_ids": per_layer[i].tolist(),
        }
        if mode != "legacy":
            rec["step_results"] = [float(v) for v in shown[i, : n_steps[i]]]
            rec["step_result_ids"] = [int(v) for v in shown[i, : n_steps[i]]]
            if spaced == "column":
                rec["step_result_space_ids"] = [int(v) + 100 for v in shown[i, : n_steps[i]]]
        recs.append(rec)
    write_store(path, hidden, recs, LAYERS, POSITIONS, model="synthetic", store_dtype="float32")
    return path


def _section(path: Path) -> tuple[dict, list[str]]:
    inp = load_input(open_store(path), AnalyzeOptions(folds=5, seed=0))
    return intermediate.section(inp, folds=5, permutations=60, seed=0), inp.notes


def test_planted_values_are_found_where_they_are(tmp_path: Path) -> None:
    sec, _ = _section(_store(tmp_path / "s", "planted"))
    holds = {h["step"]: h for h in sec["holds"] if h["n_steps"] is None}
    # the value probe: r_2 at latent_2, layer 2, and nowhere else; r_1 and r_3 nowhere
    assert holds[2]["positions"] == ["latent_2"]
    assert holds[2]["best"]["layer"] == 2 and holds[2]["best"]["r2"] > 0.5
    assert holds[1]["positions"] == [] and holds[3]["positions"] == []
    # the same on each step count's problems alone: r_2 (2-step: the answer) at latent_2
    for n in (2, 3):
        own = {h["step"]: h["positions"] for h in sec["holds"] if h["n_steps"] == n}
        assert own == {j: (["latent_2"] if j == 2 else []) for j in range(1, n + 1)}, n
    cells = {
        (c["position"], c["layer"], c["step"]): c
        for c in sec["probes"]["cells"]
        if c["n_steps"] is None
    }
    assert cells[("latent_2", 1, 2)]["r2"] < 0.2  # the other layer carries nothing
    assert cells[("latent_2", 2, 2)]["p_family"] <= 0.05 < cells[("latent_2", 1, 2)]["p_family"]
    # the lens: r_1's token at latent_1 for every problem, beyond chance only there
    lens = sec["lens"]
    assert lens["top_k"] == TOP_K and lens["layer"] == "final"
    lens_at = [h["lens_positions"] for h in sec["holds"] if h["n_steps"] is None]
    assert lens_at == [["latent_1"], [], []]
    hit = next(c for c in lens["cells"] if (c["position"], c["step"]) == ("latent_1", 1))
    assert hit["rate"] == 1.0 and hit["null_mean"] < 0.3
    # the lens per layer: r_1 at latent_1, layer 1, and in no other (position, layer) cell
    found = [c for c in lens["layer_cells"] if c["p_family"] <= 0.05]
    assert [(c["position"], c["layer"], c["step"], c["rate"]) for c in found] == [
        ("latent_1", 1, 1, 1.0)
    ]
    # Table 3 by number of steps: step 1 always found at a latent thought, the others by chance
    for row in lens["by_steps"]:
        assert row["by_step"][0] == 1.0 and row["p_value"] <= 0.05
        assert all(r < 0.6 for r in row["by_step"][1:])
        assert row["step_rate"] == pytest.approx(np.mean(row["by_step"]))
    assert {r["n_steps"] for r in lens["by_steps"]} == {2, 3}


@pytest.mark.parametrize("spaced", ["column", "absent"])
def test_the_spelling_after_a_space_is_a_hit_where_the_store_has_it(tmp_path, spaced) -> None:
    # demo-rules' lens decodes its step results as " 8" (GPT-2-style BPE), not "8"
    sec, _ = _section(_store(tmp_path / "s", "planted", spaced=spaced))
    hit = next(c for c in sec["lens"]["cells"] if (c["position"], c["step"]) == ("latent_1", 1))
    assert (hit["rate"] == 1.0) == (spaced == "column")
    assert spaced == "column" or hit["rate"] < 0.1


def test_shuffled_results_are_found_nowhere(tmp_path: Path) -> None:
    sec, _ = _section(_store(tmp_path / "s", "shuffled"))
    assert all(h["positions"] == [] for h in sec["holds"])
    assert all(h["lens_positions"] == [] for h in sec["holds"] if h["n_steps"] is None)
    assert max(c["r2"] for c in sec["probes"]["cells"]) < 0.2
    assert all(r["p_value"] > 0.05 for r in sec["lens"]["by_steps"])
    assert all(c["p_family"] > 0.05 for c in sec["lens"]["layer_cells"])


def test_a_store_without_step_results_is_skipped_with_a_note(tmp_path: Path) -> None:
    sec, notes = _section(_store(tmp_path / "s", "legacy"))
    assert sec == {"available": False}
    assert any("no step_results column" in n for n in notes)


def test_ridge_cell_recovers_a_linear_value_and_its_null_does_not() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 10))
    y = 3.0 * x[:, 0] + 0.3 * rng.standard_normal(120)
    perm = np.column_stack([y, *(y[rng.permutation(120)] for _ in range(20))])
    fit = fit_cell(x, perm, stratified_folds(np.zeros(120, dtype=np.int64), 4, 0))
    assert fit is not None and fit.r2 > 0.95 and fit.null.max() < 0.2


@pytest.mark.parametrize(("n", "d"), [(80, 200), (120, 10)])  # wide (LLaMA-like) and narrow
def test_ridge_with_loo_penalty_is_scikit_learns_ridgecv(n: int, d: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, d))
    y = 2.0 * x[:, 0] + rng.standard_normal(n)
    tr, te = np.arange(n) < 0.8 * n, np.arange(n) >= 0.8 * n
    ours = _fold_predictions(x[tr], y[tr, None], x[te])[:, 0]
    scaler = StandardScaler().fit(x[tr])
    ref = RidgeCV(alphas=[a * tr.sum() for a in ALPHA_GRID]).fit(scaler.transform(x[tr]), y[tr])
    np.testing.assert_allclose(ours, ref.predict(scaler.transform(x[te])), atol=1e-9)


def test_the_report_shows_the_section_its_figure_and_sentences(tmp_path: Path) -> None:
    out = tmp_path / "analysis"
    report = analyze(_store(tmp_path / "s", "planted"), out, AnalyzeOptions(**FAST))
    sec = report["intermediate_values"]
    assert sec["available"] and sec["paper_table3"] == {"1": 97.1, "2": 83.9, "3": 75.0}
    assert any(f["file"] == "intermediate_values.png" for f in report["figures"])
    assert (out / "intermediate_values.png").stat().st_size > 0
    section = next(s for s in findings(report) if s["title"] == "Intermediate values")
    text = " ".join(section["sentences"])
    assert "r_2" in text and "`latent_2`" in text and "97.1" in text
    assert "Intermediate values" in (out / "ANALYSIS_SUMMARY.md").read_text(encoding="utf-8")
    # the JSON of the same store and options is the same
    again = compute_report(tmp_path / "s", AnalyzeOptions(**FAST))
    assert again["intermediate_values"] == sec


def test_step_result_ids_that_do_not_match_the_results_are_named(tmp_path: Path) -> None:
    path = _store(tmp_path / "s", "planted")
    store = open_store(path)
    recs = store.records.to_dict("records")
    recs[3]["step_result_ids"] = [7]  # one id for two or three results: not our extraction's
    hidden = store.hidden()
    write_store(tmp_path / "t", hidden, recs, LAYERS, POSITIONS, model="x", store_dtype="float32")
    with pytest.raises(OpcircuitsError, match="test_3") as err:
        _section(tmp_path / "t")
    assert err.value.field == "step_result_ids"
