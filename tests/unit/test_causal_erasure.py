"""Concept erasure's statistics and sentences from constructed intervention tables: "used" only
where LEACE's drop exceeds its random control family-wise, and the decodable / used / both /
neither wording from the report's probe claims."""

from __future__ import annotations

import numpy as np
import pandas as pd

from opcircuits.analysis import causal
from opcircuits.analysis.causal_check import check_result
from opcircuits.analysis.claims import member_name
from opcircuits.report.findings import causal_erasure

N = 80


def table(broken: dict[str, int], seed: int = 0) -> pd.DataFrame:
    """Every problem correct in the clean run; intervention label → how many it breaks (a
    seeded random choice of problems, their gold log-prob 3 nats lower)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(N):
        cat = "add" if i % 2 else "mul"
        base = {"id": f"p{i}", "category": cat, "changed": False, "logp_gold": -1.0}
        rows.append({**base, "intervention": "none", "kind": "none", "correct": True})
    for label, k in broken.items():
        kind, sites = label.split(" ")
        pos, layer = sites.split("@")
        wrong = set(rng.choice(N, size=k, replace=False).tolist())
        for i in range(N):
            bad = i in wrong
            rows.append(
                {"id": f"p{i}", "category": "add" if i % 2 else "mul", "intervention": label,
                 "kind": kind, "sites": sites, "position": pos, "layer": int(layer),
                 "correct": not bad, "changed": bad, "logp_gold": -4.0 if bad else -1.0}
            )  # fmt: skip
    return pd.DataFrame(rows)


SWEEP = {
    "erase latent_1@0": 40,  # LEACE breaks half the problems, its control two: used
    "erase_random latent_1@0": 2,
    "erase bot@1": 3,  # both break three: not used
    "erase_random bot@1": 3,
}


def rows(sweep=SWEEP) -> dict[str, dict]:
    got = causal.erasure(table(sweep), n_boot=500, seed=1)
    return {r["site"]: r for r in got}


def test_used_only_where_erasure_beats_its_random_control_family_wise():
    r = rows()
    assert set(r) == {"latent_1@0", "bot@1"}
    used, unused = r["latent_1@0"], r["bot@1"]
    assert used["drop_erase"] == 40 / N and used["drop_random"] == 2 / N
    assert used["beyond"] == (40 - 2) / N and used["beyond_ci"][0] > 0
    assert used["logp_beyond"] == 3.0 * (40 - 2) / N
    assert used["beyond_p_family"] < 0.05 and used["used_claimed"] is True
    assert unused["beyond"] == 0.0 and unused["beyond_p_family"] > 0.05
    assert unused["used_claimed"] is False
    assert used["n"] == unused["n"] == N


def test_a_large_drop_that_the_random_control_matches_is_not_used():
    r = rows({"erase latent_1@0": 40, "erase_random latent_1@0": 40})["latent_1@0"]
    assert r["drop_erase"] == 0.5 and r["used_claimed"] is False


def test_no_erasure_rows_no_erasure_and_no_sentences():
    assert causal.erasure(table({"erase_random bot@1": 3}), n_boot=100) == []
    assert causal_erasure.sentences({"erasure": []}) == []


def report_with(decodes: set[str]) -> dict:
    cells = ["latent_1@0", "bot@1"]
    members = [{"name": member_name("logreg", c), "claimed": c in decodes} for c in cells]
    primary = {"family": "decoding", "claimed": bool(decodes), "members": members}
    layer_map = [
        {"position": c.split("@")[0], "layer": int(c.split("@")[1]), "accuracy": 0.6} for c in cells
    ]
    return {"token_layer_map": layer_map, "inference": {"primary": primary, "secondary": []}}


def line(sentences: list[str], site: str) -> str:
    (hit,) = [s for s in sentences if s.startswith(f"`{site}`")]
    return hit


def test_the_wording_follows_the_probe_claim_and_the_erasure_claim():
    result = {"erasure": list(rows().values())}
    both = causal_erasure.sentences(result, report_with({"latent_1@0"}))
    assert "decodable and used" in line(both, "latent_1@0")
    assert "neither claimed decodable nor shown to be used" in line(both, "bot@1")
    swapped = causal_erasure.sentences(result, report_with({"bot@1"}))
    assert "used but not claimed decodable" in line(swapped, "latent_1@0")
    assert "decodable but not shown to be used" in line(swapped, "bot@1")
    alone = causal_erasure.sentences(result)  # the sweep's own summary: no probes
    assert "used (no probe of this cell in the report)" in line(alone, "latent_1@0")
    assert "not shown to be used (no probe" in line(alone, "bot@1")
    assert "difference 0.47" in line(alone, "latent_1@0")  # (40 − 2) / 80 = 0.475


def test_interventions_json_with_erasure_rows_passes_the_report_check_and_a_bad_one_fails():
    import pytest

    from opcircuits.errors import OpcircuitsError

    good = {"erasure": list(rows().values())}
    base = {"provenance": {}, "options": {}, "methods": {}, "num_latent": 1, "num_layers": 1,
            "positions": ["bot"], "categories": [], "notes": [],
            "clean": {"all": {"n": 1, "accuracy": 1.0, "ci": [0.5, 1.0]}},
            "effects": [], "interactions": [], "thoughts": []}  # fmt: skip
    check_result({**base, **good}, "x.json")
    bad = [{**good["erasure"][0], "used_claimed": "yes"}]
    with pytest.raises(OpcircuitsError, match="erasure"):
        check_result({**base, "erasure": bad}, "x.json")
