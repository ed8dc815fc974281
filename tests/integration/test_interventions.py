"""Interventions on the latent loop: identities change nothing, every kind does what it says,
batches do not matter, and the fast path (cached prompt, drafts) equals the whole loop rerun."""

from __future__ import annotations

import pytest
import torch

from opcircuits.codi import interventions as iv
from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.interventions import Intervention, Site, Sources
from opcircuits.codi.latent import prompt_ids, run_batch
from opcircuits.data.io import read_problems
from opcircuits.errors import OpcircuitsError

torch.set_num_threads(1)

CATEGORIES = ("pure_addition", "pure_multiplication", "mixed")
MAX_NEW = 10


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_gpt2"])
def tiny(request, tiny_problems):
    """A tiny model, 10 GSM8K problems (labelled round-robin) and their clean reference."""
    spec = request.getfixturevalue(request.param)
    model, tok = load_codi(spec.checkpoint, base=spec.base, device="cpu")
    records = read_problems(tiny_problems)[:10]
    problems = [
        iv.Problem.from_record({**r, "category": CATEGORIES[i % 3]}) for i, r in enumerate(records)
    ]
    engine = iv.Engine(model, tok, max_new_tokens=MAX_NEW)
    layers = list(range(model.num_layers + 1))
    batches = iv.plan_batches([engine.prompt_length(p.question) for p in problems], 4)
    ref = iv.clean_reference(engine, problems, batches, layers)
    ref.add_category_direction("pure_addition", "pure_multiplication")
    ref.add_random_direction(seed=0)
    return engine, problems, batches, ref


def run(engine, problems, batches, ref, interventions, sources=None, **kw):
    """{(label, problem index): Outcome}."""
    out = {}
    for batch in iv.run_interventions(
        engine, problems, batches, interventions, ref, sources=sources, record=True, **kw
    ):
        for o in batch:
            out[o.intervention.label, o.problem] = o
    return out


def test_clean_run_is_the_latent_loop(tiny):
    engine, problems, batches, ref = tiny
    got = run(engine, problems, batches, ref, [])
    plain = run_batch(
        engine.model,
        engine.tokenizer,
        [p.question for p in problems],
        layers=ref.layers,
        max_new_tokens=MAX_NEW,
    )
    for i in range(len(problems)):
        clean = got["none", i]
        # bot runs as its own step here (so that bot interventions reuse the prompt's cache)
        assert (clean.states - plain.hidden[i]).abs().max() <= 1e-4
        assert torch.equal(clean.states, ref.states[i])  # same batches: bit for bit
        assert clean.answer_ids == plain.answer_ids[i]


def test_identity_interventions_reproduce_the_clean_run_bit_for_bit(tiny):
    engine, problems, batches, ref = tiny
    K, n = engine.K, engine.n_layers
    sites = [(Site(0, 0),), (Site(3, 2),), (Site(K, n),), (Site(1, 1), Site(4, n), Site(4, 0))]
    ivs = [Intervention("patch", s) for s in sites]
    ivs += [Intervention("steer", (Site(2, 3),), alpha=0.0, direction="diff")]
    ivs += [Intervention("truncate", keep=K)]
    self_sources = Sources(patch=list(range(len(problems))))
    got = run(engine, problems, batches, ref, ivs, self_sources)
    for x in ivs:
        for i in range(len(problems)):
            o, clean = got[x.label, i], got["none", i]
            assert torch.equal(o.states, clean.states), (x.label, i)
            assert o.answer_ids == clean.answer_ids
            assert o.logp_gold == clean.logp_gold
            if x.kind == "patch":  # its own answer is its source's
                assert o.logp_source == clean.logp_gold


