"""`opcircuits intervene`: the sweep's files, resuming after a crash, and refusing bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from opcircuits import intervene as intervene_mod
from opcircuits.errors import OpcircuitsError
from opcircuits.intervene import intervene, patch_sources
from opcircuits.options import InterveneOptions

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    """Six synthetic problems (two per category) and their counterfactual partners."""
    from opcircuits.data.synth import SynthOptions, synth

    out = tmp_path_factory.mktemp("synth") / "s.jsonl"
    synth(SynthOptions(out=out, n=6, seed=1))
    assert out.with_name("s.pairs.jsonl").is_file()
    return out


def options(tiny, data, out, **kw):
    base = dict(
        data=data,
        out=out,
        checkpoint=tiny.checkpoint,
        base=str(tiny.base),
        sites="bot@0,latent_2@1",
        alphas="-1,1",
        max_new_tokens=6,
        shard_size=2,
        batch_size=2,
        bootstrap=100,
        device="cpu",
    )
    return InterveneOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def finished(tiny_llama, synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    path = intervene(options(tiny_llama, synth_data, out))
    return out, path


def test_sweep_writes_one_row_per_problem_and_intervention(finished, synth_data):
    out, path = finished
    assert path == out / "interventions.json"
    table = pd.read_parquet(out / "interventions.parquet")
    result = json.loads(path.read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True
    labels = manifest["interventions"]
    # 2 sites × (zero, mean, resample, patch), 2K joint ablations × (zero, mean, resample), 1
    # steering site × 2 directions × 2 α, K truncations × (natural, position-preserved
    # positions), the default knockouts (answer → question, bot, prompt, thoughts, each thought;
    # each thought and all thoughts → question) and 3 paths.
    K = 6
    n = 4  # the tiny model's blocks: patch_step at each of layers 0 … n
    assert len(labels) == 8 + (n + 1) + 3 * 2 * K + 4 + 2 * K + (4 + K + K + 1) + 3
    for label in ("truncate 0", "truncate_pos 0", "patch bot@0", "mean latent_2-6@0",
                  "zero latent_1-6@0-4", "knockout answer>question", "knockout latent_3>question",
                  "path thoughts", "path answer", "path all",
                  "patch_step latent_1-6@2"):  # fmt: skip
        assert label in labels, label
    assert len(table) == 6 * (1 + len(labels))  # every problem has a partner: patch rows for all
    clean = table[table.kind == "none"]
    assert clean["ld_partner_answer"].notna().all() and clean["ld_answer"].notna().all()
    assert table["changed_step"].notna().all()
    assert table[table.kind == "path"]["ld_answer"].notna().all()
    assert table["id"].tolist()[:: 1 + len(labels)] == [f"synth_{i}" for i in range(6)]
    patch = table[table.kind == "patch"]
    assert (patch["source_id"] == patch["id"].str.replace("synth_", "synth_cf_")).all()
    partners = {
        json.loads(line)["id"]: json.loads(line)["final_value"]
        for line in synth_data.with_name("s.pairs.jsonl").read_text().splitlines()
    }
    assert (patch["source_gold"] == patch["source_id"].map(partners)).all()
    assert result["categories"] == ["mixed", "pure_addition", "pure_multiplication"]
    assert {e["intervention"] for e in result["effects"]} == set(labels)
    assert result["findings"]["title"] == "Causal tests" and result["findings"]["sentences"]
    assert result["provenance"]["data_sha256"] == manifest["data_sha256"]
    for fig in result["figures"]:
        assert (out / fig["file"]).stat().st_size > 1000
    assert {f["file"] for f in result["figures"]} >= {
        "causal_map_accuracy.png",
        "causal_thoughts.png",
        "causal_steering.png",
        "causal_patching.png",
    }
    for positions in ("natural", "preserved"):  # both truncation curves, the clean run at 6
        curve = [
            t for t in result["thoughts"] if t["category"] == "all" and t["positions"] == positions
        ]
        assert [t["thoughts"] for t in curve] == list(range(7))
    assert result["routing"]["dispensable_delta"] == 0.02
    assert {r["by"] for r in result["routing"]["recovery"]} == {"category", "changed_step"}
    assert len(result["routing"]["position_effect"]) == 6


def test_a_crashed_sweep_resumes_to_the_same_result(
    tiny_llama, synth_data, finished, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    real = intervene_mod._write_parquet
    calls = []

    def crash_on_second(rows, path):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second part is being written
        real(rows, path)

    monkeypatch.setattr(intervene_mod, "_write_parquet", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        intervene(options(tiny_llama, synth_data, out))
    parts = sorted(p.name for p in (out / "parts").iterdir())
    assert parts == ["part-00000.parquet"]  # nothing half-written
    assert not (out / "interventions.parquet").exists()
    first = (out / "parts" / "part-00000.parquet").stat().st_mtime_ns
    monkeypatch.setattr(intervene_mod, "_write_parquet", real)
    # The same command resumes: the finished part is kept as it is.
    intervene(options(tiny_llama, synth_data, out))
    assert (out / "parts" / "part-00000.parquet").stat().st_mtime_ns == first
    done = pd.read_parquet(finished[0] / "interventions.parquet")
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "interventions.parquet"), done, check_exact=True
    )
    a = json.loads((out / "interventions.json").read_text())
    b = json.loads(finished[1].read_text())
    assert a["effects"] == b["effects"] and a["findings"] == b["findings"]


def test_other_options_or_inputs_are_refused(tiny_llama, synth_data, finished, tmp_path):
    out = finished[0]
    with pytest.raises(OpcircuitsError, match="other options"):
        intervene(options(tiny_llama, synth_data, out, sites="bot@1"))
    with pytest.raises(OpcircuitsError, match="is an input"):
        intervene(options(tiny_llama, synth_data, synth_data))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(OpcircuitsError, match="not empty"):
        intervene(options(tiny_llama, synth_data, busy))
    assert (busy / "notes.txt").read_text() == "mine"
    bad = tmp_path / "bad.jsonl"
    lines = synth_data.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1][:-5], *lines[2:]]) + "\n")
    with pytest.raises(OpcircuitsError, match=r"bad.jsonl:2"):
        intervene(options(tiny_llama, bad, tmp_path / "o"))
    with pytest.raises(OpcircuitsError, match="kinds"):
        options(tiny_llama, synth_data, tmp_path / "o", kinds="zero,ablate")
    with pytest.raises(OpcircuitsError, match="alphas"):
        options(tiny_llama, synth_data, tmp_path / "o", alphas="1,x")
    with pytest.raises(OpcircuitsError, match="out of range"):
        intervene(options(tiny_llama, synth_data, tmp_path / "o2", sites="latent_1@9"))


def test_patch_sources_by_pair_id_or_map():
    recs = [{"id": "a", "pair_id": "p"}, {"id": "b", "pair_id": "q"}, {"id": "c"}]
    partners = [{"id": "a2", "pair_id": "p"}]
    assert patch_sources(recs, partners, None) == [3, None, None]
    both = [{"id": "a", "pair_id": "p"}, {"id": "b", "pair_id": "p"}]
    assert patch_sources(both, [], None) == [1, 0]  # two problems of one pair patch each other
    assert patch_sources(recs, partners, {"b": "a2", "c": "a"}) == [None, 3, 0]
    with pytest.raises(OpcircuitsError, match="neither a problem nor a partner"):
        patch_sources(recs, partners, {"b": "zz"})
    with pytest.raises(OpcircuitsError, match="3 members"):
        patch_sources([*both, {"id": "x", "pair_id": "p"}], [], None)
