"""The summary's sentences follow the numbers: change a number, the sentence changes."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from opcircuits.analysis.analyze import AnalyzeOptions, analyze
from opcircuits.report import findings, num, render_html, render_markdown, write_reports
from opcircuits.store import write_store


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    base = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(5)
    n, cats = 60, ["pure_addition", "pure_multiplication", "mixed"]
    y = np.arange(n) % 3
    hidden = rng.standard_normal((n, 3, 1, 16)).astype(np.float32)
    recs = [
        {
            "id": f"p{i}",
            "category": cats[y[i]],
            "question": f"Tom has {i} apples.",
            "n_steps": int(rng.integers(2, 5)),
            "correct": bool(i % 2),
            "ops_used": ["+"],
            "lens_top_tokens": [[" +"], ["7"], ["the"]],
        }
        for i in range(n)
    ]
    store = write_store(
        base / "store",
        hidden,
        recs,
        [3],
        ["bot", "latent_1", "latent_2"],
        model="tiny",
        store_dtype="float32",
    ).path
    out = base / "out"
    rep = analyze(store, out, AnalyzeOptions(folds=3, repeats=1, permutations=0, jobs=1))
    return rep, out


def _text(rep: dict) -> str:
    return "\n".join(s for sec in findings(rep) for s in sec["sentences"])


def _best_main(rep: dict) -> dict:
    main = [p for p in rep["probes"] if p["view_kind"] == "main"]
    return max(main, key=lambda p: (p["accuracy"], -main.index(p)))


def test_verdict_against_text_control_follows_the_interval(report: tuple[dict, Path]) -> None:
    rep = copy.deepcopy(report[0])
    best = _best_main(rep)
    best["selectivity_vs"]["question_text"] = {"value": 0.02, "ci_low": -0.03, "ci_high": 0.07}
    assert "does not beat the question-text control (accuracy " in _text(rep)
    assert "selectivity 0.02, CI −0.03…0.07" in _text(rep)
    best["selectivity_vs"]["question_text"] = {"value": 0.2, "ci_low": 0.1, "ci_high": 0.3}
    assert "It beats the question-text control" in _text(rep)
    best["selectivity_vs"]["question_text"] = {"value": -0.2, "ci_low": -0.3, "ci_high": -0.1}
    assert "It is worse than the question-text control" in _text(rep)


def test_conclusion_depends_on_selectivity(report: tuple[dict, Path]) -> None:
    rep = copy.deepcopy(report[0])
    for p in rep["probes"]:
        p["selectivity"]["ci_low"] = -0.1
    assert "do not show that the thoughts encode" in _text(rep)
    _best_main(rep)["selectivity"]["ci_low"] = 0.05
    text = _text(rep)
    assert "1 of 12 probes on the main views beat" in text
    assert "carry operation-category information beyond" in text


def test_clustering_and_similarity_wording(report: tuple[dict, Path]) -> None:
    rep = copy.deepcopy(report[0])
    rep["clustering"][0]["silhouette"] = 0.4
    rep["clustering"][1]["silhouette"] = 0.15
    rep["clustering"][2]["silhouette"] = 0.01
    text = _text(rep)
    assert "clear clusters" in text and "weak clusters" in text and "no cluster structure" in text
    sim = next(s for s in rep["similarity"] if s["view"] == "mean")
    sim["centred"].update(p_value=0.01, difference=0.1, within=0.2, between=0.1)
    assert "same-category thoughts are more similar" in _text(rep)
    sim["centred"].update(p_value=0.4)
    assert "not detectably more similar" in _text(rep)


def test_rendering_from_json_alone(report: tuple[dict, Path], tmp_path: Path) -> None:
    rep, out = report
    md = render_markdown(rep)
    assert md.startswith("# Analysis summary")
    for p in rep["probes"]:
        assert f"| {p['view']} |" in md
    for f in rep["figures"]:
        (tmp_path / f["file"]).write_bytes((out / f["file"]).read_bytes())
    md_path, html_path = write_reports(rep, tmp_path)
    assert md_path.read_text() == md
    assert html_path.read_text() == render_html(rep, tmp_path)
    assert html_path.read_text().count("data:image/png;base64,") == len(rep["figures"])


def test_number_formatting() -> None:
    assert num(-0.031) == "−0.03"
    assert num(-0.001) == "0.00"
    assert num(None) == "n/a"
    assert num(0.12345, 3) == "0.123"
