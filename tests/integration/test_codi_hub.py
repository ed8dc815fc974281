"""Hub ids resolve through huggingface_hub's `snapshot_download`, offline, from a cache laid out as
the hub's and built here: the hub code path (codi/hub.py) itself runs, as for a user."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from codi_factory import build_tiny_codi
from hub_cache import add_repo, folder_files

from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.latent import run_batch
from opcircuits.data.io import read_problems

torch.set_num_threads(1)

CODI_REPO, BASE_REPO = "someone/codi-tiny", "someone/base-tiny"
QUESTIONS = ["Tom has 3 apples and buys 4 more. How many apples does he have?"]


@pytest.fixture()
def hub(tiny_llama, tmp_path):
    """$HF_HOME/hub holding the tiny checkpoint (with the 0-byte config.json of the released
    hub repos) and its base, each as `main` of a model repo."""
    home = tmp_path / "hf"
    files = {**folder_files(tiny_llama.checkpoint), "config.json": b""}
    codi = add_repo(home / "hub", CODI_REPO, files)
    base = add_repo(home / "hub", BASE_REPO, folder_files(tiny_llama.base))
    return home, codi, base


def test_the_cache_is_one_huggingface_hub_reads_as_its_own(hub):
    from huggingface_hub import scan_cache_dir

    home, codi, _ = hub
    info = scan_cache_dir(home / "hub")
    assert not info.warnings
    repos = {r.repo_id: r for r in info.repos}
    assert set(repos) == {CODI_REPO, BASE_REPO}
    (revision,) = repos[CODI_REPO].revisions
    assert revision.refs == frozenset({"main"}) and revision.snapshot_path == codi
    assert {f.file_name for f in revision.files} == {p.name for p in codi.iterdir()}


def test_hub_ids_load_from_the_cache_as_the_local_folders(hub, tiny_llama, monkeypatch):
    import huggingface_hub.constants as constants

    home, codi, base = hub
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model, tok = load_codi(CODI_REPO, base=BASE_REPO, device="cpu")
    assert model.source.checkpoint_dir == codi.resolve()
    assert model.source.base_dir == base and model.source.base == BASE_REPO
    ref, ref_tok = load_codi(tiny_llama.checkpoint, base=tiny_llama.base, device="cpu")
    got = run_batch(model, tok, QUESTIONS, layers=[0, 2], max_new_tokens=6)
    want = run_batch(ref, ref_tok, QUESTIONS, layers=[0, 2], max_new_tokens=6)
    assert torch.equal(got.hidden, want.hidden) and got.answer_ids == want.answer_ids
    # a repo the cache lacks: the user is told how to go local, not shown a traceback
    from opcircuits.errors import OpcircuitsError

    with pytest.raises(OpcircuitsError, match="--checkpoint DIR"):
        load_codi("someone/not-cached", base=BASE_REPO, device="cpu")


def test_a_preset_resolves_its_released_hub_repos_from_the_cache(tiny_gpt2, tmp_path, monkeypatch):
    """`--model codi-gpt2` names zen-E/CODI-gpt2 on base gpt2: the released repos' layout (one
    weights file, a 0-byte config.json, no codi_config.json: the preset declares K and the rest)."""
    import huggingface_hub.constants as constants

    from opcircuits.codi.config import PRESETS

    preset = PRESETS["codi-gpt2"]
    cache = tmp_path / "hub"
    weights = {"pytorch_model.bin": (tiny_gpt2.checkpoint / "pytorch_model.bin").read_bytes()}
    codi = add_repo(cache, preset.checkpoint, {**weights, "config.json": b""})
    add_repo(cache, preset.base, folder_files(tiny_gpt2.base))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # no local folder named like the hub id
    model, tok = load_codi("codi-gpt2", device="cpu")
    assert model.source.checkpoint_dir == codi.resolve() and model.source.base == "gpt2"
    ref, ref_tok = load_codi(tiny_gpt2.checkpoint, base=tiny_gpt2.base, device="cpu")
    got = run_batch(model, tok, QUESTIONS, layers=[0, 2], max_new_tokens=6)
    want = run_batch(ref, ref_tok, QUESTIONS, layers=[0, 2], max_new_tokens=6)
    assert torch.equal(got.hidden, want.hidden) and got.answer_ids == want.answer_ids


def test_the_cli_resolves_hub_ids_with_the_users_environment(tiny_texts, tiny_problems, tmp_path):
    """`opcircuits extract --model owner/name --base owner/base` in a fresh process, with only
    HF_HOME and HF_HUB_OFFLINE=1 saying where the cache is; the checkpoint lacks the base's
    weights, which come from the base repo. The store equals a local load's."""
    from opcircuits.store import open_store

    tiny = build_tiny_codi(tmp_path / "tiny", "llama", tiny_texts, partial=True)
    home = tmp_path / "hf"
    add_repo(home / "hub", CODI_REPO, {**folder_files(tiny.checkpoint), "config.json": b""})
    add_repo(home / "hub", BASE_REPO, folder_files(tiny.base))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    # One thread, as this process runs (the test modules set it): the same reduction order, so
    # the same numbers (with torch's default two threads CI once saw 1.8e-4 apart).
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = tmp_path / "store"
    args = ["extract", "--data", str(tiny_problems), "--model", CODI_REPO, "--base", BASE_REPO,
            "--device", "cpu", "--layers", "0,2", "--max-new-tokens", "3", "--out", str(out),
            "--store-dtype", "float32"]  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-m", "opcircuits", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    store = open_store(out)
    assert store.manifest["base"] == BASE_REPO
    model, tok = load_codi(tiny.checkpoint, base=tiny.base, device="cpu")
    questions = [p["question"] for p in read_problems(tiny_problems)]
    ref = run_batch(model, tok, questions, layers=[0, 2], max_new_tokens=3)
    assert len(store) == len(questions) == 24
    assert np.abs(store.hidden() - ref.hidden.numpy()).max() <= 1e-4
