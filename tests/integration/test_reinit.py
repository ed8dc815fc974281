"""The random-model baseline: `extract --reinit SEED` on a tiny released-layout checkpoint, and
`run --mode full` wiring the step-matched sample and that baseline into the analysis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_extract import _options

from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.reinit import reinitialize
from opcircuits.errors import OpcircuitsError
from opcircuits.extract import extract
from opcircuits.store import open_store


def test_reinitialize_redraws_every_weight_seeded(tiny_llama) -> None:
    def load():
        return load_codi(tiny_llama.checkpoint, base=tiny_llama.base, device="cpu")[0]

    trained = load()
    a, b, c = reinitialize(load(), 1), reinitialize(load(), 1), reinitialize(load(), 2)
    sa, sb, sc, st = a.state_dict(), b.state_dict(), c.state_dict(), trained.state_dict()
    assert sa.keys() == st.keys()
    for key in st:
        assert torch.equal(sa[key], sb[key]), key  # same seed, same model
        if st[key].dim() >= 2:
            assert not torch.equal(sa[key], st[key]), key  # no trained matrix survives
            assert not torch.equal(sa[key], sc[key]), key
    # Tied input and output embeddings stay tied.
    lm = a.lm
    if lm.config.tie_word_embeddings:
        assert lm.get_input_embeddings().weight is lm.get_output_embeddings().weight


def test_extract_reinit_writes_a_store_of_its_own(tiny_llama, tiny_problems, tmp_path) -> None:
    trained = open_store(extract(_options(tiny_llama, tiny_problems, tmp_path / "t")))
    random = open_store(extract(_options(tiny_llama, tiny_problems, tmp_path / "r", reinit=3)))
    again = open_store(extract(_options(tiny_llama, tiny_problems, tmp_path / "r2", reinit=3)))
    assert random.manifest["reinit"] == 3 and trained.manifest["reinit"] is None
    assert "re-initialized, seed 3" in random.manifest["model"]
    assert list(random.records["id"]) == list(trained.records["id"])
    assert not np.allclose(random.hidden(), trained.hidden())
    assert np.array_equal(random.hidden(), again.hidden())  # seeded: the same store twice
    # A trained store is never resumed as a random one (or the reverse).
    with pytest.raises(OpcircuitsError, match="model"):
        extract(_options(tiny_llama, tiny_problems, tmp_path / "t", reinit=3))


def test_full_mode_extracts_and_analyzes_the_baselines(tmp_path: Path) -> None:
    from opcircuits.pipeline.config import resolve
    from opcircuits.pipeline.stages import build_stages

    full = resolve(None, {"run": {"mode": "full"}})
    stages, store, _ = build_stages(full, tmp_path)
    names = [s.name for s in stages]
    assert names == [
        "download",
        "classify",
        "extract",
        "classify_matched",
        "extract_matched",
        "extract_random",
        "intervene",  # the causal tests run in full mode too
        "analyze",
    ]
    by = {s.name: s for s in stages}
    assert by["classify_matched"].outputs["samples"].name == "operation_samples_matched_200.jsonl"
    assert by["extract_matched"].inputs["dataset"] == by["classify_matched"].outputs["samples"]
    assert by["extract_random"].inputs["dataset"] == by["extract"].inputs["dataset"]
    assert by["extract_random"].options["reinit"] == 0  # the analysis seed
    assert by["analyze"].inputs == {
        "store": store,
        "matched_store": tmp_path / "store_matched",
        "random_store": tmp_path / "store_random",
        "interventions": tmp_path / "interventions",
    }
    # A matched main sample needs no second one; the prototype stays lean.
    matched = resolve(None, {"run": {"mode": "full"}, "data": {"match_steps": True}})
    assert "classify_matched" not in [s.name for s in build_stages(matched, tmp_path)[0]]
    proto = resolve(None, {"run": {"mode": "prototype"}})
    assert "extract_random" not in [s.name for s in build_stages(proto, tmp_path)[0]]
