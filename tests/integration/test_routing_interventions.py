"""The routing controls of the interventions engine, each checked against an independent
computation: position-preserved truncation against `run_batch(keep_positions=True)`, knockouts of
the prompt against a model trained without that path (the routing options), head and layer
knockouts against their union, GPT-2's layer 0 keeping the target's position embedding, path
patching's limits (the partner's whole run), and the logit-difference baselines."""

from __future__ import annotations

import pytest
import torch

from opcircuits.codi import interventions as iv
from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.interventions import Intervention, Site, Sources
from opcircuits.codi.latent import run_batch
from opcircuits.data.io import read_problems

torch.set_num_threads(1)
MAX_NEW = 8


def setup(spec, tiny_problems, n=8):
    model, tok = load_codi(spec.checkpoint, base=spec.base, device="cpu")
    problems = [iv.Problem.from_record(r) for r in read_problems(tiny_problems)[:n]]
    engine = iv.Engine(model, tok, max_new_tokens=MAX_NEW)
    layers = list(range(model.num_layers + 1))
    batches = iv.plan_batches([engine.prompt_length(p.question) for p in problems], 4)
    ref = iv.clean_reference(engine, problems, batches, layers)
    return engine, problems, batches, ref


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_gpt2"])
def tiny(request, tiny_problems):
    return setup(request.getfixturevalue(request.param), tiny_problems)


def run(engine, problems, batches, ref, ivs, sources=None, **kw):
    out = {}
    for batch in iv.run_interventions(
        engine, problems, batches, ivs, ref, sources=sources, record=True, **kw
    ):
        for o in batch:
            out[o.intervention.label, o.problem] = o
    return out


def edges(engine, spec: str) -> tuple[iv.Edge, ...]:
    heads = engine.model.lm.config.num_attention_heads
    return tuple(iv.parse_edges(spec, engine.K, engine.n_layers, heads))


def test_position_preserved_truncation_is_the_loop_with_the_answer_at_K_positions(tiny):
    engine, problems, batches, ref = tiny
    ivs = [Intervention("truncate_pos", keep=k) for k in (0, 2)]
    ivs += [Intervention("truncate", keep=2)]
    got = run(engine, problems, batches, ref, ivs)
    naive = run(engine, problems, batches, ref, ivs, naive=True)
    questions = [p.question for p in problems]
    for k in (0, 2):
        kept = run_batch(
            engine.model, engine.tokenizer, questions, layers=[0], max_new_tokens=MAX_NEW,
            num_latent=k, keep_positions=True,
        )  # fmt: skip
        for i in range(len(problems)):
            o = got[f"truncate_pos {k}", i]
            assert o.answer_ids == kept.answer_ids[i] == naive[o.intervention.label, i].answer_ids
            assert o.states[k + 1 :].isnan().all()
    # The position ids are what differs from the natural truncation.
    assert any(
        got["truncate_pos 2", i].logp_gold != got["truncate 2", i].logp_gold
        for i in range(len(problems))
    )


def test_knocking_out_the_prompt_is_the_model_run_without_that_path(tiny):
    """answer>prompt equals the engine (and run_batch) of the same weights with
    answer_reads_prompt = False; thoughts>prompt with thoughts_read_prompt = False."""
    engine, problems, batches, ref = tiny
    cfg = engine.model.config
    ivs = [Intervention("knockout", edges=edges(engine, e)) for e in ("answer>prompt",)]
    ivs += [Intervention("knockout", edges=edges(engine, "thoughts>prompt"))]
    got = run(engine, problems, batches, ref, ivs)
    questions = [p.question for p in problems]
    for flag, label in (
        ("answer_reads_prompt", ivs[0].label),
        ("thoughts_read_prompt", ivs[1].label),
    ):
        setattr(cfg, flag, False)
        try:
            plain = run_batch(engine.model, engine.tokenizer, questions, layers=ref.layers,
                              max_new_tokens=MAX_NEW)  # fmt: skip
            blind_ref = iv.clean_reference(engine, problems, batches, ref.layers)
            blind = run(engine, problems, batches, blind_ref, [])
        finally:
            setattr(cfg, flag, True)
        changed = 0
        for i in range(len(problems)):
            o = got[label, i]
            assert o.answer_ids == plain.answer_ids[i] == blind["none", i].answer_ids
            assert o.logp_gold == pytest.approx(blind["none", i].logp_gold, abs=1e-4)
            assert (o.states - plain.hidden[i]).abs().max() <= 1e-4
            changed += o.logp_gold != got["none", i].logp_gold
        assert changed > 0


