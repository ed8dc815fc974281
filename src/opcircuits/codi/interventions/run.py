"""Runs: the clean reference run, the sweep of interventions over batches of problems, and the
measurement rows (`interventions.parquet`).

Interventions run in decreasing order of their first step, and each only writes the KV cache at
or after it, so the entries before an intervention's start are always the clean run's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from opcircuits.codi.interventions.engine import Answer, Batch, Engine
from opcircuits.codi.interventions.groups import DEFAULT_GROUP, Stacked, plan_groups, run_group
from opcircuits.codi.interventions.outcomes import (
    PATCHING,
    Outcome,
    attach_states,
    check_finite,
    make_outcome,
    prepare,
    site_edit,
    sources_gold,
)
from opcircuits.codi.interventions.reference import Reference, Sources
from opcircuits.codi.interventions.spec import Intervention, Problem, position_name, sites_name
from opcircuits.codi.latent import one_query_attention

__all__ = ["PATCHING", "Outcome", "site_edit"]  # kept importable from here


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar prompt length (longest first, ties by index)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def clean_reference(
    engine: Engine,
    problems: Sequence[Problem],
    batches: Sequence[Sequence[int]],
    layers: Sequence[int],
    *,
    reference_rows: Sequence[int] | None = None,
) -> Reference:
    """The clean states of `problems` at every step and `layers`, batched as `batches`. Use the
    interventions' own batches for the problems they run on, so that the states an intervention
    copies in (mean, resample, patch) are bit-identical to its clean run's."""
    states: torch.Tensor | None = None
    pos0: torch.Tensor | None = None
    with engine:
        for rows in batches:
            b = engine.open_batch(problems, rows)
            with one_query_attention(engine.model):
                got = engine.run_clean(b, layers)
            if states is None:
                states = torch.empty((len(problems), *got.shape[1:]))
                if b.clean_pos0 is not None:
                    pos0 = torch.empty((len(problems), *b.clean_pos0.shape[1:]))
            states[list(rows)] = got
            if pos0 is not None and b.clean_pos0 is not None:
                pos0[list(rows)] = b.clean_pos0
    assert states is not None
    ref_rows = list(range(len(problems))) if reference_rows is None else list(reference_rows)
    return Reference(list(problems), states, list(layers), ref_rows, pos0)


@torch.inference_mode()
def partner_runs(
    engine: Engine,
    reference: Reference,
    pairs: Sequence[tuple[int, int]],
    batch_size: int,
) -> list[Answer]:
    """For each (problem, source) pair of reference rows, the source's own clean run, decoded
    with the source's gold answer and the problem's as its contrast: the partner baseline of
    the logit difference (source's answer minus the problem's = `logp_gold - logp_source`, and
    `-ld_first` at the first differing token)."""
    problems = [reference.problems[s] for _, s in pairs]
    batches = plan_batches([engine.prompt_length(p.question) for p in problems], batch_size)
    room = max((len(engine.gold_ids(p.gold)[0]) for p in reference.problems), default=0)
    out: list[Answer | None] = [None] * len(pairs)
    with engine:
        for rows in batches:
            b = engine.open_batch(problems, rows, room)
            with one_query_attention(engine.model):
                b.clean_final = engine.latents(b, 0, engine.K)[0]
                gold = [engine.gold_ids(problems[i].gold) for i in rows]
                other = [engine.gold_ids(reference.problems[pairs[i][0]].gold) for i in rows]
                for i, a in zip(rows, engine.decode(b, engine.K, gold, source=other), strict=True):
                    out[i] = a
    return [a for a in out if a is not None]


