"""Attribution patching's numbers and sentences: normalization, sign-flip tests with Holm, and
sentences that name exactly the confirmed components."""

from __future__ import annotations

import numpy as np

from opcircuits.analysis.attribution import (
    graddrop_estimate,
    normalized,
    sign_flip_p,
    spearman,
    verified,
)
from opcircuits.report.findings.attribution import attribution_sentences, component_name


def test_normalized_is_the_ratio_of_means():
    changes = np.array([[1.0, 0.0], [3.0, -2.0]])
    base, partner = np.array([-1.0, -3.0]), np.array([1.0, 3.0])  # mean gap 4
    assert np.allclose(normalized(changes, base, partner), [0.5, -0.25])
    assert np.isnan(normalized(changes, base, base)).all()  # no clean difference: no ratio


def test_sign_flips_separate_a_consistent_effect_from_noise():
    rng = np.random.default_rng(0)
    effect = 1.0 + 0.1 * rng.standard_normal(40)  # every pair moves the same way
    noise = rng.choice([-1.0, 1.0], 40)  # symmetric, mean ≈ 0
    p = sign_flip_p(np.stack([effect, noise], 1), flips=2000, seed=1)
    assert p[0] < 0.001 and p[1] > 0.2
    tests = verified(np.stack([effect, noise], 1), 2000, 1, 0.05)
    assert [t["confirmed"] for t in tests] == [True, False]
    assert tests[0]["p_holm"] >= tests[0]["p"]


def test_spearman_needs_variation():
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 9.0])) == 1.0
    assert spearman(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0])) is None


def test_sentences_name_the_confirmed_components_only():
    def comp(kind, segment, layer, head, token, exact, confirmed):
        return {"kind": kind, "segment": segment, "layer": layer, "head": head, "token": token,
                "estimate": exact, "exact": exact, "p": 0.001, "p_holm": 0.002,
                "confirmed": confirmed}  # fmt: skip

    result = {
        "n_pairs": 40, "n_components": 100, "alpha": 0.05,
        "check": {"n_verified": 2, "spearman": 0.93, "components": [
            comp("mlp", "answer", 4, -1, None, 0.7, True),
            comp("head", "latent_1", 2, 3, None, 0.01, False),
        ]},
    }  # fmt: skip
    text = " ".join(attribution_sentences(result))
    assert "mlp 4 at answer (0.70" in text and "head 2.3" not in text
    assert "ρ with the exact effects is 0.93" in text
    assert component_name({"kind": "resid", "segment": "question", "layer": 0, "token": -3}) == (
        "resid 0 at question token −3"
    )


def test_graddrop_averages_absolute_estimates_over_the_other_blocks():
    """GradDrop's combination: |estimate| with each block dropped, summed, over L − 1 for a head
    or MLP (its own block's drop gives it 0) and over L for a residual position; the sign is the
    plain estimate's. Paths of opposite sign that cancel in the plain estimate count by their
    size once each is dropped."""
    plain = np.array([0.0, -0.5, 0.2])
    per_block = np.array([[0.0, -0.6, 0.2], [0.3, -0.4, 0.2], [-0.3, 0.0, 0.2]])  # L = 3
    own = np.array([True, True, False])
    got = graddrop_estimate(plain, per_block, own)
    np.testing.assert_allclose(got, [0.3, -0.5, 0.2])  # a plain 0 keeps its size
    plain = np.array([1e-3])  # a cancelling path: tiny plain estimate, large per-block ones
    got = graddrop_estimate(plain, np.array([[0.0], [0.4], [-0.4]]), np.array([True]))
    np.testing.assert_allclose(got, [0.4])