def test_layer_and_head_knockouts_add_up_to_the_whole_edge(tiny):
    engine, problems, batches, ref = tiny
    n, H = engine.n_layers, engine.model.lm.config.num_attention_heads
    every_layer = "+".join(str(x) for x in range(1, n + 1))
    every_head = "+".join(str(h) for h in range(H))
    specs = [
        "answer>question",
        f"answer>question@{every_layer}",
        f"answer>question#{every_head}",
        "answer>question@1",
        "answer>question#0",
        "latent_2>question",
        "latent_2>question@1#1",
    ]
    ivs = [Intervention("knockout", edges=edges(engine, s)) for s in specs]
    got = run(engine, problems, batches, ref, ivs)
    label = [x.label for x in ivs]
    for i in range(len(problems)):
        whole = got[label[0], i]
        for j in (1, 2):
            assert got[label[j], i].logp_gold == pytest.approx(whole.logp_gold, abs=1e-5)
            assert got[label[j], i].answer_ids == whole.answer_ids
        clean = got["none", i]
        for o in (got[label[k], i] for k in (0, 3, 4)):
            assert torch.equal(o.states, clean.states)  # only the answer reads differently
        # A thought's knockout changes that thought's states and later ones, nothing before.
        s5, s6 = got[label[5], i].states, got[label[6], i].states
        assert torch.equal(s5[:2], clean.states[:2]) and not torch.allclose(s5[2], clean.states[2])
        assert torch.equal(s6[:2], clean.states[:2]) and torch.equal(s6[2, :1], clean.states[2, :1])
    for k in (3, 4):  # one layer or one head is a smaller change than all of them, not none
        part = [got[label[k], i].logp_gold for i in range(len(problems))]
        assert part != [got["none", i].logp_gold for i in range(len(problems))]
        assert part != [got[label[0], i].logp_gold for i in range(len(problems))]


def test_gpt2_layer_0_edits_keep_the_targets_position_embedding(tiny_gpt2, tiny_problems):
    engine, problems, batches, ref = setup(tiny_gpt2, tiny_problems)
    assert ref.pos0 is not None
    N = len(problems)
    lengths = [engine.prompt_length(p.question) for p in problems]
    partner = [max(range(N), key=lambda j, i=i: abs(lengths[j] - lengths[i])) for i in range(N)]
    sources = Sources(resample=partner, patch=partner)
    ivs = [Intervention(k, (Site(2, 0),)) for k in ("patch", "resample", "mean", "zero")]
    got = run(engine, problems, batches, ref, ivs, sources)
    wpe = engine.backbone.wpe.weight
    for i, j in enumerate(partner):
        assert lengths[i] != lengths[j]  # so the two position embeddings differ
        pe = ref.pos0[i, 2]
        assert torch.allclose(pe, wpe[lengths[i] - 1 + 2], atol=1e-6)
        moved = ref.states[j, 2, 0] - ref.pos0[j, 2]  # the partner's fed-back vector
        for kind in ("patch", "resample"):
            s = got[f"{kind} latent_2@0", i].states
            assert torch.allclose(s[2, 0], moved + pe, atol=1e-5)
            assert not torch.allclose(s[2, 0], ref.states[j, 2, 0], atol=1e-3)
        mean = (ref.states[:, 2, 0] - ref.pos0[:, 2]).mean(0)
        assert torch.allclose(got["mean latent_2@0", i].states[2, 0], mean + pe, atol=1e-5)
        assert torch.allclose(got["zero latent_2@0", i].states[2, 0], pe, atol=1e-6)


def _pairs(problems):
    N = len(problems)
    return [(i + 1) % N if i % 2 == 0 else (i - 1) for i in range(N)]


