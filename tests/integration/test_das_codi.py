"""DAS on tiny CODI checkpoints: the gradient path scores what the engine scores, a self-swap
changes no answer, training moves only the subspace and lowers its loss, and `opcircuits das`
writes its two files (and refuses an output inside its inputs, and non-finite states)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_runner import run_cli

from opcircuits.codi import interventions as iv
from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.interventions import das as core
from opcircuits.data.synth import synth
from opcircuits.errors import OpcircuitsError
from opcircuits.intervene.das import _inputs
from opcircuits.options import DasOptions, SynthOptions

torch.set_num_threads(1)
SITE = iv.Site(1, 1)  # latent_1 after block 1


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """12 synthetic problems with their partners (one operation changed each)."""
    out = tmp_path_factory.mktemp("das-data") / "synth.jsonl"
    synth(SynthOptions(out=out, n=12, seed=3, split="test"))
    return out


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_gpt2"])
def tiny(request, pairs_file, tmp_path_factory):
    spec = request.getfixturevalue(request.param)
    model, tok = load_codi(spec.checkpoint, base=spec.base, device="cpu")
    options = DasOptions(data=pairs_file, out=tmp_path_factory.mktemp("unused") / "o")
    pair_set, steps, _, _ = _inputs(options, pairs_file.with_name("synth.pairs.jsonl"))
    engine = iv.Engine(model, tok, max_new_tokens=8)
    states = core.site_states(engine, pair_set.problems, SITE, 4)
    return engine, pair_set, states


def test_the_gradient_path_scores_what_the_engine_scores(tiny):
    """The training loss with the whole state swapped in equals −(the partner's answer
    log-probability) the engine's inference path measures under the same intervention."""
    engine, pairs, states = tiny
    idx = list(range(len(pairs.base)))
    src = states[pairs.source]
    eye = torch.eye(engine.model.hidden_size)
    for p in core.prefixes(engine, pairs, idx, 4):
        with torch.no_grad(), engine:
            loss = float(core.answer_loss(engine, p, SITE, core.interchange(eye, src[p.rows])))
        with torch.inference_mode(), engine:
            b = engine.open_batch([pairs.problems[pairs.base[i]] for i in idx], list(p.batch.rows),
                                  int(p.target.shape[1]))  # fmt: skip
            engine.run_clean(b, [0])
            edit = core.interchange(eye, src[p.rows])
            engine.latents(b, SITE.step, engine.K, {SITE.step: {SITE.layer: edit}})
            gold = [engine.gold_ids(pairs.problems[pairs.base[i]].gold) for i in p.rows]
            other = [engine.gold_ids(pairs.problems[pairs.source[i]].gold) for i in p.rows]
            answers = engine.decode(b, engine.K, gold, source=other)
        assert loss == pytest.approx(-np.mean([a.logp_source for a in answers]), rel=1e-4)


def test_swapping_in_the_base_itself_changes_no_answer(tiny):
    engine, pairs, states = tiny
    idx = list(range(len(pairs.base)))
    clean = core.evaluate_codi(engine, pairs, idx, SITE, torch.zeros(1, engine.model.hidden_size),
                               states[pairs.source], batch_size=4)  # fmt: skip
    R = core.random_basis(engine.model.hidden_size, 3, torch.Generator().manual_seed(0))
    for basis in (None, R):
        got = core.evaluate_codi(engine, pairs, idx, SITE, basis, states[pairs.base], batch_size=4)
        assert got == clean


def test_training_moves_only_the_subspace_and_lowers_its_loss(tiny):
    engine, pairs, states = tiny
    before = [p.detach().clone() for p in engine.model.parameters()]
    idx = list(range(len(pairs.base)))
    W, losses = core.train_codi(
        engine, pairs, idx, SITE, 4, states[pairs.source], epochs=4, lr=0.1, batch_size=4, seed=0
    )
    assert losses[-1] < losses[0]
    assert torch.allclose(W @ W.T, torch.eye(4), atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(before, engine.model.parameters(), strict=True))
    assert all(p.grad is None for p in engine.model.parameters())


def test_non_finite_partner_states_are_an_error(tiny):
    engine, pairs, states = tiny
    bad = states[pairs.source].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(OpcircuitsError, match="NaN or inf"):
        core.evaluate_codi(engine, pairs, [0], SITE, None, bad, batch_size=4)


def test_the_command_writes_das_json_and_the_subspaces(tiny_llama, pairs_file, tmp_path):
    out = tmp_path / "das"
    args = ("das", "--checkpoint", str(tiny_llama.checkpoint), "--base", str(tiny_llama.base),
            "--data", str(pairs_file), "--sites", "latent_1@1", "--dims", "1,2", "--steps", "1",
            "--epochs", "1", "--batch-size", "4", "--max-new-tokens", "8",
            "--device", "cpu")  # fmt: skip
    code, stdout, stderr = run_cli(*args, "--out", str(out))
    assert code == 0, stderr
    record = json.loads((out / "das.json").read_text())
    # (beside them, the list of the files we wrote, which a rerun may replace)
    assert sorted(p.name for p in out.iterdir()) == [
        ".opcircuits-files.json", "das.json", "das.safetensors",
    ]  # fmt: skip
    assert [r["r"] for r in record["results"]["model"]] == [1, 2]
    assert [r["r"] for r in record["results"]["reinit"]] == [1, 2]
    row = record["results"]["model"][0]
    for key in ("das", "random", "complement", "full"):
        assert (
            0 <= row[key]["iia"] <= 1
            and row[key]["n"] == record["pairs"]["by_step"]["1"] - (row["n_train"])
        )
    assert 0 <= row["diagnostics"]["in_span"] <= 1 + 1e-9
    assert len(record["findings"]) == 2 and "latent_1@1" in stdout
    from safetensors.torch import load_file

    weights = load_file(str(out / "das.safetensors"))
    assert weights["model/latent_1@1/step1/r2"].shape == (2, 64)
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())
    # An output inside the checkpoint's folder is refused before anything is written.
    inside = tiny_llama.checkpoint / "das-out"
    code, _, stderr = run_cli(*args, "--out", str(inside))
    assert code != 0 and "inside the input" in stderr and not inside.exists()


def test_at_the_fed_back_input_a_self_swap_keeps_the_position_embedding(tiny):
    """Layer 0 holds the fed-back vector (+ GPT-2's position embedding): the states DAS swaps
    there are the vectors alone, so swapping in the base's own changes no answer."""
    engine, pairs, states = tiny
    site = iv.Site(1, 0)
    own = core.site_states(engine, pairs.problems, site, 4)[pairs.base]
    idx = list(range(len(pairs.base)))
    clean = core.evaluate_codi(engine, pairs, idx, site, torch.zeros(1, own.shape[1]), own,
                               batch_size=4)  # fmt: skip
    assert core.evaluate_codi(engine, pairs, idx, site, None, own, batch_size=4) == clean