def every_kind(engine, problems) -> tuple[list[Intervention], Sources]:
    K, n = engine.K, engine.n_layers
    ivs = [
        Intervention("zero", (Site(2, 1),)),
        Intervention("mean", (Site(0, 0), Site(3, n))),
        Intervention("resample", (Site(4, 2),)),
        Intervention("patch", tuple(Site(s, 2) for s in range(1, K + 1))),
        Intervention("steer", (Site(1, 3),), alpha=2.0, direction="diff"),
        Intervention("steer", (Site(1, 3),), alpha=2.0, direction="random"),
        Intervention("truncate", keep=2),
        Intervention("truncate", keep=0),
    ]
    N = len(problems)
    # Every other problem is patched from the next one; the rest have no partner.
    patch = [(i + 1) % N if i % 2 == 0 else None for i in range(N)]
    return ivs, Sources(resample=iv.resample_sources(N, seed=0), patch=patch)


def test_batch_of_one_equals_batch_of_all(tiny):
    engine, problems, batches, ref = tiny
    ivs, sources = every_kind(engine, problems)
    lengths = [engine.prompt_length(p.question) for p in problems]
    got = {}
    for size in (1, 64):
        b = iv.plan_batches(lengths, size)
        r = iv.clean_reference(engine, problems, b, ref.layers)
        r.directions = ref.directions
        got[size] = run(engine, problems, b, r, ivs, sources)
    assert got[1].keys() == got[64].keys()
    for key, one in got[1].items():
        all_ = got[64][key]
        assert torch.allclose(one.states, all_.states, atol=1e-4, rtol=0, equal_nan=True), key
        assert one.answer_ids == all_.answer_ids, key
        assert one.logp_gold == pytest.approx(all_.logp_gold, abs=1e-4)
        assert (one.logp_source is None) == (all_.logp_source is None)


@pytest.mark.parametrize("group", [1, iv.DEFAULT_GROUP])
def test_each_kind_sets_its_site_and_only_later_states_change(tiny, group):
    engine, problems, batches, ref = tiny
    ivs, sources = every_kind(engine, problems)
    got = run(engine, problems, batches, ref, ivs, sources, group=group)
    # One at a time, the states before a site are the clean run's bit for bit; stacked (the
    # steers share a start) they come from a larger matrix product: equal within rounding.
    same = torch.equal if group == 1 else lambda a, b: torch.allclose(a, b, atol=1e-5, rtol=0)
    L = ref.layers.index
    n = engine.n_layers
    for i in range(len(problems)):
        clean = got["none", i].states

        def check(label, site, expected, i=i, clean=clean):
            s = got[label, i].states
            assert torch.allclose(s[site.step, L(site.layer)], expected, atol=1e-5), (label, i)
            # Everything computed before the site is the clean run's, bit for bit.
            assert torch.equal(s[: site.step], clean[: site.step])
            assert same(s[site.step, : L(site.layer)], clean[site.step, : L(site.layer)])
            # The change reaches later layers and later steps (through the KV cache).
            if site.layer < n:
                assert not torch.allclose(
                    s[site.step, L(site.layer) + 1 :], clean[site.step, L(site.layer) + 1 :]
                )
            if site.step < engine.K:
                assert not torch.allclose(s[site.step + 1 :, 1:], clean[site.step + 1 :, 1:])

        check("zero latent_2@1", Site(2, 1), torch.zeros(engine.model.hidden_size))
        o = got["mean bot@0+latent_3@" + str(n), i]
        # Layer 0 keeps the target's own position embedding (GPT-2); LLaMA has none there.
        pe = ref.pos0[i, 0] if ref.pos0 is not None else 0.0
        assert torch.allclose(o.states[0, 0], ref.content_mean(0, 0) + pe, atol=1e-5)
        assert torch.allclose(o.states[3, L(n)], ref.mean[3, L(n)], atol=1e-5)
        j = sources.resample[i]
        assert j != i and got["resample latent_4@2", i].source == j
        check("resample latent_4@2", Site(4, 2), ref.states[j, 4, L(2)])
        label = f"patch latent_1-{engine.K}@2"
        if sources.patch[i] is None:
            assert torch.equal(got[label, i].states, clean)
        else:
            j = sources.patch[i]
            check(label, Site(1, 2), ref.states[j, 1, L(2)])
            for s in range(2, engine.K + 1):
                assert torch.allclose(got[label, i].states[s, L(2)], ref.states[j, s, L(2)])
            assert got[label, i].logp_source is not None
        for d in ("diff", "random"):
            u = ref.directions[d][1, L(3)]
            assert u.norm() == pytest.approx(1.0, abs=1e-5)
            step = 2.0 * ref.norm[1, L(3)] * u
            check(f"steer {d} +2 latent_1@3", Site(1, 3), clean[1, L(3)] + step)
        for k in (2, 0):
            s = got[f"truncate {k}", i].states
            assert torch.equal(s[: k + 1], clean[: k + 1]) and s[k + 1 :].isnan().all()