def test_path_patching_limits_and_the_logit_difference_baselines(tiny):
    """path all + every thought site = the partner's run (recovery 1); a source of itself
    changes nothing (recovery 0); the two partial paths lie between."""
    engine, problems, batches, ref = tiny
    K, n = engine.K, engine.n_layers
    every = tuple(Site(s, x) for s in range(1, K + 1) for x in range(n + 1))
    ivs = [Intervention("path", every, path="all"), Intervention("path", path="all")]
    ivs += [Intervention("path", path=p) for p in ("thoughts", "answer")]
    partner = _pairs(problems)
    # bot's input is one embedding for every problem: patching it is an identity patch, measured
    # against the partner.
    identity = Intervention("patch", (Site(0, 0),))
    got = run(engine, problems, batches, ref, [*ivs, identity], Sources(patch=partner))
    base = iv.partner_runs(engine, ref, list(enumerate(partner)), 3)
    same = run(engine, problems, batches, ref, ivs, Sources(patch=list(range(len(problems)))))
    for i in range(len(partner)):
        clean, b = got["none", i], base[i]
        ld_clean = clean.logp_source - clean.logp_gold
        ld_partner = b.logp_gold - b.logp_source
        for label in (ivs[0].label, ivs[1].label):
            o = got[label, i]
            assert o.answer_ids == b.ids  # the partner's own answer
            assert o.logp_source - o.logp_gold == pytest.approx(ld_partner, abs=1e-3)
            if b.ld_first is not None:
                assert o.ld_first == pytest.approx(-b.ld_first, abs=1e-3)
        for x in ivs:
            s = same[x.label, i]  # patched from itself: the clean run
            assert s.answer_ids == clean.answer_ids
            assert s.logp_gold == pytest.approx(clean.logp_gold, abs=1e-4)
        assert abs(ld_partner - ld_clean) > 1e-3
    # Normalized recovery (means first): every position patched, the prompt included → 1; the
    # identity patch → 0.
    N = len(problems)
    labels = ("none", ivs[0].label, ivs[1].label, identity.label)
    lds = {
        k: sum(got[k, i].logp_source - got[k, i].logp_gold for i in range(N)) / N for k in labels
    }
    partner_m = sum(b.logp_gold - b.logp_source for b in base) / N

    def recovery(label):
        return (lds[label] - lds["none"]) / (partner_m - lds["none"])

    assert recovery(ivs[0].label) == pytest.approx(1.0, abs=0.01)
    assert recovery(ivs[1].label) == pytest.approx(1.0, abs=0.01)
    assert recovery(identity.label) == pytest.approx(0.0, abs=1e-4)
    moved = [
        got[x.label, i].logp_gold != got["none", i].logp_gold
        for x in ivs[2:]
        for i in range(len(problems))
    ]
    assert any(moved)


def test_the_engine_runs_a_routed_model_as_it_was_trained(tmp_path, tiny_texts, tiny_problems):
    """A twin (thoughts blind to the prompt, one constant thought input) and a bottleneck model
    (the answer blind to the prompt), from their configs: the engine's clean run is run_batch's."""
    from codi_factory import build_tiny_codi

    for name, routing in (
        ("twin", {"thoughts_read_prompt": False, "thought_input": "constant"}),
        ("bottleneck", {"answer_reads_prompt": False}),
    ):
        spec = build_tiny_codi(tmp_path / name, "llama", tiny_texts, num_latent=3, routing=routing)
        engine, problems, batches, ref = setup(spec, tiny_problems, n=5)
        for key, value in routing.items():
            assert getattr(engine.model.config, key) == value
        # editing a thought's input in place works on the twin's constant input too
        zero_in = Intervention("zero", (Site(1, 0),))
        got = run(engine, problems, batches, ref, [Intervention("truncate", keep=1), zero_in])
        assert all(got[zero_in.label, i].states[1, 0].abs().max() == 0 for i in range(5))
        questions = [p.question for p in problems]
        m, tok = engine.model, engine.tokenizer
        plain = run_batch(m, tok, questions, layers=ref.layers, max_new_tokens=MAX_NEW)
        short = run_batch(m, tok, questions, layers=[0], max_new_tokens=MAX_NEW, num_latent=1)
        for i in range(len(problems)):
            assert (got["none", i].states - plain.hidden[i]).abs().max() <= 1e-4, (name, i)
            assert got["none", i].answer_ids == plain.answer_ids[i]
            assert got["truncate 1", i].answer_ids == short.answer_ids[i]


def test_patch_step_patches_each_pair_at_the_thought_of_its_changed_step(tiny):
    engine, problems, batches, ref = tiny
    N, K = len(problems), engine.K
    partner = _pairs(problems)
    steps = [1 + i % K for i in range(N)]
    for i, j in enumerate(partner):  # a pair shares its changed step, as the synth pairs do
        problems[i].changed_step = problems[j].changed_step = steps[min(i, j)]
    try:
        sites = tuple(Site(s, 2) for s in range(1, K + 1))
        ivs = [Intervention("patch_step", sites)]
        got = run(engine, problems, batches, ref, ivs, Sources(patch=partner))
    finally:
        for p in problems:
            p.changed_step = None
    L = ref.layers.index(2)
    for i, j in enumerate(partner):
        s, clean = got[ivs[0].label, i].states, got["none", i].states
        step = steps[min(i, j)]
        assert torch.equal(s[:step], clean[:step])  # nothing before the changed step moves
        assert torch.allclose(s[step, L], ref.states[j, step, L], atol=1e-5)
        assert torch.equal(s[step, :L], clean[step, :L])
        assert got[ivs[0].label, i].logp_source is not None
