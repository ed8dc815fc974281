"""Stacked interventions (`interventions.groups`): the default sweep run several interventions
at a time, as one batch of G·B rows, gives the one-at-a-time run's answers, log-probabilities,
logit differences and states within float rounding, on LLaMA- and GPT-2-shaped tiny models and
on routed ones (twin thoughts, a bottleneck answer), with knockouts, patching, path patching,
truncations and erasure in the sweep."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from opcircuits.codi import interventions as iv
from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.interventions.groups import group_key, plan_groups
from opcircuits.data.io import read_problems
from opcircuits.intervene.sweep import build_sweep
from opcircuits.options import InterveneOptions
from opcircuits.options.intervene import DEFAULT_KINDS

torch.set_num_threads(1)

CATEGORIES = ("pure_addition", "pure_multiplication", "mixed")
ROUTED = {
    "twin": {"thoughts_read_prompt": False, "thought_input": "constant"},
    "bottleneck": {"answer_reads_prompt": False},
}


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_gpt2", "twin", "bottleneck"])
def sweep(request, tmp_path_factory, tiny_texts, tiny_problems):
    """A tiny model, 9 problems (3 categories, every other one with a partner), the default
    sweep of `opcircuits intervene` for it, its reference and sources."""
    if request.param in ROUTED:
        from codi_factory import build_tiny_codi

        where = tmp_path_factory.mktemp(request.param)
        routing = ROUTED[request.param]
        spec = build_tiny_codi(where, "llama", tiny_texts, num_latent=3, routing=routing)
    else:
        spec = request.getfixturevalue(request.param)
    model, tok = load_codi(spec.checkpoint, base=spec.base, device="cpu")
    records = read_problems(tiny_problems)[:9]
    problems = [
        iv.Problem.from_record({**r, "category": CATEGORIES[i % 3]}) for i, r in enumerate(records)
    ]
    engine = iv.Engine(model, tok, max_new_tokens=6)
    layers = list(range(model.num_layers + 1))
    batches = iv.plan_batches([engine.prompt_length(p.question) for p in problems], 4)
    ref = iv.clean_reference(engine, problems, batches, layers)
    ref.add_category_direction("pure_addition", "pure_multiplication")
    ref.add_random_direction(seed=0)
    # The default sweep plus erasure (LEACE and its random control), which is opt-in.
    kinds = [*DEFAULT_KINDS, "erase"]
    options = InterveneOptions(data=Path(tiny_problems), out=Path("unused"), kinds=kinds)
    heads = model.lm.config.num_attention_heads
    ivs, _ = build_sweep(options, engine.K, engine.n_layers, True, heads)
    N = len(problems)
    patch = [(i + 1) % N if i % 2 == 0 else None for i in range(N)]
    sources = iv.Sources(resample=iv.resample_sources(N, seed=0), patch=patch)
    return engine, problems, batches, ref, ivs, sources


def run(engine, problems, batches, ref, ivs, sources, group):
    out = {}
    for batch in iv.run_interventions(
        engine, problems, batches, ivs, ref, sources=sources, record=True, group=group
    ):
        for o in batch:
            out[o.intervention.label, o.problem] = o
    return out


def close(a: float | None, b: float | None) -> bool:
    return (a is None) == (b is None) and (a is None or a == pytest.approx(b, abs=1e-4))


def test_stacked_interventions_equal_one_at_a_time(sweep):
    engine, problems, batches, ref, ivs, sources = sweep
    kinds = {x.kind for x in ivs}
    assert {"zero", "mean", "patch", "knockout", "path", "truncate_pos", "erase"} <= kinds
    order = sorted(range(len(ivs)), key=lambda j: -ivs[j].start(engine.K))
    # Groups of 5 leave partial groups too; knockouts and patches are stacked, not only zeros.
    stacked = [g for g in plan_groups(ivs, order, engine.K, 5) if len(g) > 1]
    assert {ivs[j].kind for g in stacked for j in g} >= {"zero", "patch", "knockout", "erase"}
    one = run(engine, problems, batches, ref, ivs, sources, group=1)
    grouped = run(engine, problems, batches, ref, ivs, sources, group=5)
    assert one.keys() == grouped.keys()
    for key, a in one.items():
        b = grouped[key]
        assert a.answer_ids == b.answer_ids, key
        assert a.source == b.source and a.correct == b.correct, key
        assert close(a.logp_gold, b.logp_gold), key
        assert close(a.logp_source, b.logp_source), key
        assert close(a.ld_first, b.ld_first), key
        assert torch.allclose(a.states, b.states, atol=1e-4, rtol=0, equal_nan=True), key


def test_groups_share_a_start_and_keep_the_cache_order():
    """Each group holds interventions of one key, at most `size`; groups run in decreasing first
    step (the cache before a start is the clean run's); path patching runs alone."""
    K = 3
    ivs = [
        iv.Intervention("zero", (iv.Site(s, layer),)) for s in range(K + 1) for layer in range(3)
    ]
    ivs += [iv.Intervention("patch", (iv.Site(1, 0),)), iv.Intervention("path", path="all")]
    ivs += [iv.Intervention(k, keep=1) for k in ("truncate", "truncate_pos")]
    order = sorted(range(len(ivs)), key=lambda j: -ivs[j].start(K))
    groups = plan_groups(ivs, order, K, 2)
    assert sorted(j for g in groups for j in g) == list(range(len(ivs)))
    starts = [ivs[g[0]].start(K) for g in groups]
    assert starts == sorted(starts, reverse=True)
    for g in groups:
        assert len(g) <= 2 and len({group_key(ivs[j], K) for j in g}) == 1
        assert len(g) == 1 or all(ivs[j].kind != "path" for j in g)
    # zero at step 1 (3 layers) in groups of 2 and 1; patch and truncations stand alone
    assert sorted(len(g) for g in groups if ivs[g[0]].start(K) == 2) == [1, 1, 1, 2]
    assert plan_groups(ivs, order, K, 1) == [[j] for j in order]