def test_diff_direction_points_from_one_category_mean_to_the_other(tiny):
    engine, problems, batches, ref = tiny
    cats = [p.category for p in problems]
    a = ref.states[[i for i, c in enumerate(cats) if c == "pure_addition"]].mean(0)
    b = ref.states[[i for i, c in enumerate(cats) if c == "pure_multiplication"]].mean(0)
    d = b[2, 3] - a[2, 3]
    assert torch.allclose(ref.directions["diff"][2, 3], d / d.norm(), atol=1e-6)
    # Where every problem has the same state (LLaMA's bot embedding) there is no direction.
    bot = ref.states[:, 0, 0]
    if torch.equal(bot.min(0).values, bot.max(0).values):
        assert not ref.directions["diff"][0, 0].any()
    assert ref.norm[3, 2] == pytest.approx(float(ref.states[:, 3, 2].norm(dim=-1).mean()))


def uncached(model, tok, question, thoughts, decoder_ids, edit=None):
    """One problem, no cache: the prompt, `thoughts` latent steps, then the answer prompt
    teacher-forced; returns the log-probabilities of each decoder token given what precedes it
    and the final hidden states of the latent steps."""
    seq = model.embed(torch.tensor([prompt_ids(model, tok, question)]))
    finals = []
    for _ in range(thoughts + 1):
        out = model.lm(inputs_embeds=seq, output_hidden_states=True)
        finals.append(out.hidden_states[-1][0, -1])
        if len(finals) == thoughts + 1:
            break
        seq = torch.cat([seq, model.project(out.hidden_states[-1][:, -1:])], dim=1)
    dec = torch.tensor([decoder_ids])
    seq = torch.cat([seq, model.embed(dec[:, :-1])], dim=1)
    logits = model.lm(inputs_embeds=seq).logits[0, -(dec.shape[1] - 1) :]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, dec[0, 1:, None])[:, 0]
    return logp, torch.stack(finals)


def test_gold_log_probability_is_the_teacher_forced_answer_prompt(tiny):
    engine, problems, batches, ref = tiny
    m, tok = engine.model, engine.tokenizer
    got = run(engine, problems, batches, ref, [Intervention("truncate", keep=1)])
    for i, p in enumerate(problems[:4]):
        ids, start = engine.gold_ids(p.gold)
        assert ids[0] == m.eot_id and ids[-1] == tok.eos_token_id
        assert p.gold in tok.decode(ids[1:-1])  # "The answer is: N"
        for label, thoughts in (("none", engine.K), ("truncate 1", 1)):
            with torch.no_grad():
                logp, _ = uncached(m, tok, p.question, thoughts, ids)
            expected = float(logp[start:].sum())  # value tokens and EOS
            assert got[label, i].logp_gold == pytest.approx(expected, abs=1e-4), (label, i)


def test_truncated_answer_equals_a_loop_with_fewer_thoughts(tiny):
    """Truncating at k is the loop run with K = k (an independent, uncached check)."""
    engine, problems, batches, ref = tiny
    m, tok = engine.model, engine.tokenizer
    got = run(engine, problems, batches, ref, [Intervention("truncate", keep=2)])
    questions = [p.question for p in problems]
    plain = run_batch(m, tok, questions, layers=[0], max_new_tokens=MAX_NEW, num_latent=2)
    assert [got["truncate 2", i].answer_ids for i in range(len(problems))] == plain.answer_ids


