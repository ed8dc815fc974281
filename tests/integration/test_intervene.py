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

    def crash_on_second(rows, path, *meta):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second part is being written
        real(rows, path, *meta)

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
    with pytest.raises(OpcircuitsError, match="would overwrite the input"):
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


# --- hardening (issue 25): parts prove what they hold; refusals before the first write ---------


def test_a_part_copied_over_another_or_damaged_is_computed_again_never_merged(
    tiny_llama, synth_data, finished, tmp_path, caplog
):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    parts = out / "parts"
    shutil.copy(parts / "part-00000.parquet", parts / "part-00001.parquet")  # problems 0-1 twice
    damaged = (parts / "part-00002.parquet").read_bytes()
    (parts / "part-00002.parquet").write_bytes(damaged[: len(damaged) // 2])  # truncated
    with caplog.at_level("WARNING"):
        intervene(options(tiny_llama, synth_data, out))
    warned = caplog.text
    assert "part-00001.parquet" in warned and "part-00002.parquet" in warned
    assert "part-00000.parquet" not in warned
    assert sorted(p.name for p in parts.iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    done = pd.read_parquet(finished[0] / "interventions.parquet")
    got = pd.read_parquet(out / "interventions.parquet")
    assert got["id"].value_counts().to_dict() == done["id"].value_counts().to_dict()
    pd.testing.assert_frame_equal(got, done, check_exact=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and sorted(manifest["parts"]) == sorted(
        p.name for p in parts.iterdir()
    )


def test_the_same_data_by_another_path_resumes_the_sweep(
    tiny_llama, synth_data, finished, tmp_path, monkeypatch
):
    """Inputs are identified by their content: a relative path to the same file (the sweep was
    run with an absolute one) was refused as a sweep with other data."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir()}
    monkeypatch.chdir(synth_data.parent)
    intervene(options(tiny_llama, type(synth_data)(synth_data.name), out))
    assert {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir()} == stamps
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "interventions.parquet"),
        pd.read_parquet(finished[0] / "interventions.parquet"),
        check_exact=True,
    )


def test_a_part_from_another_sweep_is_not_merged(finished, tmp_path):
    """A part renamed into place with its hash recorded still names its own sweep and problems."""
    import shutil

    from opcircuits.intervene.parts import check_part, merge_parts, shards

    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    manifest = json.loads((out / "manifest.json").read_text())
    ids = [f"synth_{i}" for i in range(6)]
    rows = shards(6, 2)
    assert all(check_part(out, manifest, i, r.start, ids[r.start : r.stop]) is None
               for i, r in enumerate(rows))  # fmt: skip
    shutil.copy(out / "parts" / "part-00000.parquet", out / "parts" / "part-00001.parquet")
    manifest["parts"]["part-00001.parquet"] = manifest["parts"]["part-00000.parquet"]
    assert "metadata" in check_part(out, manifest, 1, 2, ids[2:4])
    other = {**manifest, "options": {**manifest["options"], "seed": 5}}
    assert "metadata" in check_part(out, other, 0, 0, ids[0:2])
    with pytest.raises(OpcircuitsError, match="part 1: its metadata"):
        merge_parts(out, manifest, rows, ids)
    edited = {**manifest, "parts": "all of them"}  # a hand-edited manifest: nothing recorded
    assert "never recorded" in check_part(out, edited, 0, 0, ids[0:2])
    shutil.copy(out / "parts" / "part-00000.parquet", out / "parts" / "part-00007.parquet")
    assert intervene_mod.parts.kept_parts(out, edited, rows, ids) == [0, 1, 2]
    assert sorted(p.name for p in (out / "parts").iterdir()) == []  # the stray part 7 too


def _question_of(tiny, length: int) -> str:
    """A question of digits whose prompt is `length` tokens long (at most)."""
    from opcircuits.codi.checkpoint import load_codi
    from opcircuits.codi.latent import prompt_ids

    model, tok = load_codi(tiny.checkpoint, base=tiny.base, device="cpu")
    digits = [str(i % 10) for i in range(3000)]
    lo, hi = 0, len(digits)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        fits = len(prompt_ids(model, tok, " ".join(digits[:mid]))) <= length
        lo, hi = (mid, hi) if fits else (lo, mid - 1)
    return " ".join(digits[:lo])


def test_refusals_come_before_the_first_write(tiny_llama, synth_data, tmp_path):
    out = tmp_path / "out"
    quick = dict(kinds="steer", alphas="1", sites="bot@0")
    with pytest.raises(OpcircuitsError, match="no problem of category 'bar', 'foo'"):
        intervene(options(tiny_llama, synth_data, out, steer_categories="foo,bar", **quick))
    assert not out.exists()  # nothing written: the corrected command is not "other options"
    long = tmp_path / "long.jsonl"
    record = json.loads(synth_data.read_text().splitlines()[0])
    record["question"] = " ".join(str(i) for i in range(2000)) + " How many?"  # > 1024 positions
    long.write_text(json.dumps(record) + "\n")
    with pytest.raises(OpcircuitsError, match="too long for this model: synth_0"):
        intervene(options(tiny_llama, long, tmp_path / "long-out", **quick))
    assert not (tmp_path / "long-out").exists()
    # Room for the thoughts and the answer start, not for the gold answer scored after them.
    record["question"] = _question_of(tiny_llama, 1024 - 6 - 1)  # K = 6, answer start: eot
    long.write_text(json.dumps(record) + "\n")
    with pytest.raises(OpcircuitsError, match="do not fit in this model's 1024 positions with"):
        intervene(options(tiny_llama, long, tmp_path / "long-out", **quick))
    assert not (tmp_path / "long-out").exists()
    path = intervene(options(tiny_llama, synth_data, out, steer_categories="mixed,pure_addition",
                             **quick))  # fmt: skip
    assert json.loads(path.read_text())["provenance"]["steer_categories"] == [
        "mixed",
        "pure_addition",
    ]


def test_a_folder_whose_sweep_finished_no_part_is_started_afresh(tiny_llama, synth_data, tmp_path):
    """A manifest left by a sweep that stopped before its first part holds nothing to keep."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": "x", "options": {"seed": 9}}))
    path = intervene(options(tiny_llama, synth_data, out, kinds="truncate", sites="bot@0"))
    assert json.loads((out / "manifest.json").read_text())["options"]["seed"] == 0
    assert path.is_file()
