"""`opcircuits run` end to end on a tiny CODI checkpoint and the real GSM8K: every artefact and its
manifest, skip on rerun, a real kill -9 then resume equal to an uninterrupted run, analysis_only
on a legacy JSON, and the bad inputs a user can give."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli, tree
from codi_factory import build_tiny_codi, sample_texts

from opcircuits.files import manifest_path, sha256_file
from opcircuits.pipeline.config import resolve
from opcircuits.pipeline.engine import Hasher
from opcircuits.store import open_store

STAGES = ["download", "classify", "prototype", "extract", "analyze"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Two shared cores: torch's default thread pool spins and slows tiny models ~40x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(gsm8k_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tiny = build_tiny_codi(
        tmp_path_factory.mktemp("tiny"), "llama", sample_texts(gsm8k_dir, 200), num_latent=2
    )
    tiny.config.save(tiny.checkpoint)  # the checkpoint dir carries its own codi_config.json
    return tiny


def model_args(tiny, *, checkpoint: Path | None = None) -> list[str]:
    return [
        "--checkpoint", str(checkpoint or tiny.checkpoint),
        "--layers", "1,3",
        "--shard-size", "6",
        "--batch-size", "6",
        "--max-new-tokens", "8",
    ]  # fmt: skip


ANALYSIS = ["--folds", "2", "--repeats", "1", "--permutations", "4", "--jobs", "1"]


def prototype_args(gsm8k_dir: Path, tiny, out: Path) -> list[str]:
    return [
        "run", "--mode", "prototype", "--source", str(gsm8k_dir), "--out", str(out),
        *model_args(tiny), *ANALYSIS,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(gsm8k_dir, tiny, tmp_path_factory):
    """One uninterrupted prototype run."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    code, stdout, stderr = run_cli(*prototype_args(gsm8k_dir, tiny, out))
    assert code == 0, stderr
    return out, stdout


def records(run_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "stages").glob("*.json"))}


def test_prototype_run_writes_every_artefact_in_agreement_with_its_manifest(reference, gsm8k_dir):
    run_dir, stdout = reference
    assert f"report: {run_dir / 'analysis' / 'report.html'}" in stdout
    assert re.search(r"best probe: \w+ on \w+: accuracy 0\.\d{3} \(95% CI", stdout)

    # Each stage's record: its outputs still hash to what it recorded (fresh hashes, no cache).
    recs = records(run_dir)
    assert sorted(recs) == sorted(STAGES)
    fresh = Hasher()
    for name, rec in recs.items():
        for entry in rec["outputs"].values():
            assert fresh.any(run_dir / entry["path"]) == entry["sha256"], (name, entry)
        for entry in rec["key"]["inputs"].values():
            if "path" in entry:
                path = Path(entry["path"])
                path = path if path.is_absolute() else run_dir / path
                assert fresh.any(path) == entry["sha256"], (name, entry)
    assert recs["download"]["key"]["inputs"]["source"]["path"] == str(gsm8k_dir.resolve())

    # The data chain: full file → 600 sample → nested 60 subset, each manifest naming its input.
    data = run_dir / "data"
    full, sample = data / "gsm8k_full.jsonl", data / "operation_samples_200.jsonl"
    subset = data / "operation_samples_prototype_60.jsonl"
    assert sum(1 for _ in full.open()) == 8792
    sample_manifest = json.loads(manifest_path(sample).read_text())
    assert sample_manifest["counts"] == dict.fromkeys(
        ["mixed", "pure_addition", "pure_multiplication"], 200
    )
    assert sha256_file(full) in json.dumps(sample_manifest)
    assert sha256_file(sample) in manifest_path(subset).read_text()
    subset_ids = [json.loads(line)["id"] for line in subset.open()]
    sample_ids = {json.loads(line)["id"] for line in sample.open()}
    assert len(subset_ids) == 60 and set(subset_ids) <= sample_ids

    # The store: the subset's problems, in order, from the tiny model, complete.
    store = open_store(run_dir / "store")
    m = store.manifest
    assert m["complete"] and m["n_problems"] == 60
    assert m["dataset_sha256"] == sha256_file(subset)
    assert m["layers"] == [1, 3] and m["positions"] == ["bot", "latent_1", "latent_2"]
    assert store.records["id"].tolist() == subset_ids
    assert store.hidden().shape == (60, 3, 2, 64)

    # The analysis: the report names this store's manifest and the run's options.
    analysis = run_dir / "analysis"
    report = json.loads((analysis / "analysis_report.json").read_text())
    assert report["store"]["manifest"] == m
    assert {k: report["options"][k] for k in ("folds", "repeats", "permutations", "seed")} == {
        "folds": 2, "repeats": 1, "permutations": 4, "seed": 0,
    }  # fmt: skip
    assert (analysis / "report.html").is_file() and (analysis / "ANALYSIS_SUMMARY.md").is_file()
    assert not list(run_dir.glob(".analysis*"))  # no scratch folder left behind

    # Reproducibility: resolved config (re-usable as --config), versions, seeds, the log.
    cfg = tomllib.loads((run_dir / "config.resolved.toml").read_text())
    assert cfg["extract"]["layers"] == "1,3" and cfg["data"]["source"] == str(gsm8k_dir)
    again = resolve(run_dir / "config.resolved.toml")
    assert again.tables["analyze"]["folds"] == 2 and again.tables["run"]["out"] == run_dir
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete" and info["seeds"] == {"data": 42, "analyze": 0}
    assert info["versions"]["torch"] and info["versions"]["opcircuits"]
    assert [s for s, _ in info["stages"]] == STAGES
    log = (run_dir / "run.log").read_text()
    for stage in STAGES:
        assert re.search(
            rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO .*\] {stage} \.\.\.$", log, re.M
        )
    assert not list((run_dir / "stages").glob("*.started.json"))