def test_last_layer_edit_is_the_next_thoughts_input(tiny):
    """Layer n is the final (normed) state: what the projection turns into the next input."""
    engine, problems, batches, ref = tiny
    n = engine.n_layers
    got = run(engine, problems, batches, ref, [Intervention("zero", (Site(2, n),))])
    project = engine.model.project
    with torch.inference_mode():
        zero = project(torch.zeros(1, engine.model.hidden_size))[0]
        for i in range(len(problems)):
            s, clean = got[f"zero latent_2@{n}", i].states, got["none", i].states
            # Layer 0 of step 3 is its input (GPT-2 adds the same position embedding to both).
            moved = zero - project(clean[2, n][None])[0]
            assert torch.allclose(s[3, 0] - clean[3, 0], moved, atol=1e-5)


def test_fast_path_equals_rerunning_the_whole_loop(tiny):
    engine, problems, batches, ref = tiny
    ivs, sources = every_kind(engine, problems)
    ivs.append(Intervention("zero", tuple(Site(s, 2) for s in range(1, engine.K + 1))))
    fast = run(engine, problems, batches, ref, ivs, sources)
    naive = run(engine, problems, batches, ref, ivs, sources, naive=True)
    assert fast.keys() == naive.keys()
    for key, f in fast.items():
        assert f.answer_ids == naive[key].answer_ids, key
        assert f.logp_gold == pytest.approx(naive[key].logp_gold, abs=1e-4)
    changed = sum(f.answer_ids != fast["none", i].answer_ids for (_, i), f in fast.items())
    assert changed > 0  # some interventions changed some answers (the comparison is not idle)


