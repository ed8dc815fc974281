"""DAS on toy networks whose mechanism is known by construction: training finds a planted
direction (a random subspace does not), and the illusion diagnostics flag Makelov et al.'s
dormant-direction illusion while passing the genuine direction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from opcircuits.analysis import das as stats
from opcircuits.codi.interventions import das as core
from opcircuits.errors import OpcircuitsError

torch.set_num_threads(1)
D = 16


def planted(n: int, seed: int):
    """States h = A z, z = (x, nuisance…): the variable x ∈ {−1, +1} lies along u = A[:, 0]
    only; the readout's answer is sign(u · h) (nuisance directions vary 3× as much)."""
    gen = torch.Generator().manual_seed(seed)
    A, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(99)))
    x = torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1
    z = torch.cat([x[:, None], 3 * torch.randn(n, D - 1, generator=gen)], 1)
    return z @ A.T, x, A[:, 0]


def readout(h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Two-class logits from the planted direction: class 1 iff u · h > 0."""
    s = 4 * (h @ u)
    return torch.stack([-s, s], -1)


def pairs(n: int, seed: int):
    """(base, source) states whose variables differ (equal-answer pairs left out, as IIA does)."""
    h, x, u = planted(2 * n, seed)
    keep = x[:n] != x[n:]
    return h[:n][keep], h[n:][keep], (x[n:][keep] > 0).long(), u


def toy_iia(basis, base, source, target, u, complement=False) -> float:
    edited = core.interchange(basis, source, complement)(base.clone())
    return float((readout(edited, u).argmax(-1) == target).float().mean())


def test_training_finds_the_planted_direction_and_a_random_subspace_does_not():
    base, source, target, u = pairs(400, seed=0)
    batches = [(base[i : i + 32], source[i : i + 32], target[i : i + 32])
               for i in range(0, len(base), 32)]  # fmt: skip
    sub = core.Subspace(D, 1, seed=3)

    def loss(batch, edit):
        b, _, t = batch
        return torch.nn.functional.cross_entropy(readout(edit(b.clone()), u), t)

    history = core.fit(sub, batches, loss, lambda b: b[1], epochs=30, lr=0.05, seed=0)
    assert history[-1] < history[0]
    W = sub.basis().detach()
    assert torch.allclose(W @ W.T, torch.eye(1), atol=1e-5)  # orthonormal throughout
    test_base, test_source, test_target, _ = pairs(400, seed=1)  # held-out pairs
    assert toy_iia(W, test_base, test_source, test_target, u) >= 0.9
    assert abs(float(W[0] @ u)) > 0.9  # the planted direction itself, up to sign
    R = core.random_basis(D, 1, torch.Generator().manual_seed(5))
    assert toy_iia(R, test_base, test_source, test_target, u) < 0.5
    # Swapping everything but the planted direction leaves the answer the base's.
    assert toy_iia(W, test_base, test_source, test_target, u, complement=True) < 0.1


def test_the_full_subspace_is_the_whole_patch_and_the_complement_keeps_the_base():
    base, source, _, _ = pairs(50, seed=2)
    eye = torch.eye(D)
    assert torch.allclose(core.interchange(eye, source)(base.clone()), source, atol=1e-5)
    assert torch.allclose(core.interchange(eye, source, True)(base.clone()), base, atol=1e-5)
    R = core.random_basis(D, 4, torch.Generator().manual_seed(0))
    assert torch.allclose(R @ R.T, torch.eye(4), atol=1e-5)


def test_the_dormant_direction_illusion_is_flagged_and_the_genuine_direction_is_not():
    """Makelov et al.'s toy: h = (x, x, 0). The output reads h1 + 2·h3: h1 carries x; h2 is a
    copy of x the output never reads (disconnected, correlated); h3 is read but always 0
    (dormant). Patching along v = (e2 + e3)/√2 succeeds — the disconnected part brings x_src − x,
    the dormant part writes it where the output reads — though neither part is the model's
    variable; the genuine direction (e1 + e2)/√2 lies where the states vary."""
    x = np.array([-1.0, 1.0] * 20)
    states = np.stack([x, x, np.zeros_like(x)], 1)
    h = torch.tensor(states, dtype=torch.float32)
    src = h.flip(0)  # every partner has the other x

    def answers(edited):
        return torch.sign(edited[:, 0] + 2 * edited[:, 2])

    target = torch.sign(src[:, 0])
    illusion = torch.tensor([[0.0, 1.0, 1.0]]) / 2**0.5
    genuine = torch.tensor([[1.0, 1.0, 0.0]]) / 2**0.5
    for basis in (illusion, genuine):
        assert bool((answers(core.interchange(basis, src)(h.clone())) == target).all())
    flagged = stats.pc_diagnostics(states, illusion.numpy())
    ok = stats.pc_diagnostics(states, genuine.numpy())
    assert flagged["dormant"] and flagged["in_span"] == pytest.approx(0.25)
    assert flagged["variance_explained"] == pytest.approx(0.25)
    assert not ok["dormant"] and ok["in_span"] == pytest.approx(1.0)
    assert ok["variance_explained"] == pytest.approx(1.0)
    assert ok["top_pc_projection"][0] == pytest.approx(1.0)


def test_iia_counts_and_the_paired_test_against_the_control():
    hits = np.array([True] * 18 + [False] * 2)
    control = np.array([False] * 18 + [True] * 2)
    got = stats.iia(hits)
    assert (got["iia"], got["n"], got["hits"]) == (0.9, 20, 18)
    assert got["low"] < 0.9 < got["high"]
    test = stats.paired_test(hits, control)
    assert (test["better"], test["worse"]) == (18, 2) and test["p"] < 0.001
    assert stats.paired_test(control, hits)["p"] > 0.99
    assert stats.paired_test(hits, hits)["p"] == 1.0  # no discordant pair: no evidence
    assert list(stats.follows([1.0, None, 3.0], [1.0, 2.0, 4.0])) == [True, False, False]


def test_non_finite_inputs_are_refused():
    with pytest.raises(ValueError):
        stats.pc_diagnostics(np.array([[np.nan, 1.0], [0.0, 1.0]]), np.array([[1.0, 0.0]]))
    with pytest.raises(OpcircuitsError, match="dimension"):
        core.Subspace(4, 5)


def test_pairs_with_equal_answers_are_left_out_and_counted(tmp_path):
    import json

    from opcircuits.data.synth import synth
    from opcircuits.intervene.das import _inputs, _split
    from opcircuits.options import DasOptions, SynthOptions

    data = tmp_path / "synth.jsonl"
    synth(SynthOptions(out=data, n=6, seed=1, split="test"))
    pairs = tmp_path / "synth.pairs.jsonl"
    problems = [json.loads(line) for line in data.read_text().splitlines()]
    partners = [json.loads(line) for line in pairs.read_text().splitlines()]
    # The first partner gets its base's answer: following it would look like no change at all.
    partners[0] = {**partners[0], "final_answer": problems[0]["final_answer"],
                   "final_value": problems[0]["final_value"]}  # fmt: skip
    pairs.write_text("".join(json.dumps(p) + "\n" for p in partners))
    pair_set, steps, same, _ = _inputs(DasOptions(data=data, out=tmp_path / "o"), pairs)
    assert same == 1 and len(pair_set.base) == len(steps) == 5
    assert all(
        pair_set.problems[b].gold_value != pair_set.problems[s].gold_value
        for b, s in zip(pair_set.base, pair_set.source, strict=True)
    )
    assert sorted(steps) == sorted(p["changed_step"] for p in problems[1:])
    held = _split(5, 0.5, seed=0)
    assert 1 <= held.sum() <= 4 and (held == _split(5, 0.5, seed=0)).all()