def test_rerun_skips_every_stage_even_in_a_moved_run_directory(
    reference, gsm8k_dir, tiny, tmp_path
):
    run_dir, _ = reference
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    before = {p: p.read_bytes() for p in moved.rglob("*") if p.is_file() and p.suffix != ".log"}
    code, stdout, stderr = run_cli(*prototype_args(gsm8k_dir, tiny, moved), "--batch-size", "4")
    assert code == 0, stderr
    assert "ran: nothing, all up to date" in stdout
    changed = [p for p, b in before.items() if p.read_bytes() != b]
    assert sorted(p.name for p in changed) == [
        ".hashcache.json",
        "config.resolved.toml",
        "run.json",
    ]
    # The resolved config repeats the run exactly (here: everything is up to date).
    code, stdout, stderr = run_cli("run", "--config", str(moved / "config.resolved.toml"),
                                   "--out", str(moved))  # fmt: skip
    assert code == 0 and "ran: nothing, all up to date" in stdout, stderr
    # Without --source the default is the hub; GSM8K is present, so it is not downloaded again.
    args = prototype_args(gsm8k_dir, tiny, moved)
    del args[args.index("--source") : args.index("--source") + 2]
    code, stdout, stderr = run_cli(*args)
    assert code == 0 and "ran: nothing, all up to date" in stdout, stderr


def _shards(store: Path) -> int:
    return len(list(store.glob("hidden-*.safetensors")))


def _interrupt_after_a_new_shard(args: list[str], store: Path, sig: int) -> tuple[int, str]:
    """Start `opcircuits ARGS` in a subprocess; send `sig` as soon as it has written one more
    store shard than there are now. Returns (exit code, stderr)."""
    have = _shards(store) if store.exists() else 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "opcircuits", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job starts with SIGINT ignored, and Python then installs no Ctrl-C
        # handler; give the child the default disposition a terminal's foreground process has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not (store.exists() and _shards(store) > have):
            assert proc.poll() is None, f"the run ended before it could be stopped: {proc.stderr}"
            assert time.monotonic() < deadline, "no new shard appeared"
            time.sleep(0.005)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, err


