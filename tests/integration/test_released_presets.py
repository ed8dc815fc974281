"""The released preset `codi-gpt2` as a user loads it, through `huggingface_hub` from a local
cache laid out as the hub's (offline): a tiny GPT-2 CODI checkpoint stands in for
zen-E/CODI-gpt2 (no codi_config.json, as released) and a tiny base for `gpt2`. `evaluate` then
prints the paper's figure beside the student, and `doctor` says which settings the preset gave."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from hub_cache import add_repo, folder_files

from opcircuits.codi.config import PRESETS
from opcircuits.codi.reproduce import result_line

torch.set_num_threads(1)


@pytest.fixture
def released_gpt2(tiny_gpt2, tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hf" / "hub"
    preset = PRESETS["codi-gpt2"]
    weights = folder_files(tiny_gpt2.checkpoint)
    del weights["codi_config.json"]  # as released
    add_repo(cache, preset.checkpoint, weights)
    add_repo(cache, preset.base, folder_files(tiny_gpt2.base))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # no local folder named like the hub id
    return tiny_gpt2


def test_evaluate_puts_the_papers_figure_beside_the_released_gpt2(released_gpt2, gsm8k_dir):
    code, stdout, stderr = run_cli(
        "evaluate", "--model", "codi-gpt2", "--data", str(gsm8k_dir), "--limit", "6",
        "--num-latent", "6,0", "--no-teacher", "--device", "cpu", "--out", "r.json",
    )  # fmt: skip
    assert code == 0, stderr
    result = json.loads(Path("r.json").read_text())
    paper = result["paper"]
    low, high = result["ci95"]["student_k6"]
    assert paper["model"] == "codi-gpt2" and paper["setting"] == "student_k6"
    assert paper["accuracy"] == 0.437 and paper["ci_contains_paper"] == (low <= 0.437 <= high)
    lines = stdout.splitlines()
    assert result_line("student_k6", result) in lines and "paper: 0.437" in stdout
    k0 = next(line for line in lines if line.startswith("student_k0: "))
    assert "Wilson CI" in k0 and "paper" not in k0  # the paper reports the student at K = 6


def test_doctor_says_the_released_settings_came_from_the_preset(released_gpt2, tmp_path):
    code, stdout, stderr = run_cli(
        "doctor", "--model", "codi-gpt2", "--device", "cpu", "--json", "d.json"
    )
    assert code == 0, stderr + stdout
    report = json.loads(Path("d.json").read_text())
    config = report["config"]
    for name in ("num_latent", "remove_eos", "lora_alpha", "base"):
        assert config[name]["from"] == "preset", name
    assert config["prj_dim"] == {"value": released_gpt2.config.prj_dim, "from": "weights"}
    assert report["where"]["checkpoint"] == "zen-E/CODI-gpt2" and report["where"]["base"] == "gpt2"
    assert {f["name"] for f in report["files"] if f["folder"] == "checkpoint"} == {
        "pytorch_model.bin"
    }
