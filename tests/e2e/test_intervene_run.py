"""The causal tests inside `opcircuits run`: the intervene stage on the run's problems and model,
its partners carried through sampling, its skip/recompute/ownership records, its config table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from cli_runner import run_cli
from codi_factory import build_tiny_codi, sample_texts

from opcircuits.errors import OpcircuitsError
from opcircuits.pipeline.config import resolve
from opcircuits.pipeline.stages import build_stages, intervene_enabled

ANALYSIS = ["--folds", "2", "--repeats", "1", "--permutations", "4", "--jobs", "1"]


@pytest.fixture(scope="module")
def tiny(gsm8k_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tiny = build_tiny_codi(
        tmp_path_factory.mktemp("tiny"), "llama", sample_texts(gsm8k_dir, 200), num_latent=2
    )
    tiny.config.save(tiny.checkpoint)
    return tiny


def run_args(tiny, out: Path, kinds: str = "zero,patch,truncate") -> list[str]:
    return [
        "run", "--mode", "prototype", "--data", "synthetic", "--out", str(out),
        "--per-category", "6", "--prototype-per-category", "6", "--synth-steps", "2,3",
        "--synth-max-operand", "9", "--synth-max-result", "40",
        "--checkpoint", str(tiny.checkpoint), "--layers", "1,3", "--batch-size", "6",
        "--max-new-tokens", "8", *ANALYSIS,
        "--intervene", "on", "--intervene-kinds", kinds, "--intervene-sites", "latent_1@1",
    ]  # fmt: skip


def ran(stdout: str) -> list[str]:
    line = next(x for x in stdout.splitlines() if x.startswith("run directory:"))
    return line.split("(ran: ")[1].rstrip(")").split(", ")


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "causal"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: torch's thread pool slows tiny models
    try:
        code, stdout, stderr = run_cli(*run_args(tiny, out))
    finally:
        torch.set_num_threads(threads)
    assert code == 0, stderr
    return out, stdout


def test_the_run_patches_the_sampled_problems_from_their_synthetic_partners(finished):
    out, stdout = finished
    assert ran(stdout) == ["synth", "classify", "prototype", "extract", "intervene", "analyze"]
    table = pd.read_parquet(out / "interventions" / "interventions.parquet")
    subset = [json.loads(x) for x in (out / "data").glob("*prototype_18.jsonl").__next__().open()]
    assert [r["id"] for r in subset] == list(dict.fromkeys(table["id"]))  # the run's problems
    # pair_id survived classify and prototype sampling, so every problem has its partner.
    assert all(r["pair_id"] for r in subset)
    patch = table[table["kind"] == "patch"]
    assert len(patch) == 18
    assert (patch["source_id"] == patch["id"].str.replace("synth_", "synth_cf_")).all()
    labels = set(table["intervention"].unique())
    asked = {"none", "zero latent_1@1", "patch latent_1@1", "truncate 0", "truncate 1"}
    assert asked <= labels
    # The routing controls of these kinds: position-preserved truncations, the joint content
    # ablations of latent_{k+1} … latent_K (input and every layer), patch_step at each layer.
    n = int(table[table["kind"] == "patch_step"]["sites"].str.split("@").str[1].astype(int).max())
    routing = {"truncate_pos 0", "truncate_pos 1", "zero latent_1-2@0", f"zero latent_1-2@0-{n}",
               "zero latent_2@0", f"zero latent_2@0-{n}"}  # fmt: skip
    routing |= {f"patch_step latent_1-2@{x}" for x in range(n + 1)}
    assert labels - asked == routing
    # The model is [extract]'s: the same weights the store was extracted with.
    store = json.loads((out / "store" / "manifest.json").read_text())
    sweep = json.loads((out / "interventions" / "manifest.json").read_text())
    assert sweep["weights_sha256"] == store["weights_sha256"]
    assert sweep["options"]["max_new_tokens"] == 8
    # The report's Causal tests section and figures, from the same sweep.
    report = json.loads((out / "analysis" / "analysis_report.json").read_text())
    section = report["causal_tests"]
    assert section["same_as_store"] == {"model": True, "problems": True}
    effects = json.loads((out / "interventions" / "interventions.json").read_text())["effects"]
    assert section["effects"] == effects
    summary = (out / "analysis" / "ANALYSIS_SUMMARY.md").read_text()
    assert "## Causal tests" in summary and "Clean run: the model answers" in summary
    assert "causal_thoughts.png" in {f["file"] for f in report["figures"]}
    assert (out / "analysis" / "causal_thoughts.png").is_file()
    record = json.loads((out / "stages" / "intervene.json").read_text())
    assert record["key"]["inputs"]["pairs"]["path"] == "data/synth_18.pairs.jsonl"
    assert "batch_size" in record["settings"] and "batch_size" not in record["key"]["options"]


def test_rerun_skips_and_a_changed_sweep_recomputes_only_itself_and_the_report(
    finished, tiny, tmp_path
):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    code, stdout, stderr = run_cli(*run_args(tiny, out))
    assert code == 0 and "all up to date" in stdout, stderr
    code, stdout, stderr = run_cli(*run_args(tiny, out, "zero,truncate"))
    assert code == 0, stderr
    assert ran(stdout) == ["intervene", "analyze"]
    table = pd.read_parquet(out / "interventions" / "interventions.parquet")
    assert "patch" not in set(table["kind"])  # the old sweep's parts were cleared, not mixed in
    # A file the run did not write in the folder: a changed sweep stops and removes nothing.
    (out / "interventions" / "notes.txt").write_text("mine")
    before = sorted(p.name for p in (out / "interventions").iterdir())
    code, _, stderr = run_cli(*run_args(tiny, out, "zero"))
    assert code == 2
    assert "stage 'intervene' failed" in stderr and "notes.txt" in stderr
    assert sorted(p.name for p in (out / "interventions").iterdir()) == before


def test_the_stage_runs_in_full_mode_or_when_asked(tmp_path):
    def stages(mode: str, switch: str | None = None) -> list[str]:
        flags = {"run": {"mode": mode, "out": tmp_path, "store": None}}
        if switch is not None:
            flags["intervene"] = {"enabled": switch}
        config = resolve(None, flags)
        assert intervene_enabled(config) == ("intervene" in [
            s.name for s in build_stages(config, tmp_path)[0]
        ])  # fmt: skip
        return [s.name for s in build_stages(config, tmp_path)[0]]

    assert "intervene" in stages("full")
    assert "intervene" not in stages("prototype")
    assert "intervene" in stages("prototype", "on")
    assert "intervene" not in stages("full", "off")
    with pytest.raises(OpcircuitsError, match="analysis_only has neither"):
        resolved = resolve(
            None,
            {"run": {"mode": "analysis_only", "store": tmp_path}, "intervene": {"enabled": "on"}},
        )
        build_stages(resolved, tmp_path)


def test_the_intervene_table_refuses_what_the_run_sets(tmp_path):
    config = tmp_path / "x.toml"
    config.write_text('[intervene]\nenabled = "on"\nmodel = "demo"\n')
    with pytest.raises(OpcircuitsError, match=r"set by the run itself \(the model") as exc:
        resolve(config)
    assert exc.value.line == 3 and exc.value.field == "intervene.model"
    config.write_text('[intervene]\nenabled = "yes"\n')
    with pytest.raises(OpcircuitsError, match="auto, on, off") as exc:
        resolve(config)
    assert exc.value.field == "intervene.enabled"
    config.write_text("[intervene]\nbootstrap = 10\n")
    with pytest.raises(OpcircuitsError, match="bootstrap"):
        resolve(config)