@pytest.mark.slow
def test_ctrl_c_then_kill_9_mid_extraction_then_same_command_equals_an_uninterrupted_run(
    reference, gsm8k_dir, tiny, tmp_path
):
    ref_dir, _ = reference
    run_dir = tmp_path / "killed"
    store = run_dir / "store"
    args = prototype_args(gsm8k_dir, tiny, run_dir)

    code, err = _interrupt_after_a_new_shard(args, store, signal.SIGINT)
    assert code == 130 and "interrupted; rerun the same command to resume" in err
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    first = _shards(store)
    assert first < 10  # of 10: really stopped mid-extraction

    code, _ = _interrupt_after_a_new_shard(args, store, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert first < _shards(store) < 10  # the second attempt resumed, then died mid-extraction
    # Nothing claims the unfinished store is done.
    assert not json.loads((store / "manifest.json").read_text())["complete"]
    assert not (run_dir / "stages" / "extract.json").exists()
    assert (run_dir / "stages" / "extract.started.json").exists()
    assert not (run_dir / "analysis").exists()

    code, stdout, stderr = run_cli(*args)
    assert code == 0, stderr
    assert "ran: extract, analyze" in stdout  # the data stages were done and are not redone
    assert "resuming an interrupted run" in (run_dir / "run.log").read_text()

    for name in ("gsm8k_full.jsonl", "operation_samples_200.jsonl"):
        assert (run_dir / "data" / name).read_bytes() == (ref_dir / "data" / name).read_bytes()
    got, want = open_store(run_dir / "store"), open_store(ref_dir / "store")
    assert np.array_equal(got.hidden(), want.hidden())
    assert np.array_equal(got.latent_inputs(), want.latent_inputs())
    assert got.records.equals(want.records)
    ignore = {"created", "dataset"}  # time and the run dir's own path
    assert {k: v for k, v in got.manifest.items() if k not in ignore} == {
        k: v for k, v in want.manifest.items() if k not in ignore
    }
    report = json.loads((run_dir / "analysis" / "analysis_report.json").read_text())
    ref_report = json.loads((ref_dir / "analysis" / "analysis_report.json").read_text())
    report.pop("store"), ref_report.pop("store")
    assert report == ref_report


@pytest.mark.slow
def test_sigterm_mid_extraction_is_handled_like_ctrl_c(reference, gsm8k_dir, tiny, tmp_path):
    """A scheduler's stop (SIGTERM): the interrupted message, exit code 143, run.json says
    interrupted, no temporary file left, and the same command resumes (issue 25)."""
    run_dir = tmp_path / "terminated"
    store = run_dir / "store"
    args = prototype_args(gsm8k_dir, tiny, run_dir)
    code, err = _interrupt_after_a_new_shard(args, store, signal.SIGTERM)
    assert code == 143 and err.strip().endswith("interrupted; rerun the same command to resume")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    assert _shards(store) < 10
    assert not [p for p in run_dir.rglob(".*") if p.name.endswith((".tmp", ".old"))]
    code, stdout, stderr = run_cli(*args)
    assert code == 0 and "ran: extract, analyze" in stdout, stderr


def test_analysis_only_imports_a_legacy_json_and_finds_a_planted_signal(tmp_path):
    rng = np.random.default_rng(0)
    categories = ["pure_addition", "pure_multiplication", "mixed"]
    items = []
    for i in range(36):
        cat = categories[i % 3]
        thoughts = {k: rng.normal(size=(6, 16)) for k in ("early", "middle", "late")}
        thoughts["middle"][2, :3] += 8.0 * np.eye(3)[i % 3]  # the category, at one cell only
        items.append({
            "id": f"test_{i}", "question": f"Tom has {i} apples. How many?",
            "answer": f"<<{i}+1={i + 1}>> #### {i + 1}", "operation_type": cat,
            "thoughts": {k: v.round(4).tolist() for k, v in thoughts.items()},
        })  # fmt: skip
    legacy = tmp_path / "continuous_thoughts_old.json"
    legacy.write_text(json.dumps(items))
    run_dir = tmp_path / "legacy-run"
    args = [
        "run", "--mode", "analysis_only", "--store", str(legacy), "--out", str(run_dir),
        "--positions", "bot,latent_1,latent_2", "--analyze-layers", "4,8", *ANALYSIS,
    ]  # fmt: skip
    code, stdout, stderr = run_cli(*args)
    assert code == 0, stderr
    assert "ran: import, analyze" in stdout
    store = open_store(run_dir / "store")
    assert len(store.records) == 36 and store.layers == [4, 8, 14]
    report = json.loads((run_dir / "analysis" / "analysis_report.json").read_text())
    best = max(report["token_layer_map"], key=lambda c: c["accuracy"])
    assert (best["position"], best["layer"]) == ("latent_2", 8) and best["accuracy"] > 0.9
    assert [c["layer"] for c in report["token_layer_map"]] == [4, 8] * 3
    code, stdout, _ = run_cli(*args)
    assert code == 0 and "ran: nothing, all up to date" in stdout


def test_analysis_only_on_an_existing_store_analyses_it_in_place(reference, tmp_path):
    store = reference[0] / "store"
    before = Hasher().tree(store)
    run_dir = tmp_path / "again"
    code, stdout, stderr = run_cli(
        "run", "--mode", "analysis_only", "--store", str(store), "--out", str(run_dir),
        "--positions", "bot,latent_2", "--analyze-layers", "3", *ANALYSIS,
    )  # fmt: skip
    assert code == 0 and "ran: analyze" in stdout, stderr
    report = json.loads((run_dir / "analysis" / "analysis_report.json").read_text())
    assert report["store"]["path"] == str(store)
    assert {(c["position"], c["layer"]) for c in report["token_layer_map"]} == {
        ("bot", 3), ("latent_2", 3),
    }  # fmt: skip
    assert not (run_dir / "store").exists() and Hasher().tree(store) == before
    rec = records(run_dir)["analyze"]
    assert rec["key"]["inputs"]["store"]["path"] == str(store.resolve())


# --- bad inputs: exit code 2 and one line naming the stage or option and the cause ------------


def test_source_folder_with_a_problem_file_that_is_not_json(tmp_path):
    src = tmp_path / "gsm8k"
    src.mkdir()
    (src / "train.jsonl").write_text("this is not JSON\n")
    (src / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    code, _, err = run_cli("run", "--source", str(src), "--out", str(tmp_path / "r"))
    assert code == 2
    assert "stage 'download' failed:" in err and str(src) in err
    assert not (tmp_path / "r" / "stages" / "download.json").exists()
    assert not (tmp_path / "r" / "data" / "gsm8k_full.jsonl").exists()


def test_legacy_store_that_is_not_json(tmp_path):
    bad = tmp_path / "continuous_thoughts_x.json"
    bad.write_text("id,question\n1,what\n")
    code, _, err = run_cli("run", "--mode", "analysis_only", "--store", str(bad), "--out",
                           str(tmp_path / "r"))  # fmt: skip
    assert code == 2 and "stage 'import' failed:" in err and str(bad) in err
    code, _, err = run_cli("run", "--mode", "analysis_only", "--out", str(tmp_path / "r"))
    assert code == 2 and "analysis_only needs --store" in err


def test_output_directory_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "somefile"
    blocker.write_text("a file, not a folder")
    code, _, err = run_cli("run", "--out", str(blocker / "sub"))
    assert code == 2 and "is a file, so the output cannot be written inside it" in err
    assert str(blocker) in err and "stage" not in err  # refused before any stage, naming it


def test_batch_size_zero(tmp_path):
    code, _, err = run_cli("run", "--batch-size", "0", "--out", str(tmp_path / "r"))
    assert code == 2 and "extract.batch_size" in err and "must be at least 1, got 0" in err
    assert not (tmp_path / "r").exists()  # rejected before anything is written


@pytest.fixture
def data_done(reference, tmp_path) -> Path:
    """A run dir whose data stages are done (copied from the reference), with no store yet."""
    ref_dir, _ = reference
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir / "data", run_dir / "data")
    (run_dir / "stages").mkdir()
    for stage in ("download", "classify", "prototype"):
        shutil.copy(ref_dir / "stages" / f"{stage}.json", run_dir / "stages")
    return run_dir


def test_layer_beyond_the_model_depth(data_done, gsm8k_dir, tiny):
    args = prototype_args(gsm8k_dir, tiny, data_done)
    args[args.index("1,3")] = "1,9"
    code, _, err = run_cli(*args)
    assert code == 2 and "stage 'extract' failed: field 'layers': layers [9] out of range" in err
    assert not (data_done / "stages" / "extract.json").exists()


def test_store_from_another_model_is_refused_and_left_intact(
    reference, data_done, gsm8k_dir, tiny, tmp_path
):
    from safetensors.numpy import load_file, save_file

    other = tmp_path / "other-checkpoint"
    shutil.copytree(tiny.checkpoint, other)
    weights = load_file(other / "model.safetensors")
    name = next(k for k in sorted(weights) if k.startswith("prj.") and k.endswith("weight"))
    weights[name] = weights[name] * 1.5
    save_file(weights, other / "model.safetensors")

    store = tmp_path / "shared-store"
    shutil.copytree(reference[0] / "store", store)
    before = Hasher().tree(store)
    args = prototype_args(gsm8k_dir, tiny, data_done)
    args[args.index(str(tiny.checkpoint))] = str(other)
    code, _, err = run_cli(*args, "--store", str(store))
    assert code == 2 and "stage 'extract' failed:" in err
    assert "different settings" in err and "weights_sha256: store has" in err
    assert Hasher().tree(store) == before


# --- files the run did not write are never deleted nor overwritten (issue 13 item 2) ----------


@pytest.fixture
def copied_run(reference, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    return run_dir


def test_a_foreign_file_in_the_analysis_folder_stops_the_run_and_is_kept(
    copied_run, gsm8k_dir, tiny
):
    notes = copied_run / "analysis" / "notes.txt"
    notes.write_text("my notes")
    before = tree(copied_run / "analysis")
    args = prototype_args(gsm8k_dir, tiny, copied_run)
    args[args.index("--folds") + 1] = "3"  # a changed analysis option: the analysis reruns
    code, _, err = run_cli(*args)
    assert code == 2 and "stage 'analyze' failed:" in err
    assert f"{notes}: not written by opcircuits" in err
    assert tree(copied_run / "analysis") == before


@pytest.mark.parametrize("change", ["an extraction option", "--force"])
def test_a_foreign_file_in_the_store_folder_stops_the_run_and_nothing_is_removed(
    copied_run, gsm8k_dir, tiny, change
):
    precious = copied_run / "store" / "precious.bin"
    precious.write_bytes(b"\x00" * 100)
    before = tree(copied_run / "store")
    args = prototype_args(gsm8k_dir, tiny, copied_run)
    if change == "--force":
        args.append("--force")
    else:
        args[args.index("--max-new-tokens") + 1] = "6"  # the store is stale: it would be cleared
    code, _, err = run_cli(*args)
    assert code == 2 and "stage 'extract' failed:" in err
    assert f"{precious}: not written by opcircuits" in err
    assert tree(copied_run / "store") == before


def test_a_data_file_the_run_did_not_write_is_not_overwritten(gsm8k_dir, tiny, tmp_path):
    run_dir = tmp_path / "run"
    mine = run_dir / "data" / "gsm8k_full.jsonl"
    mine.parent.mkdir(parents=True)
    mine.write_text('{"id": "mine"}\n')
    code, _, err = run_cli(*prototype_args(gsm8k_dir, tiny, run_dir))
    assert code == 2 and "stage 'download' failed:" in err
    assert f"{mine}: not written by this run" in err
    assert mine.read_text() == '{"id": "mine"}\n'
