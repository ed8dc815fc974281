"""The tuned lens end to end on a tiny LLaMA CODI model: `opcircuits lens train` on a store of
its states, the held-out KL against the logit lens, the refusals, and the analysis's section."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from opcircuits.cli import app
from opcircuits.codi import tuned_lens as tl
from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.lens_train import train_tuned_lens
from opcircuits.data.synth import synth
from opcircuits.errors import OpcircuitsError
from opcircuits.extract import extract
from opcircuits.files import sha256_file, write_json_atomic
from opcircuits.options import AnalyzeOptions, ExtractOptions, LensTrainOptions, SynthOptions
from opcircuits.report.analyze import analyze
from opcircuits.report.findings import findings
from opcircuits.store import open_store
from opcircuits.store.lens_file import LENS_JSON, LENS_WEIGHTS, read_lens_json

torch.set_num_threads(1)


def _store(tiny, problems: Path, out: Path, layers: str) -> Path:
    return extract(
        ExtractOptions(
            dataset=problems,
            out=out,
            checkpoint=tiny.checkpoint,
            base=str(tiny.base),
            device="cpu",
            layers=layers,
            max_new_tokens=2,
            batch_size=32,
            store_dtype="float32",
        )
    )


def _lens_options(tiny, store: Path, out: Path, **kw) -> LensTrainOptions:
    return LensTrainOptions(
        store=store, out=out, checkpoint=tiny.checkpoint, base=str(tiny.base), device="cpu", **kw
    )


def _cli_args(tiny, store: Path, out: Path) -> list[str]:
    return [
        *("lens", "train", "--store", str(store), "--out", str(out)),
        *("--checkpoint", str(tiny.checkpoint), "--base", str(tiny.base), "--device", "cpu"),
        *("--steps", "100"),
    ]


def _tiny_with_scaled_norms(root: Path, texts: list[str]):
    """A tiny LLaMA CODI checkpoint whose norms' weights are not all one (as in a trained model),
    so that normalizing the final layer's state a second time would change its logits."""
    from codi_factory import build_tiny_codi

    tiny = build_tiny_codi(root, "llama", texts, seed=1)
    path = tiny.checkpoint / "model.safetensors"
    tensors = load_file(str(path))
    rng = np.random.default_rng(0)
    norms = [k for k in tensors if k.endswith("norm.weight")]
    assert any(k.endswith("model.norm.weight") for k in norms), norms
    for key in norms:
        tensors[key] = rng.uniform(0.3, 3.0, tensors[key].shape).astype(np.float32)
    save_file(tensors, str(path))
    return tiny


@pytest.fixture(scope="module")
def lensed(tiny_texts, tmp_path_factory) -> SimpleNamespace:
    """60 synthetic problems through a tiny model (every layer, 0 … 4), a tuned lens trained on
    them by the command line, and a second store of the same problems without the final layer."""
    root = tmp_path_factory.mktemp("tuned-lens")
    tiny_llama = _tiny_with_scaled_norms(root / "model", tiny_texts)
    problems = synth(SynthOptions(out=root / "problems.jsonl", n=60, seed=3, split="test"))
    store = _store(tiny_llama, problems, root / "store", "all")
    partial = _store(tiny_llama, problems, root / "store-0-2", "0,2")
    lens = root / "lens"
    result = CliRunner().invoke(app, _cli_args(tiny_llama, store, lens))
    assert result.exit_code == 0, result.output
    return SimpleNamespace(
        tiny=tiny_llama, root=root, store=store, partial=partial, lens=lens, problems=problems
    )


