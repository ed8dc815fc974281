"""Concept erasure (`erase`, `erase_random`) on tiny models: after LEACE at a site a probe of the
category from the edited states is at chance while before it was near perfect, a random
subspace of the same rank leaves it decodable, the edit is finite and [B, D], its fit never saw
the edited problem's label, and the sweep runs both kinds and writes their rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

from opcircuits.codi import interventions as iv
from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.interventions import Intervention, Site, erasure
from opcircuits.errors import OpcircuitsError
from opcircuits.options import InterveneOptions

torch.set_num_threads(1)
N = 200  # problems: 100 per category
WORDS = {"add": "plus", "mul": "times"}


def labelled(gsm8k_dir, n=N) -> list[iv.Problem]:
    """GSM8K questions, half prefixed "plus plus plus plus", half "times …": a category that a
    random model's states carry strongly at every site reading the question."""
    with open(gsm8k_dir / "test.jsonl", encoding="utf-8") as fh:
        questions = [json.loads(line)["question"] for line, _ in zip(fh, range(n), strict=False)]
    cats = ["add", "mul"] * (n // 2)
    return [
        iv.Problem(f"p{i}", (WORDS[c] + " ") * 4 + q, "1", c)
        for i, (q, c) in enumerate(zip(questions, cats, strict=True))
    ]


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_gpt2"])
def erased(request, gsm8k_dir):
    spec = request.getfixturevalue(request.param)
    model, tok = load_codi(spec.checkpoint, base=spec.base, device="cpu")
    problems = labelled(gsm8k_dir)
    engine = iv.Engine(model, tok, max_new_tokens=2)
    layers = [0, 1]
    batches = iv.plan_batches([engine.prompt_length(p.question) for p in problems], 50)
    ref = iv.clean_reference(engine, problems, batches, layers)
    sites = [Site(1, 0), Site(2, 1)]  # the fed-back input of thought 1, block 1 of thought 2
    ivs = [Intervention(k, (s,)) for s in sites for k in ("erase", "erase_random")]
    out = {}
    for batch in iv.run_interventions(engine, problems, batches, ivs, ref, record=True):
        for o in batch:
            out[o.intervention.label, o.problem] = o
    return problems, ref, sites, out


def states(out, label, site, ref, n=N) -> np.ndarray:
    li = ref.layer_index(site.layer)
    return np.stack([out[label, i].states[site.step, li].numpy() for i in range(n)])


def probe(X: np.ndarray, y: np.ndarray) -> float:
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(LogisticRegression(max_iter=5000), X, y, cv=cv).mean())


# Chance is 0.5 (two balanced categories). Under no linear information a probe's accuracy over
# N = 200 held-out states has standard deviation ≤ sqrt(0.25 / 200) ≈ 0.035: 0.5 + 3 sd ≈ 0.61
# bounds "at chance". Cross-validating a probe on states erased by folds often scores *below*
# 0.5 (each fit equalizes the class means of data the probe's folds overlap), which is no
# decodable information either, so only the upper bound is asserted.
AT_CHANCE = 0.5 + 3 * (0.25 / N) ** 0.5
DECODABLE = 0.8  # well above that bound: 0.5 + 8.5 sd


def test_erase_puts_the_probe_at_chance_and_the_random_subspace_does_not(erased):
    problems, ref, sites, out = erased
    y = np.array([p.category for p in problems])
    for site in sites:
        before = probe(states(out, "none", site, ref), y)
        after = probe(states(out, f"erase {site.name}", site, ref), y)
        control = probe(states(out, f"erase_random {site.name}", site, ref), y)
        assert before >= DECODABLE, (site, before)
        assert after <= AT_CHANCE, (site, before, after)
        assert control >= DECODABLE, (site, control)
        e = ref.erasers[site.step, ref.layer_index(site.layer)]
        assert all(r == 1 for r in e.rank)  # two categories: a rank-1 erasure (and control)


