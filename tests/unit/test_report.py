"""The summary's sentences follow the numbers: change a number, the sentence changes."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from opcircuits.analysis.inference import decide
from opcircuits.options import AnalyzeOptions
from opcircuits.report.analyze import analyze
from opcircuits.report.findings import headline_probe
from opcircuits.report.render import (
    findings,
    headline,
    num,
    render_html,
    render_markdown,
    write_reports,
)
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
    return headline_probe(rep)


def _with_claims(rep: dict, **families: list[tuple[str, float]]) -> dict:
    """The report with an `inference` section decided from the given families' p-values."""
    primary = families.pop("decoding", [])
    fam = lambda name, ms: {  # noqa: E731
        "family": name,
        "members": [{"name": n, "p_value": p} for n, p in ms],
    }
    rep["inference"] = decide(fam("decoding", primary), [fam(k, v) for k, v in families.items()])
    return rep


def test_verdict_against_text_control_follows_the_interval(report: tuple[dict, Path]) -> None:
    rep = copy.deepcopy(report[0])
    best = _best_main(rep)
    gain = {"value": 0.02, "ci_low": -0.03, "ci_high": 0.07, "p_value": 0.3}
    best["gain_vs"]["question_text"] = gain
    assert "does not outperform a TF-IDF classifier of the question (accuracy " in _text(rep)
    assert "gain 0.02, CI −0.03…0.07, p = 0.300 uncorrected" in _text(rep)
    best["gain_vs"]["question_text"] = {**gain, "value": 0.2, "ci_low": 0.1, "ci_high": 0.3}
    # An interval above zero alone is no claim (no permutation test ran here)...
    assert "Only uncorrected (no family-wise claim), it scores above a TF-IDF" in _text(rep)
    assert "It outperforms" not in _text(rep)
    # ...the family-wise claim over the strongest baseline control is.
    name = f"{best['probe']}:{best['view']}"
    _with_claims(rep, decoding=[(name, 0.01)], beyond_baseline=[(name, 0.001)])
    assert "It outperforms a TF-IDF classifier of the question" in _text(rep)


def test_conclusion_follows_the_claims_only(report: tuple[dict, Path]) -> None:
    rep = copy.deepcopy(report[0])
    best = _best_main(rep)
    name = f"{best['probe']}:{best['view']}"
    # 4 logistic regressions and the forest and MLP on `mean` (--nonlinear-views)
    main = sum(p["view_kind"] == "main" for p in rep["probes"])
    assert main == 6
    # Permutations off: nothing is claimed, whatever the intervals say.
    for p in rep["probes"]:
        p["gain_over_baseline"].update(ci_low=0.1, value=0.3)
    assert "No permutation test was run" in _text(rep)
    assert "So these data do not show that the thoughts encode" in _text(rep)
    # Decoding claimed, nothing beyond the strongest control.
    _with_claims(rep, decoding=[(name, 0.01)], beyond_baseline=[(name, 0.2)])
    text = _text(rep)
    assert "carry operation-category information, but not demonstrably beyond" in text
    assert f"0 of {main} main-view probes beat the strongest baseline control" in text
    # Both claimed.
    _with_claims(rep, decoding=[(name, 0.01)], beyond_baseline=[(name, 0.001)])
    text = _text(rep)
    assert "carry operation-category information, beyond what the" in text
    assert f"1 of {main} main-view probes beat the strongest baseline control" in text
    # Decoding claimed only at bot (the question-reading state): not the thoughts' information.
    _with_claims(rep, decoding=[(f"{best['probe']}:bot", 0.01), (f"{best['probe']}:bot@2", 0.01)])
    text = _text(rep)
    assert "decoded only at `bot` (the state that reads the question" in text
    assert "the thoughts carry operation-category information" not in text
    # A secondary effect is never claimed while the decoding test fails (the gate).
    _with_claims(rep, decoding=[(name, 0.2)], beyond_baseline=[(name, 0.001)])
    assert f"0 of {main} main-view probes beat" in _text(rep)
    assert rep["inference"]["claims"] == []


def test_clustering_and_similarity_wording(report: tuple[dict, Path]) -> None:
    rep = copy.deepcopy(report[0])
    for r, sil in zip(rep["clustering"], (0.6, 0.3, 0.1), strict=False):
        r["silhouette"] = sil
    text = _text(rep)
    assert "reasonable structure" in text and "weak structure" in text
    assert "no substantial structure" in text
    sim = next(s for s in rep["similarity"] if s["view"] == "mean")
    sim["centred"].update(p_value=0.001, difference=0.1, within=0.2, between=0.1)
    sim["raw"]["mean_direction_share"] = 0.1
    assert "same-category thoughts are not detectably more similar" in _text(rep)
    assert "dominated" not in _text(rep)
    _with_claims(rep, decoding=[("logreg:mean", 0.01)], similarity=[("mean", 0.001)])
    assert "same-category thoughts are more similar" in _text(rep)
    sim["raw"]["mean_direction_share"] = 0.8
    assert "80% of the thoughts' squared norm lies along their mean direction, so raw" in _text(rep)


def test_headline_reads_the_report(report: tuple[dict, Path]) -> None:
    rep = copy.deepcopy(report[0])
    best = _best_main(rep)
    lines = headline(rep)
    assert lines[0].startswith(f"best probe: {best['probe']} on {best['view']}: accuracy ")
    assert lines[1].startswith(f"gain over the best control ({rep['best_control']}): ")
    assert lines[-1] == "claims at family-wise alpha 0.05: 0"


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