def test_fast_path_on_a_trained_model_resolves_answers_by_drafts(gsm8k_dir):
    """The shipped demo model writes 'The answer is: N' and stops: most answers are found by
    verifying a draft, the rest continue from the confirmed start; both equal plain decoding."""
    import json

    model, tok = load_codi("demo", device="cpu")
    with open(gsm8k_dir / "test.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for _, line in zip(range(8), fh, strict=False)]
    problems = [
        iv.Problem(f"test_{i}", r["question"], r["answer"].split("####")[-1].strip(), "c")
        for i, r in enumerate(rows)
    ]
    engine = iv.Engine(model, tok, max_new_tokens=16)
    n = model.num_layers
    batches = iv.plan_batches([engine.prompt_length(p.question) for p in problems], 4)
    ref = iv.clean_reference(engine, problems, batches, list(range(n + 1)))
    ivs = [Intervention("zero", (Site(1, 1),)), Intervention("zero", (Site(3, n),))]
    ivs += [Intervention("mean", (Site(2, 2),)), Intervention("truncate", keep=0)]
    engine.stats.clear()
    fast = run(engine, problems, batches, ref, ivs)
    stats = dict(engine.stats)
    naive = run(engine, problems, batches, ref, ivs, naive=True)
    for key, f in fast.items():
        assert f.answer_ids == naive[key].answer_ids, key
        assert f.logp_gold == pytest.approx(naive[key].logp_gold, abs=1e-4)
    plain = run_batch(model, tok, [p.question for p in problems], layers=[0], max_new_tokens=16)
    assert [fast["none", i].answer_ids for i in range(8)] == plain.answer_ids
    assert all(fast["none", i].answer_text.startswith("The answer is") for i in range(8))
    print(stats)
    assert stats["draft"] > stats["continued"] > 0
    assert any(f.answer_ids != fast["none", i].answer_ids for (_, i), f in fast.items())


def test_sites_are_parsed_from_text():
    parse = iv.parse_sites
    assert parse("latent_3@2", 6, 4) == [(Site(3, 2),)]
    assert parse("bot@0+latent_1@4", 6, 4) == [(Site(0, 0), Site(1, 4))]
    assert parse("latent_2@*", 6, 4) == [(Site(2, x),) for x in range(5)]
    assert parse("latents@0", 2, 4) == [(Site(1, 0), Site(2, 0))]
    assert parse("bot@all", 2, 2) == [(Site(0, 0), Site(0, 1), Site(0, 2))]
    assert len(parse("all", 6, 4)) == 7 * 5
    assert parse("*@1, latent_1@1", 1, 1) == [(Site(0, 1),), (Site(1, 1),)]  # no repeats
    for bad, msg in (
        ("latent_7@1", "unknown position"),
        ("latent_1@5", "out of range"),
        ("latent_1", "POS@LAYER"),
        ("latent_1@x", "not a number"),
        ("", "no sites"),
    ):
        with pytest.raises(OpcircuitsError, match=msg):
            parse(bad, 6, 4)


def test_intervention_labels_and_bad_ones():
    assert Intervention("zero", (Site(3, 2),)).label == "zero latent_3@2"
    assert Intervention("truncate", keep=2).label == "truncate 2"
    s = Intervention("steer", (Site(0, 1),), alpha=-0.5, direction="diff")
    assert s.label == "steer diff -0.5 bot@1"
    assert Intervention("zero", (Site(3, 2), Site(1, 0))).start(6) == 1
    assert Intervention("truncate", keep=2).start(6) == 3
    with pytest.raises(OpcircuitsError, match="unknown intervention"):
        Intervention("ablate", (Site(1, 1),))
    with pytest.raises(OpcircuitsError, match="sites"):
        Intervention("zero")
    with pytest.raises(OpcircuitsError, match="direction"):
        Intervention("steer", (Site(1, 1),), alpha=1.0)
    with pytest.raises(OpcircuitsError, match="two problems"):
        iv.resample_sources(1, 0)
    draws = iv.resample_sources(50, 3)
    assert draws == iv.resample_sources(50, 3) and all(j != i for i, j in enumerate(draws))


def test_outcome_rows_make_the_table_the_statistics_read(tiny):
    import pandas as pd

    from opcircuits.analysis.causal import effects

    engine, problems, batches, ref = tiny
    ivs, sources = every_kind(engine, problems)
    rows = []
    for batch in iv.run_interventions(engine, problems, batches, ivs, ref, sources=sources):
        rows += iv.outcome_rows(batch, problems, ref)
    table = pd.DataFrame(rows)
    n_patched = sum(s is not None for s in sources.patch)
    # One row per problem and intervention (the clean run included); patch rows only where a
    # source exists.
    assert len(table) == len(problems) * len(ivs) + n_patched
    clean = table[table.kind == "none"].set_index("id")
    assert not clean["changed"].any() and (clean["thoughts"] == engine.K).all()
    patch = table[table.kind == "patch"]
    assert patch["source_id"].notna().all() and patch["logp_source"].notna().all()
    assert patch["follows_source"].tolist() == (patch["predicted"] == patch["source_gold"]).tolist()
    trunc = table[table.intervention == "truncate 2"].set_index("id")
    assert (trunc["thoughts"] == 2).all()
    changed = trunc["answer_text"] != clean.loc[trunc.index, "answer_text"]
    assert (trunc["changed"] >= changed).all()  # same text can hide different ids, not vice versa
    single = table[table.intervention == "zero latent_2@1"]
    assert (single["position"] == "latent_2").all() and (single["layer"] == 1).all()
    eff, inter = effects(table, n_boot=50)
    assert {r["intervention"] for r in eff} == {x.label for x in ivs}
    assert {r["category"] for r in eff} == {*CATEGORIES, "all"}
    assert len(inter) == len(ivs) * 3


def test_models_trained_with_eos_kept_answer_after_eot_and_eos(tiny_llama, tiny_problems):
    """remove_eos = false: EOS before bot, and [eot, eos] before the answer, in the gold prompt
    and in decoding, as in `run_batch`."""
    model, tok = load_codi(tiny_llama.checkpoint, base=tiny_llama.base, device="cpu")
    model.config.remove_eos = False
    problems = [iv.Problem.from_record(r) for r in read_problems(tiny_problems)[:5]]
    engine = iv.Engine(model, tok, max_new_tokens=MAX_NEW)
    assert engine.answer_prefix == [model.eot_id, tok.eos_token_id]
    ids, start = engine.gold_ids(problems[0].gold)
    assert ids[:2] == engine.answer_prefix and start >= 2
    layers = list(range(model.num_layers + 1))
    batches = iv.plan_batches([engine.prompt_length(p.question) for p in problems], 2)
    ref = iv.clean_reference(engine, problems, batches, layers)
    ivs = [Intervention("truncate", keep=1), Intervention("zero", (Site(2, 1),))]
    got = run(engine, problems, batches, ref, ivs, naive=False)
    naive = run(engine, problems, batches, ref, ivs, naive=True)
    questions = [p.question for p in problems]
    plain = run_batch(model, tok, questions, layers=layers, max_new_tokens=MAX_NEW)
    short = run_batch(model, tok, questions, layers=[0], max_new_tokens=MAX_NEW, num_latent=1)
    for i in range(len(problems)):
        assert (got["none", i].states - plain.hidden[i]).abs().max() <= 1e-4
        assert got["none", i].answer_ids == plain.answer_ids[i]
        assert got["truncate 1", i].answer_ids == short.answer_ids[i]
        for x in ivs:
            assert got[x.label, i].answer_ids == naive[x.label, i].answer_ids


def test_states_an_intervention_makes_non_finite_are_an_error_not_an_effect(tiny):
    """A steering strength beyond float32's range makes the thoughts inf/NaN; decoding them
    would give some answer, reported as the intervention's effect (issue 25)."""
    engine, problems, batches, ref = tiny
    huge = Intervention("steer", (Site(1, 1),), alpha=1e38, direction="random")
    said = r"steer random \+1e\+38 latent_1@1: the intervened states are NaN or inf"
    with pytest.raises(OpcircuitsError, match=said):
        run(engine, problems, batches[:1], ref, [huge])
    fine = Intervention("steer", (Site(1, 1),), alpha=100.0, direction="random")
    assert run(engine, problems, batches[:1], ref, [fine])  # the largest --alphas allows


def test_answers_stop_where_the_models_positions_end_as_extract_stops_them(tiny):
    """A question that fits with its thoughts but leaves the answer only a few positions: the
    answer stops where the positions end, as extract's loop (`run_batch`) stops it (a GPT-2
    model raised IndexError past them; a rotary one decoded on past what it knows)."""
    engine, problems, _, ref = tiny
    model, tok = engine.model, engine.tokenizer
    room = 1024 - engine.K - len(engine.answer_prefix) - 2  # prompt length leaving 3 tokens
    digits = [str(i % 10) for i in range(3000)]
    lo, hi = 0, len(digits)
    while lo < hi:  # the longest question of digits whose prompt fits in `room`
        mid = (lo + hi + 1) // 2
        fits = len(prompt_ids(model, tok, " ".join(digits[:mid]))) <= room
        lo, hi = (mid, hi) if fits else (lo, mid - 1)
    long = iv.Problem("long", " ".join(digits[:lo]), "7", "mixed")
    budget = 1024 - len(prompt_ids(model, tok, long.question)) - engine.K
    budget -= len(engine.answer_prefix) - 1  # answer tokens before the positions end
    assert 3 <= budget < MAX_NEW
    probs, batches = [long, problems[0]], [[0, 1]]
    reference = iv.clean_reference(engine, probs, batches, ref.layers)
    got = run(engine, probs, batches, reference, [Intervention("zero", (Site(1, 1),))])
    plain = run_batch(model, tok, [p.question for p in probs], layers=ref.layers,
                      max_new_tokens=MAX_NEW)  # fmt: skip
    for i in range(2):
        assert got["none", i].answer_ids == plain.answer_ids[i]
    assert len(got["none", 0].answer_ids) <= budget < len(got["none", 1].answer_ids)
    assert len(got["zero latent_1@1", 0].answer_ids) <= budget