@torch.inference_mode()
def run_interventions(
    engine: Engine,
    problems: Sequence[Problem],
    batches: Sequence[Sequence[int]],
    interventions: Sequence[Intervention],
    reference: Reference,
    *,
    sources: Sources | None = None,
    record: bool = False,
    naive: bool = False,
    group: int = DEFAULT_GROUP,
) -> Iterator[list[Outcome]]:
    """Every intervention on every problem of `batches`, one batch at a time: yields that batch's
    outcomes, the clean run's (`none`) first, then each intervention's in the given order.

    Problem i's states are `reference.states[reference.index[problems[i].id]]`. With `record`, each
    outcome carries its states (for tests). With `naive`, each intervention reruns the prompt and
    every step and decodes token by token: the benchmark's baseline, same results. Up to `group`
    interventions starting at the same step run as one stacked batch (`groups`; 1: one at a
    time), same results within float rounding."""
    sources = sources or Sources()
    K = engine.K
    order = sorted(range(len(interventions)), key=lambda j: -interventions[j].start(K))
    room = max((len(engine.gold_ids(p.gold)[0]) for p in reference.problems), default=0)
    with engine:
        for rows in batches:
            ref_rows = [reference.index[problems[i].id] for i in rows]
            b = engine.open_batch(problems, rows, room)
            with one_query_attention(engine.model):
                engine.run_clean(b, reference.layers)
                gold = [engine.gold_ids(problems[i].gold) for i in rows]
                src = _patch_sources(sources, ref_rows)
                clean = engine.decode(b, K, gold, source=sources_gold(engine, reference, src),
                                      naive=naive)  # fmt: skip
                out = [
                    make_outcome(engine, problems[i], i, Intervention("none"), a, s)
                    for i, a, s in zip(rows, clean, src, strict=True)
                ]
                if record:
                    assert b.clean_states is not None
                    for o, st in zip(out, b.clean_states, strict=True):
                        o.states = st.float().cpu()
                done: dict[int, list[Outcome]] = {}
                clean_ids = [a.ids for a in clean]
                plan = plan_groups(interventions, order, K, 1 if naive else group)
                # The batch's stacked copy, made for its first group, as large as its largest.
                stacked = Stacked(max(map(len, plan), default=1))
                for js in plan:
                    if len(js) > 1:
                        done.update(run_group(
                            engine, b, problems, rows, ref_rows, {j: interventions[j] for j in js},
                            reference, sources, gold, clean_ids, record, stacked,
                        ))  # fmt: skip
                        continue
                    done[js[0]] = _run_one(
                        engine, b, problems, rows, ref_rows, interventions[js[0]], reference,
                        sources, gold, clean_ids, record, naive, room,
                    )  # fmt: skip
            yield out + [o for j in range(len(interventions)) for o in done[j]]


def _patch_sources(sources: Sources, ref_rows: Sequence[int]) -> list[int | None]:
    """Each row's patch source (None: none, or no patch sources given)."""
    if sources.patch is None:
        return [None] * len(ref_rows)
    return [sources.patch[r] for r in ref_rows]


def _run_one(
    engine: Engine,
    b: Batch,
    problems: Sequence[Problem],
    rows: Sequence[int],
    ref_rows: Sequence[int],
    iv: Intervention,
    reference: Reference,
    sources: Sources,
    gold: Sequence[tuple[list[int], int]],
    clean_ids: Sequence[list[int]],
    record: bool,
    naive: bool,
    room: int,
) -> list[Outcome]:
    K = engine.K
    thoughts = iv.thoughts(K)
    src, src_rows, edits, source_gold = prepare(engine, iv, ref_rows, reference, sources)
    drafts = [[c] for c in clean_ids]
    layers = reference.layers if record else None
    if iv.kind == "path":
        assert src_rows is not None
        return _run_path(
            engine, problems, rows, iv, reference, src, src_rows, edits, gold, source_gold,
            drafts, layers, naive, room,
        )  # fmt: skip
    start = iv.start(K)
    if naive:  # the whole loop again: the prompt, then every step
        b = engine.open_batch(problems, rows, room)
        start = 0
    engine.hooks.knockouts = [(e, e.columns(b.T, K), None) for e in iv.edges]
    try:
        recorded: list = []
        if start <= thoughts:
            finals, recorded = engine.latents(b, start, thoughts, edits, layers)
            check_finite(finals[start:], iv, [problems[i].id for i in rows])
        shift = K - thoughts if iv.kind == "truncate_pos" else 0
        answers = engine.decode(b, thoughts, gold, drafts, source_gold, naive=naive, shift=shift)
    finally:
        engine.hooks.knockouts = []
    outcomes = [
        make_outcome(engine, problems[i], i, iv, a, s)
        for i, a, s in zip(rows, answers, src, strict=True)
    ]
    if record:
        attach_states(engine, b, outcomes, reference, start, recorded)
    return outcomes