def test_training_lowers_held_out_kl_below_the_logit_lens(lensed):
    lens = read_lens_json(lensed.lens, open_store(lensed.store).manifest)
    assert lens["layers"] == [0, 1, 2, 3, 4] and lens["final_layer"] == 4
    kl = {r["layer"]: r for r in lens["kl"]}
    for layer in (0, 1, 2, 3):
        assert kl[layer]["tuned"] < kl[layer]["logit"], kl[layer]
    assert kl[4] == {"layer": 4, "tuned": 0.0, "logit": 0.0}
    split = lens["split"]
    assert split["n_train"] + split["n_held_out"] == 60 and split["n_held_out"] == 12
    # The JSON's numbers are what its weights give on the held-out problems, recomputed here.
    store = open_store(lensed.store)
    translators, _ = tl.load_translators(lensed.lens, store.manifest)
    model, _ = load_codi(lensed.tiny.checkpoint, base=lensed.tiny.base, device="cpu")
    unembed = tl.Unembed(model)
    held = store.records["id"].isin(split["held_out_ids"]).to_numpy()
    hidden = torch.from_numpy(store.hidden()[held].reshape(-1, 5, 64))
    with torch.no_grad():
        target = torch.log_softmax(unembed(hidden[:, 4], final=True), dim=-1)
        got = tl.kl_to(target, unembed(translators(hidden[:, 1], 1), final=False)).mean()
    assert float(got) == pytest.approx(kl[1]["tuned"], rel=1e-5)
    assert not torch.equal(translators.weight[1], torch.eye(64))  # trained, not the identity


def test_identity_translator_reproduces_the_logit_lens(lensed):
    store = open_store(lensed.store)
    model, _ = load_codi(lensed.tiny.checkpoint, base=lensed.tiny.base, device="cpu")
    unembed = tl.Unembed(model)
    hidden = torch.from_numpy(store.hidden().reshape(-1, 5, 64))
    identity = tl.Translators([0, 1, 2, 3], 64)
    with torch.no_grad():
        for i in range(4):
            lens = unembed(identity(hidden[:, i], i), final=False)
            assert torch.equal(lens, unembed(hidden[:, i], final=False))
        rows = np.tile(np.arange(7), 60)
        m = tl.measure(identity, unembed, hidden, rows, 7, [0, 1, 2, 3], 4, batch_size=50)
        top = unembed(hidden[:, 4], final=True).topk(5).indices.reshape(60, 7, 5)
    assert np.array_equal(m.tuned, m.logit) and (m.logit > 0).all()
    # The final layer (already through the final norm) read by the LM head alone is the logit
    # lens extraction recorded for every problem and position.
    recorded = np.array(store.records["lens_top_ids"].map(lambda r: np.stack(r)).tolist())
    assert np.array_equal(top.numpy(), recorded)


def test_rerun_is_up_to_date_and_outputs_inside_inputs_are_refused(lensed):
    before = (lensed.lens / LENS_JSON).stat().st_mtime_ns, sha256_file(lensed.lens / LENS_WEIGHTS)
    result = CliRunner().invoke(app, _cli_args(lensed.tiny, lensed.store, lensed.lens))
    assert result.exit_code == 0, result.output
    after = (lensed.lens / LENS_JSON).stat().st_mtime_ns, sha256_file(lensed.lens / LENS_WEIGHTS)
    assert after == before
    for inside in (lensed.store / "lens", lensed.tiny.checkpoint / "lens", lensed.store):
        with pytest.raises(OpcircuitsError, match="out"):
            train_tuned_lens(_lens_options(lensed.tiny, lensed.store, inside))
        assert not (inside / LENS_JSON).exists()


def test_final_layer_missing_is_an_error_naming_the_layers(lensed):
    out = lensed.root / "lens-partial"
    with pytest.raises(OpcircuitsError) as err:
        train_tuned_lens(_lens_options(lensed.tiny, lensed.partial, out))
    assert "lacks the final layer 4" in str(err.value) and "layers [0, 2]" in str(err.value)
    assert "\n" not in str(err.value) and not out.exists()


def test_another_model_than_the_stores_is_refused(lensed, tiny_llama):
    out = lensed.root / "lens-other-model"
    with pytest.raises(OpcircuitsError, match="not the ones the store was extracted with"):
        train_tuned_lens(_lens_options(tiny_llama, lensed.store, out))
    assert not out.exists()


