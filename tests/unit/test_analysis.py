"""Analysis on stores with known structure: planted signal, pure noise, text-only signal, legacy.

Stores are small (120 problems, D = 48) and written with the public `write_store`; folds,
repeats and permutations are reduced through `AnalyzeOptions`, never the methods themselves.
"""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from synthetic_store import CATS, FAST, LAYERS, POSITIONS, D, N, make_store  # noqa: F401

from opcircuits.errors import OpcircuitsError
from opcircuits.options import AnalyzeOptions
from opcircuits.report.analyze import analyze
from opcircuits.store import write_store


def _probe(report: dict, view: str, probe: str) -> dict:
    return next(p for p in report["probes"] if p["view"] == view and p["probe"] == probe)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    base = tmp_path_factory.mktemp("planted")
    store = make_store(base / "store", "planted")
    out = base / "out"
    return store, out, analyze(store, out, AnalyzeOptions(**FAST))


def test_planted_signal_is_found_where_it_was_planted(planted: tuple[Path, Path, dict]) -> None:
    _, _, report = planted
    assert _probe(report, "first", "logreg")["accuracy"] > 0.9
    for probe in ("random_forest", "mlp"):  # on `mean` by default (--nonlinear-views)
        assert _probe(report, "mean", probe)["accuracy"] > 0.9, probe
    assert _probe(report, "concat", "logreg")["accuracy"] > 0.9
    assert report["best_cell"]["position"] == "latent_1"
    assert report["best_cell"]["layer"] == 5
    best = max(report["token_layer_map"], key=lambda c: c["accuracy"])
    assert (best["position"], best["layer"]) == ("latent_1", 5)
    others = [c for c in report["token_layer_map"] if c is not best]
    assert max(c["accuracy"] for c in others) < 0.5
    assert best["gain_over_baseline"]["ci_low"] > 0.4
    assert all(c["gain_over_baseline"]["ci_low"] <= 0 for c in others)
    first = _probe(report, "first", "logreg")
    assert first["p_value"] == pytest.approx(1 / 21, abs=1e-6)
    assert first["p_family"] == pytest.approx(1 / 21, abs=1e-6)  # the best member of the family
    assert first["gain_over_baseline"]["ci_low"] > 0.4
    assert first["gain_vs_pre_thought"]["ci_low"] > 0.4
    # Selective in Hewitt & Liang's sense: the control task stays near chance.
    assert first["control_task"]["accuracy"] < 0.5 and first["selectivity"]["ci_low"] > 0.4
    # The planted cell is claimed; no cell or position without signal is.
    claims = report["inference"]["claims"]
    # 20 permutations (p ≥ 1/21) open the gate, but under strong FWER control a decoding member
    # needs p ≤ α/2 (≥ 39 permutations): only the global decoding claim is made here.
    assert report["inference"]["gate_open"] and not [c for c in claims if "decoding:" in c]
    noise = ("latent_2", "@2", ":bot", ":last")
    assert not [c for c in claims if any(n in c for n in noise)], claims
    assert "latent_vs_bot: latent_1" in claims
    # The latent_1 step beats the pre-thought state; latent_2 (noise) does not.
    rows = {r["position"]: r["minus_pre_thought"] for r in report["pre_thought"]}
    assert rows["latent_1"]["ci_low"] > 0 and rows["latent_2"]["ci_low"] <= 0
    # Confusion matrices sum to problems × repeats.
    assert np.sum(first["confusion"]) == N * FAST["repeats"]
    assert any(n.startswith("3 of 120 answers hit the decoding limit") for n in report["notes"])