def test_the_edit_is_finite_keeps_B_by_D_and_never_fits_on_the_edited_problem(erased):
    problems, ref, sites, out = erased
    site = sites[1]
    li = ref.layer_index(site.layer)
    for kind in ("erase", "erase_random"):
        rows = [3, 4, 11]
        edit = iv.TABLE[kind].edit(Intervention(kind, (site,)), ref, site.step, li, rows,
                                   torch.float32, torch.device("cpu"))  # fmt: skip
        h = ref.content(rows, site.step, li)
        got = edit(h)
        assert got.shape == h.shape == (3, h.shape[1]) and torch.isfinite(got).all()
        assert not torch.equal(got, h)
    # Each problem's eraser was fitted on the other folds only: refitting without its fold
    # reproduces its edit, and the fit on all problems (with its label) edits it differently.
    fold = ref.erase_fold
    assert sorted(set(fold[: len(problems)].tolist())) == list(range(erasure.FOLDS))
    x = ref.content(list(range(len(problems))), site.step, li).double()
    labels = [p.category for p in problems]
    e = ref.erasers[site.step, li]
    i = 7
    keep = fold[: len(problems)] != fold[i]
    z = torch.tensor(np.eye(2)[[0 if c == "add" else 1 for c in labels]])[torch.from_numpy(keep)]
    left, right, mean = erasure._leace(x[torch.from_numpy(keep)], z)
    mine = x[i] - ((x[i] - mean) @ right) @ left.T
    edited = x[i] - ((x[i] - e.mean[fold[i]]) @ e.leace[1][fold[i]]) @ e.leace[0][fold[i]].T
    assert torch.allclose(mine, edited, atol=1e-8)
    everyone = x[i] - ((x[i] - e.mean[-1]) @ e.leace[1][-1]) @ e.leace[0][-1].T
    assert not torch.allclose(everyone, edited, atol=1e-6)


def test_the_fit_on_the_reference_rows_equalizes_their_class_means(erased):
    """LEACE's guarantee on the rows it was fitted on (index FOLDS: all reference rows): the
    edited states' class means coincide, so no linear classifier beats a constant there."""
    problems, ref, sites, _ = erased
    site = sites[0]
    li = ref.layer_index(site.layer)
    e = ref.erasers[site.step, li]
    x = ref.content(list(range(len(problems))), site.step, li).double()
    edited = x - ((x - e.mean[-1]) @ e.leace[1][-1]) @ e.leace[0][-1].T
    y = np.array([p.category for p in problems])
    gap = edited[y == "add"].mean(0) - edited[y == "mul"].mean(0)
    before = x[y == "add"].mean(0) - x[y == "mul"].mean(0)
    assert float(gap.norm()) < 1e-6 * float(before.norm())


def test_erase_needs_every_category(gsm8k_dir):
    problems = labelled(gsm8k_dir, 10)
    problems[3] = iv.Problem("p3", problems[3].question, "1", None)
    ref = iv.Reference(problems, torch.randn(10, 2, 1, 8), [0], list(range(10)))
    with pytest.raises(OpcircuitsError, match="category"):
        erasure.site_erasers(ref, 1, 0)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    from opcircuits.data.synth import SynthOptions, synth

    out = tmp_path_factory.mktemp("synth") / "s.jsonl"
    synth(SynthOptions(out=out, n=12, seed=2))
    return out


def test_the_cli_runs_erase_and_its_control_and_writes_their_rows(tiny_llama, synth_data, tmp_path):
    from cli_runner import run_cli

    out = tmp_path / "out"
    code, _, err = run_cli(
        "intervene", "--data", str(synth_data), "--out", str(out),
        "--checkpoint", str(tiny_llama.checkpoint), "--base", str(tiny_llama.base),
        "--kinds", "erase", "--sites", "bot@1,latent_1@0", "--max-new-tokens", "4",
        "--shard-size", "6", "--batch-size", "6", "--bootstrap", "100", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    table = pd.read_parquet(out / "interventions.parquet")
    labels = ["erase bot@1", "erase_random bot@1", "erase latent_1@0", "erase_random latent_1@0"]
    assert table["intervention"].drop_duplicates().tolist() == ["none", *labels]
    assert (table.groupby("intervention").size() == 12).all()
    erase = table[table["kind"] == "erase"]
    assert set(erase["position"]) == {"bot", "latent_1"} and erase["logp_gold"].notna().all()
    result = json.loads((out / "interventions.json").read_text())
    assert [r["site"] for r in result["erasure"]] == ["bot@1", "latent_1@0"]
    said = [x for x in result["findings"]["sentences"] if x.startswith("`latent_1@0`")]
    assert len(said) == 1 and "no probe of this cell" in said[0]


def test_erase_is_not_in_the_default_sweep_and_erase_random_alone_is_refused():
    assert "erase" not in InterveneOptions(data="d.jsonl", out="o").kinds
    with pytest.raises(OpcircuitsError, match="erase_random"):
        InterveneOptions(data="d.jsonl", out="o", kinds="erase_random")