def test_a_lens_is_refused_for_another_store(lensed):
    other = open_store(lensed.partial).manifest
    with pytest.raises(OpcircuitsError, match="trained on another store"):
        tl.load_translators(lensed.lens, other)
    with pytest.raises(OpcircuitsError, match="trained on another store"):
        analyze(lensed.partial, lensed.root / "a-other", AnalyzeOptions(tuned_lens=lensed.lens))
    assert not (lensed.root / "a-other").exists()
    # The weights must be the ones the record names.
    copied = lensed.root / "lens-copy"
    shutil.copytree(lensed.lens, copied)
    tensors = load_file(str(copied / LENS_WEIGHTS))
    tensors["bias"][0, 0] += 1.0
    save_file(tensors, str(copied / LENS_WEIGHTS))
    with pytest.raises(OpcircuitsError, match="sha256 differs"):
        tl.load_translators(copied, open_store(lensed.store).manifest)


def test_non_finite_states_and_weights_are_refused(lensed, tmp_path):
    # A NaN in a shard's states (its header intact, so the store opens) stops training.
    bad = tmp_path / "store"
    shutil.copytree(lensed.store, bad)
    shard = bad / "hidden-00000.safetensors"
    with safe_open(str(shard), framework="numpy") as f:
        meta = f.metadata()
    tensors = load_file(str(shard))
    tensors["hidden"][3, 2, 1, 5] = np.nan
    save_file(tensors, str(shard), metadata=meta)
    with pytest.raises(OpcircuitsError, match="'synth_3' at position latent_2 layer 1 holds NaN"):
        train_tuned_lens(_lens_options(lensed.tiny, bad, tmp_path / "lens"))
    assert not (tmp_path / "lens").exists()
    # Non-finite translators are never written, and never applied.
    translators = tl.Translators([0, 1], 8)
    with torch.no_grad():
        translators.bias[1, 2] = float("inf")
    with pytest.raises(OpcircuitsError, match="bias.*NaN or inf"):
        tl.save_translators(translators, tmp_path)
    assert not (tmp_path / LENS_WEIGHTS).exists()
    copied = tmp_path / "lens-inf"
    shutil.copytree(lensed.lens, copied)
    tensors = load_file(str(copied / LENS_WEIGHTS))
    tensors["weight"][2, 0, 0] = np.inf
    save_file(tensors, str(copied / LENS_WEIGHTS))
    record = json.loads((copied / LENS_JSON).read_text())
    record["weights"]["sha256"] = sha256_file(copied / LENS_WEIGHTS)  # a consistent forgery
    write_json_atomic(copied / LENS_JSON, record)
    with pytest.raises(OpcircuitsError, match="weight.*NaN or inf"):
        tl.load_translators(copied, open_store(lensed.store).manifest)


def test_analyze_reports_the_tuned_lens(lensed):
    out = lensed.root / "analysis"
    options = AnalyzeOptions(
        folds=3,
        repeats=1,
        permutations=0,
        jobs=1,
        positions=["bot", "latent_1"],
        layers=[4],
        tuned_lens=lensed.lens,
    )
    report = analyze(lensed.store, out, options)
    lens = read_lens_json(lensed.lens)
    sec = report["tuned_lens"]
    for row, want in zip(sec["layers"], lens["kl"], strict=True):
        assert row["layer"] == want["layer"]
        assert row["tuned"] == pytest.approx(want["tuned"], abs=1e-6)
        assert row["gain"] == pytest.approx(want["logit"] - want["tuned"], abs=2e-6)
    best = max(lens["kl"][:4], key=lambda r: r["logit"] - r["tuned"])
    assert sec["best"]["layer"] == best["layer"] and sec["n_tuned_better"] == 4
    assert "tuned_lens_kl.png" in {f["file"] for f in report["figures"]}
    assert (out / "tuned_lens_kl.png").stat().st_size > 0
    summary = (out / "ANALYSIS_SUMMARY.md").read_text()
    assert "below the logit lens's at 4 of the 4 layers" in summary
    assert f"It gains most at layer {best['layer']}:" in summary
    # The sentence follows the numbers: a lens worse than the logit lens everywhere says so.
    worse = copy.deepcopy(report)
    for row in worse["tuned_lens"]["layers"]:
        row["tuned"], row["gain"] = row["logit"] + 1.0, -1.0
    worse["tuned_lens"].update(n_tuned_better=0, best=worse["tuned_lens"]["layers"][0])
    text = next(s for s in findings(worse) if s["title"] == "Tuned lens")["sentences"]
    assert "at 0 of the 4 layers" in text[0] and "gains at no layer" in text[1]