def _run_path(
    engine, problems, rows, iv, reference, src, src_rows, edits, gold, source_gold, drafts,
    layers, naive, room,
) -> list[Outcome]:  # fmt: skip
    """Path patching: the problem's loop with the partner's prompt (question + bot keys and
    values, bot's final state) read by the thoughts only, the answer only, or every segment
    (then at the partner's position ids), and `edits` at the thoughts' sites."""
    K = engine.K
    width = max(engine.prompt_length(reference.problems[r].question) for r in src_rows)
    b = engine.open_batch(problems, rows, room, width)
    other = engine.open_batch(reference.problems, src_rows, room, b.T)
    bot, rec = engine.latents(b, 0, 0, record=layers)
    theirs, rec_theirs = engine.latents(other, 0, 0, record=layers)
    if iv.path in ("thoughts", "all"):
        engine.swap_prompt(b, other)
        bot, rec = theirs, rec_theirs
        if iv.path == "all":
            b.last = other.last
    b.clean_final = bot
    finals, later = engine.latents(b, 1, K, edits, layers)
    check_finite(finals[1:], iv, [problems[i].id for i in rows])
    recorded = rec + later
    if iv.path != "all":  # the answer reads the other prompt than the thoughts did
        engine.swap_prompt(b, other)
    answers = engine.decode(b, K, gold, drafts, source_gold, naive=naive)
    outcomes = [
        make_outcome(engine, problems[i], i, iv, a, s)
        for i, a, s in zip(rows, answers, src, strict=True)
    ]
    if layers is not None:
        attach_states(engine, b, outcomes, reference, 0, recorded)
    return outcomes


def outcome_rows(
    outcomes: Sequence[Outcome], problems: Sequence[Problem], reference: Reference
) -> list[dict[str, Any]]:
    """One table row per outcome (the `interventions.parquet` columns; see
    `opcircuits.analysis.causal`). `outcomes` must hold each problem's clean run (`none`), which
    `changed` compares with; patch outcomes of problems without a source are left out."""
    clean = {o.problem: o for o in outcomes if o.intervention.kind == "none"}
    K = reference.states.shape[1] - 1
    rows = []
    for o in outcomes:
        iv, p = o.intervention, problems[o.problem]
        if iv.kind in PATCHING and o.source is None:
            continue
        single = iv.sites[0] if len(iv.sites) == 1 else None
        src = reference.problems[o.source] if o.source is not None else None
        src_gold = src.gold_value if src is not None else None
        follows = None
        if iv.kind in PATCHING and src_gold is not None:
            follows = o.predicted is not None and o.predicted == src_gold
        rows.append(
            {
                "id": p.id,
                "category": p.category,
                "intervention": iv.label,
                "kind": iv.kind,
                "sites": sites_name(iv.sites),
                "position": position_name(single.step) if single else None,
                "layer": single.layer if single else None,
                "alpha": iv.alpha if iv.kind == "steer" else None,
                "direction": iv.direction or None,
                "thoughts": iv.thoughts(K),
                "gold": p.gold_value,
                "answer_text": o.answer_text,
                "predicted": o.predicted,
                "correct": o.correct,
                "changed": o.answer_ids != clean[o.problem].answer_ids,
                "logp_gold": o.logp_gold,
                "source_id": src.id if src is not None else None,
                "source_gold": src_gold,
                "logp_source": o.logp_source,
                "follows_source": follows,
                # The logit difference, the source's answer minus the problem's: at the first
                # differing token, and over the whole answer (log-prob of each, teacher-forced).
                "ld_first": o.ld_first,
                "ld_answer": (o.logp_source - o.logp_gold if o.logp_source is not None else None),
            }
        )
    return rows
