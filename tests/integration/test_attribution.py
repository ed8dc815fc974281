"""Attribution patching (`opcircuits attribute`) on tiny CODI models: its gradient through the
whole latent loop is the true derivative, it ranks components as exact patching does where the
model is near-linear, and the command writes its files together and refuses unsafe outputs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.interventions import attribution as at
from opcircuits.errors import OpcircuitsError
from opcircuits.intervene.attribute import _pairs, attribute
from opcircuits.options import AttributeOptions


def _synth(tmp_path_factory, n: int):
    from opcircuits.data.synth import SynthOptions, synth

    out = tmp_path_factory.mktemp(f"synth{n}") / "s.jsonl"
    synth(SynthOptions(out=out, n=n, seed=1))
    return out


@pytest.fixture(scope="module")
def synth6(tmp_path_factory):
    return _synth(tmp_path_factory, 6)


def _load(tiny):
    model, tok = load_codi(str(tiny.checkpoint), base=str(tiny.base), device="cpu")
    return model.eval(), tok


def _layout(model, tok, data, n=None):
    opts = AttributeOptions(data=data, out=data.parent / "unused", max_pairs=n)
    pairs = _pairs(opts, data.with_name("s.pairs.jsonl"))
    pairs = [p for p in pairs if at.scoring(model, tok, *p) is not None]
    assert len(pairs) >= 4
    return at.make_pairs(model, tok, pairs)


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_estimate_is_the_derivative_through_the_latent_loop(arch, request, synth6):
    """A finite difference of the exact patch (moving a component 1e-3 of the way to the
    partner's) equals the estimate: for a first-thought head, whose effect on the answer passes
    through every later thought's fed-back vector and keys, and for the other kinds."""
    model, tok = _load(request.getfixturevalue(arch))
    P = _layout(model, tok, synth6)
    comps, r = at.attribute(model, P)
    L, K = model.num_layers, model.config.num_latent
    chosen = [
        at.Component("head", "latent_1", 1, 2),
        at.Component("mlp", "latent_2", L),
        at.Component("resid", f"latent_{K - 1}", 1),
        at.Component("mlp", "question", 1),
        at.Component("head", "answer", L, 0),
    ]
    eps = 1e-3
    fd = (at.exact_effects(model, P, chosen, fraction=eps) - r["base"][:, None]) / eps
    est = torch.stack([r["estimate"][:, comps.index(c)] for c in chosen], 1)
    assert est.abs().max() > 1e-4  # something to compare
    scale = est.abs().max()
    assert torch.allclose(est, fd, atol=0.02 * float(scale) + 1e-4), (est, fd)
    # the first thought reaches the answer only through the loop: a nonzero gradient there
    assert est[:, 0].abs().max() > 0


def test_graddrop_drops_exactly_the_gradient_through_one_block(tiny_llama, synth6):
    """With block l's gradient dropped: l's own heads and MLPs get 0 (their only path to the
    metric is through l's contribution); a last-block head at the answer, whose path crosses no
    other block, keeps its plain estimate under every other drop; the plain estimate is
    unchanged by asking for GradDrop (the gates are identities then); and a first-thought MLP,
    whose effect crosses every later block, changes under some drop."""
    model, tok = _load(tiny_llama)
    P = _layout(model, tok, synth6)
    comps, plain = at.attribute(model, P)
    comps2, r = at.attribute(model, P, graddrop=True)
    assert comps2 == comps
    assert torch.allclose(r["estimate"], plain["estimate"], rtol=1e-5, atol=1e-7)
    L = model.num_layers
    assert r["dropped"].shape == (L, *plain["estimate"].shape)
    for layer in range(1, L + 1):
        own = [i for i, c in enumerate(comps) if c.kind != "resid" and c.layer == layer]
        assert (r["dropped"][layer - 1][:, own] == 0).all()
    last = comps.index(at.Component("head", "answer", L, 1))
    for layer in range(1, L):
        assert torch.allclose(r["dropped"][layer - 1][:, last], r["estimate"][:, last], atol=1e-6)
    early = comps.index(at.Component("mlp", "latent_1", 1))
    moved = (r["dropped"][1:, :, early] - r["estimate"][:, early]).abs().max()
    assert moved > 1e-3 * float(r["estimate"][:, early].abs().max()) + 1e-9


def test_full_patch_of_the_last_residual_gives_the_partners_metric(tiny_llama, synth6):
    """Exact patching is a real patch: replacing the final block's output at the scored answer
    token by the partner's reproduces the partner's metric in every pair."""
    model, tok = _load(tiny_llama)
    P = _layout(model, tok, synth6)
    _, r = at.attribute(model, P)
    t = int(P.score_at[0])
    same = (P.score_at == t).cpu()
    got = at.exact_effects(model, P, [at.Component("resid", "answer", model.num_layers, token=t)])
    assert torch.allclose(got[same, 0], r["partner"][same], atol=1e-4)


def test_estimates_rank_like_exact_patching_on_a_near_linear_model(tmp_path_factory, tiny_texts):
    """Spearman ρ ≥ 0.9 between AtP and exact patching over the top 50 components after the
    question (bot, thoughts, answer), on 30 problems' pairs of a tiny LLaMA with small weights
    (init std 0.02): there the loop is near-linear, so the first-order estimate is what a correct
    implementation must reproduce; the question's token swaps are left out, as they are large
    perturbations where AtP is known to be only first-order (measured in the docs)."""
    from codi_factory import build_tiny_codi

    tiny = build_tiny_codi(tmp_path_factory.mktemp("lin"), "llama", tiny_texts, init_std=0.02)
    model, tok = _load(tiny)
    P = _layout(model, tok, _synth(tmp_path_factory, 30))
    comps, r = at.attribute(model, P)
    den = float(r["partner"].mean() - r["base"].mean())
    est = r["estimate"].mean(0).numpy() / den
    late = [i for i, c in enumerate(comps) if c.segment != "question"]
    top = sorted(late, key=lambda i: -abs(est[i]))[:50]
    exact = (at.exact_effects(model, P, [comps[i] for i in top]).mean(0) - r["base"].mean()) / den
    from scipy.stats import spearmanr

    rho = spearmanr(est[top], exact.numpy()).statistic
    assert rho >= 0.9, rho


def test_attribute_writes_rows_manifest_and_figure(tiny_llama, synth6, tmp_path):
    out = tmp_path / "att"
    opts = AttributeOptions(
        data=synth6, out=out, checkpoint=tiny_llama.checkpoint, base=str(tiny_llama.base),
        device="cpu", batch_size=3, verify=6, flips=500,
    )  # fmt: skip
    result = json.loads(attribute(opts).read_text(encoding="utf-8"))
    rows = pd.read_parquet(out / "attribution.parquet")
    assert len(rows) == result["n_components"]
    assert set(rows["kind"]) == {"head", "mlp", "resid"}
    K = tiny_llama.config.num_latent
    assert {"question", "bot", f"latent_{K}", "answer"} <= set(rows["segment"])
    verified = rows.dropna(subset=["exact"])
    assert len(verified) == 6 == result["check"]["n_verified"]
    assert sorted(verified["rank"]) == list(range(1, 7))
    assert np.isfinite(rows["estimate"]).all()
    assert (out / "attribution.png").is_file()
    assert result["sentences"] and result["figures"][0]["file"] == "attribution.png"
    pairs = _pairs(opts, synth6.with_name("s.pairs.jsonl"))
    assert result["n_pairs"] + result["n_dropped_same_answer"] == len(pairs)
    # with GradDrop the ranking and the check use its estimate; plain AtP's stays beside it
    gd = json.loads(attribute(dataclasses.replace(opts, out=tmp_path / "gd", graddrop=True))
                    .read_text(encoding="utf-8"))  # fmt: skip
    gd_rows = pd.read_parquet(tmp_path / "gd" / "attribution.parquet")
    assert gd["graddrop"] and gd["n_dropped_same_answer"] == result["n_dropped_same_answer"]
    assert np.allclose(gd_rows["estimate_atp"], rows["estimate"], atol=1e-6)
    assert (np.sign(gd_rows["estimate"]) * np.sign(gd_rows["estimate_atp"]) >= 0).all()
    assert not np.allclose(gd_rows["estimate"], rows["estimate"])
    # the analysis report's Causal tests section reads it (`analyze --attribution`)
    from synthetic_store import make_store

    from opcircuits.options import AnalyzeOptions
    from opcircuits.report.analyze import analyze

    store = make_store(tmp_path / "store", "noise")
    report = analyze(store, tmp_path / "report", AnalyzeOptions(
        attribution=out, folds=3, repeats=1, permutations=0, jobs=1))  # fmt: skip
    assert report["attribution"]["check"]["n_verified"] == 6
    summary = (tmp_path / "report" / "ANALYSIS_SUMMARY.md").read_text(encoding="utf-8")
    causal = summary[summary.index("Causal tests") :]
    assert "Attribution patching" in causal and result["sentences"][0] in causal
    with pytest.raises(OpcircuitsError, match="no attribution.json"):
        analyze(store, tmp_path / "r2", AnalyzeOptions(attribution=tmp_path / "store", folds=3))
    # a rerun replaces our own files; a file of the user's in the folder is refused, untouched
    attribute(opts)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OpcircuitsError, match="not written by opcircuits"):
        attribute(opts)
    assert (out / "notes.txt").read_text() == "mine"


def test_attribute_refuses_out_inside_the_checkpoint(tiny_llama, synth6):
    opts = AttributeOptions(
        data=synth6, out=tiny_llama.checkpoint / "att", checkpoint=tiny_llama.checkpoint,
        base=str(tiny_llama.base), device="cpu",
    )  # fmt: skip
    with pytest.raises(OpcircuitsError, match="inside the input"):
        attribute(opts)
    assert not (tiny_llama.checkpoint / "att").exists()