def test_report_contract_fields(planted: tuple[Path, Path, dict]) -> None:
    _, out, report = planted
    on_disk = json.loads((out / "analysis_report.json").read_text())
    assert on_disk == report
    for p in on_disk["probes"]:
        assert {"view", "probe", "accuracy", "ci_low", "ci_high", "f1_macro", "p_value"} <= set(p)
        assert p["ci_low"] <= p["accuracy"] <= p["ci_high"]
    names = {c["name"] for c in on_disk["controls"]}
    assert names == {
        "majority",
        "shuffled_labels",
        "question_text",
        "confound",
        "step_lookup",
        "pre_thought",
    }
    for c in on_disk["controls"]:
        assert {"name", "accuracy", "ci_low", "ci_high"} <= set(c)
    cells = {(c["position"], c["layer"]) for c in on_disk["token_layer_map"]}
    assert cells == {(p, layer) for p in POSITIONS for layer in LAYERS}
    assert on_disk["options"]["folds"] == 3
    assert on_disk["store"]["manifest"]["model"] == "synthetic-planted"
    for f in on_disk["figures"]:
        assert (out / f["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Logit lens: " +" and "×" are operators, "5"/"12" numbers; shares add up to one.
    for s in on_disk["logit_lens"]["shares"]:
        assert s["operator"] + s["number"] + s["other"] == pytest.approx(1.0)
    acc = {a["category"]: a for a in on_disk["model"]["answer_accuracy"]}
    assert acc["all"]["n"] == N


def test_same_seed_gives_identical_json_whatever_the_jobs(
    planted: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    store, out, _ = planted
    analyze(store, tmp_path, AnalyzeOptions(**{**FAST, "jobs": 2}))
    assert (tmp_path / "analysis_report.json").read_bytes() == (
        out / "analysis_report.json"
    ).read_bytes()


def test_nonlinear_views_all_adds_forest_and_mlp_rows_and_changes_no_other(
    planted: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    # By default the random forest and MLP run on `mean` only; `all` (the earlier default) adds
    # them on the other main views. Every fit is its own, so each row of the default report is
    # the same in the other; only the claims, over more members, may differ.
    store, _, report = planted
    full = analyze(store, tmp_path, AnalyzeOptions(**FAST, nonlinear_views="all"))
    assert {p["view"] for p in report["probes"] if p["probe"] != "logreg"} == {"mean"}
    rows = {(p["view"], p["probe"]): p for p in full["probes"]}
    views = ("mean", "first", "last", "concat")
    assert {(v, p) for v in views for p in ("logreg", "random_forest", "mlp")} <= set(rows)
    for p in report["probes"]:
        assert rows[(p["view"], p["probe"])] == p
    for probe in ("random_forest", "mlp"):
        assert rows[("first", probe)]["accuracy"] > 0.9, probe
    split = {(x["view"], x["probe"]): x for x in full["model"]["probe_by_correctness"]}
    assert len(split) == 12
    for x in report["model"]["probe_by_correctness"]:
        assert split[(x["view"], x["probe"])] == x
    for key in ("controls", "permutation_tests", "token_layer_map", "step_confound"):
        assert full[key] == report[key], key


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.scripts = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        if tag == "script":
            self.scripts += 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_self_contained_and_escapes_questions(
    planted: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    store, out, report = planted
    html = (out / "report.html").read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(html)
    parser.close()
    assert len(parser.images) == len(report["figures"]) >= 6
    for src, fig in zip(parser.images, report["figures"], strict=True):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == (out / fig["file"]).read_bytes()
    assert parser.scripts == 0
    # A question with markup is shown as text, not run.
    evil = tmp_path / "evil"
    make_store(evil, "planted")
    from opcircuits.store import open_store, remove_store

    s = open_store(evil)
    recs = s.records.copy()
    recs.loc[0, "question"] = "<script>alert('x')</script> & 5 < 6?"
    hidden = s.hidden()
    remove_store(evil)
    write_store(evil, hidden, recs, LAYERS, POSITIONS, model="evil", store_dtype="float32")
    rep = analyze(evil, tmp_path / "out", AnalyzeOptions(folds=3, repeats=1, permutations=0))
    assert any(e["question"].startswith("<script>") for e in rep["examples"])
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(" in page and "<script>" not in page
    p2 = _Collector()
    p2.feed(page)
    assert p2.scripts == 0
    assert any("<script>alert('x')</script> & 5 < 6?" in t for t in p2.text)


def test_pure_noise_stays_at_chance(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", "noise", seed=1)
    report = analyze(store, tmp_path / "out", AnalyzeOptions(**FAST))
    chance = report["data"]["chance"]
    for p in report["probes"]:
        assert abs(p["accuracy"] - chance) < 0.1, (p["view"], p["probe"], p["accuracy"])
        if p["p_value"] is not None:
            assert p["p_family"] > 0.05, (p["view"], p["p_family"])
    # Logistic regression on every position and main view, and on every cell, is tested.
    assert sum(p["p_value"] is not None for p in report["probes"]) == 7
    assert all(c["p_family"] > 0.05 for c in report["token_layer_map"])
    for c in report["token_layer_map"]:
        assert abs(c["accuracy"] - chance) < 0.15
    assert report["inference"]["claims"] == []
    summary = (tmp_path / "out" / "ANALYSIS_SUMMARY.md").read_text()
    assert "do not show that the thoughts encode" in summary
    assert "is not claimed to decode the category" in summary
    assert "No effect is claimed." in summary


def test_text_only_signal_has_no_selectivity_over_the_text_control(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", "text", seed=2)
    opts = {**FAST, "repeats": 1}
    report = analyze(store, tmp_path / "out", AnalyzeOptions(**opts))
    text = next(c for c in report["controls"] if c["name"] == "question_text")
    assert text["accuracy"] > 0.6  # the text carries the category...
    lr = _probe(report, "mean", "logreg")
    assert lr["accuracy"] > 0.6  # ...and so do thoughts computed from it...
    sel = lr["gain_vs"]["question_text"]
    # ...but they add nothing beyond it.
    assert sel["ci_low"] <= 0 or abs(sel["value"]) < 0.05
    assert report["best_control"] == "question_text"
    summary = (tmp_path / "out" / "ANALYSIS_SUMMARY.md").read_text()
    assert "not demonstrably beyond what the TF-IDF question-text control captures" in summary


def test_legacy_store_without_text_answers_or_lens_through_the_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from opcircuits.cli import app

    store = make_store(tmp_path / "store", "legacy")
    result = CliRunner().invoke(
        app,
        [
            "analyze",
            str(store),
            "--out",
            str(tmp_path / "out"),
            "--positions",
            "bot,latent_1",
            "--layers",
            "5",
            "--folds",
            "3",
            "--repeats",
            "1",
            "--permutations",
            "0",
            "--seed",
            "3",
            "--jobs",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "analysis_report.json").read_text())
    assert report["options"] == {
        "positions": ["bot", "latent_1"],  # lists whether given as "a,b" or a TOML list
        "layers": [5],
        "folds": 3,
        "repeats": 1,
        "permutations": 0,
        "seed": 3,
        "permute_all_probes": False,
        "nonlinear_views": ["mean"],
        "primary": None,
        "matched_store": None,
        "random_store": None,
        "interventions": None,
        "attribution": None,
        "tuned_lens": None,
    }
    names = {c["name"] for c in report["controls"]}
    assert names == {"majority", "shuffled_labels", "pre_thought"}
    assert not report["logit_lens"]["available"] and not report["model"]["available"]
    assert any("no question text" in n for n in report["notes"])
    assert any("no logit-lens" in n for n in report["notes"])
    assert report["data"]["layers"] == [5] and report["data"]["positions"] == ["bot", "latent_1"]
    assert all(p["p_value"] is None for p in report["probes"])
    html = (tmp_path / "out" / "report.html").read_text()
    assert "no logit-lens columns" in html


def test_bad_options_are_user_errors(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", "noise")
    with pytest.raises(OpcircuitsError, match="folds"):
        analyze(store, tmp_path / "o", AnalyzeOptions(folds=1))
    with pytest.raises(OpcircuitsError, match="fewer than --folds"):
        analyze(store, tmp_path / "o", AnalyzeOptions(folds=50))
    with pytest.raises(OpcircuitsError, match="unknown layer"):
        analyze(store, tmp_path / "o", AnalyzeOptions(layers="3"))
    with pytest.raises(OpcircuitsError, match="unknown position"):
        analyze(store, tmp_path / "o", AnalyzeOptions(positions="latent_9"))


def test_logit_lens_token_classes() -> None:
    from opcircuits.analysis.logit_lens import classify

    for tok in ["+", " +", "Ġ+", "▁*", "×", " ×", "÷", "−", " -", "/", " plus", "times"]:
        assert classify(tok)[0] == "operator", tok
    assert classify(" ×") == ("operator", "*") and classify("÷") == ("operator", "/")
    assert classify("−") == ("operator", "-")
    for tok in ["5", " 12", "3.5", "1,000", "Ġ42"]:
        assert classify(tok) == ("number", None), tok
    for tok in [" the", "x", "=", "<eot>", "", "+="]:
        assert classify(tok)[0] == "other", tok


def test_span_pca_gives_the_same_logistic_regression_as_raw_features() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from opcircuits.analysis.probes import SpanPCA

    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 400)).astype(np.float32)
    y = np.arange(60) % 3
    X[:, :4] += y[:, None]
    tr, te = np.arange(45), np.arange(45, 60)
    sc = StandardScaler().fit(X[tr])
    raw = LogisticRegression(max_iter=5000, tol=1e-10).fit(sc.transform(X[tr]), y[tr])
    span = SpanPCA().fit(sc.transform(X[tr]))
    z = LogisticRegression(max_iter=5000, tol=1e-10).fit(span.transform(sc.transform(X[tr])), y[tr])
    assert span.transform(sc.transform(X[tr])).shape == (45, 44)  # rank of the centred rows
    p_raw = raw.predict_proba(sc.transform(X[te]))
    p_span = z.predict_proba(span.transform(sc.transform(X[te])))
    assert np.abs(p_raw - p_span).max() < 1e-3
    # Identical rows (e.g. the bot token's embedding at layer 0): one zero column, no crash.
    const = np.ones((10, 50), dtype=np.float32)
    assert SpanPCA().fit_transform(const).shape == (10, 1)
    assert not SpanPCA().fit(const).transform(const).any()
