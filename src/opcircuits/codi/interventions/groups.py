"""Stacked interventions: several interventions of one batch run as one larger batch.

Interventions that start at the same step s (and stop after as many thoughts, keep or move the
answer's positions alike, and are measured against the source's answer alike) share the clean
run before s. A group of G of them on a batch of B problems runs as one batch of G·B rows (row
g·B + i: problem i under the group's g-th intervention) for steps s … K and for the answer
(draft verification, decoding token by token), so each forward multiplies G times more rows by
the same weights: small models are less dominated by Python overhead, large ones fill the
matmul units better.

The KV-cache prefix (the prompt and the clean steps before s) is copied G times, not broadcast:
the preallocated cache (`transformers.StaticCache`) writes each row's later keys in place into
one [rows, heads, length, dim] tensor, which an expanded (stride-0) view cannot take. Its size is
G times the batch's cache, so a sweep's peak memory grows with G·B, never with the number of
interventions (`benchmarks/intervene.py` measures it).

Per-intervention edits act on their own rows only (`RowEdit`); knockouts cut the rows of their
intervention only (`Batch.owner`, read by `hooks.Hooks`, follows the rows into the subsets that
draft verification and decoding make). Results equal the one-at-a-time run's up to the float
rounding of a larger matrix product (tested to 1e-4 in log-probability, same answers).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from opcircuits.codi.interventions.engine import Batch, Engine
from opcircuits.codi.interventions.kinds import Edit
from opcircuits.codi.interventions.outcomes import (
    PATCHING,
    Outcome,
    attach_states,
    check_finite,
    make_outcome,
    prepare,
)
from opcircuits.codi.interventions.reference import Reference, Sources
from opcircuits.codi.interventions.spec import Intervention, Problem
from opcircuits.options.intervene import DEFAULT_GROUP_SIZE

# Interventions per stacked batch (`--group-size`): the cache is this many times the batch's.
DEFAULT_GROUP = DEFAULT_GROUP_SIZE


def group_key(iv: Intervention, K: int) -> tuple[int, int, bool, bool]:
    """Interventions with equal keys can share one stacked batch: first step, thoughts run, the
    answer's positions (truncate_pos moves them), measured against the source's answer."""
    return (iv.start(K), iv.thoughts(K), iv.kind == "truncate_pos", iv.kind in PATCHING)


def plan_groups(
    interventions: Sequence[Intervention], order: Sequence[int], K: int, size: int
) -> list[list[int]]:
    """The indices of `order` (decreasing first step) in groups of at most `size` with equal
    keys, still in decreasing first step, so that the cache before a group's start is always
    the clean run's. Path patching (its own prompts) and `size` 1 run one at a time."""
    groups: list[list[int]] = []
    open_: dict[tuple, list[int]] = {}
    start = None
    for j in order:
        x = interventions[j]
        if x.kind == "path" or size <= 1:
            groups.append([j])
            continue
        key = group_key(x, K)
        if key[0] != start:  # every group of the later start runs before any of this one
            groups += open_.values()
            open_, start = {}, key[0]
        bucket = open_.setdefault(key, [])
        bucket.append(j)
        if len(bucket) == size:
            groups.append(open_.pop(key))
    return groups + list(open_.values())


@dataclass
class RowEdit:
    """One site's edits of a stacked batch: intervention g's edit on rows g·B … g·B+B-1; other
    rows keep their state exactly (`rows` tells `hooks.Hooks` which rows it changes)."""

    B: int
    parts: list[tuple[int, Edit]]  # (intervention index in the group, its edit)
    rows: torch.Tensor  # [G·B] bool: the rows some part edits

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        out = h.clone()
        for g, edit in self.parts:
            sl = slice(g * self.B, (g + 1) * self.B)
            out[sl] = edit(h[sl])
        return out


def row_edits(
    edits: Sequence[Mapping[int, Mapping[int, Edit]]], B: int, device: torch.device
) -> dict[int, dict[int, Edit]]:
    """The group's edits `edits[g][step][layer]` as one `RowEdit` per site of the stacked batch."""
    parts: dict[int, dict[int, list[tuple[int, Edit]]]] = {}
    for g, by_step in enumerate(edits):
        for step, by_layer in by_step.items():
            for layer, edit in by_layer.items():
                parts.setdefault(step, {}).setdefault(layer, []).append((g, edit))
    out: dict[int, dict[int, Edit]] = {}
    for step, by_layer in parts.items():
        for layer, p in by_layer.items():
            rows = torch.zeros(len(edits) * B, dtype=torch.bool, device=device)
            for g, _ in p:
                rows[g * B : (g + 1) * B] = True
            out.setdefault(step, {})[layer] = RowEdit(B, p, rows)
    return out


@dataclass
class Stacked:
    """A batch's stacked copy, made for its first group and reused by every later one: the
    groups run in decreasing first step, so the cache before a group's start is still the clean
    run's in every row (as in the batch itself), and a group of G' < G uses the first G'·B rows
    in place (`row_view`): the prefix is copied once per batch, not once per group."""

    G: int
    batch: Batch | None = None


def row_view(cache, n: int):
    """A cache whose layers are the first n rows of `cache`'s, sharing their storage (writes go
    into `cache`); None where the cache is not one of preallocated layers (transformers 4.x)."""
    layers = getattr(cache, "layers", None)
    if not layers or not all(
        hasattr(x, "keys") and hasattr(x, "cumulative_length") for x in layers
    ):
        return None
    view = copy.copy(cache)
    view.layers = []
    for layer in layers:
        mine = copy.copy(layer)
        mine.keys, mine.values = layer.keys[:n], layer.values[:n]  # views: in-place writes land
        mine.cumulative_length = layer.cumulative_length.clone()
        if hasattr(mine, "batch_size"):
            mine.batch_size = n
        view.layers.append(mine)
    return view


def stack(engine: Engine, b: Batch, stacked: Stacked, G: int, start: int) -> Batch:
    """G copies of batch b's rows with its cache before step `start` (the prompt and the clean
    steps before it) and its clean final states, row g·B + i owned by intervention g."""
    B = len(b.rows)
    if stacked.batch is None:
        st = engine.subset(b, list(range(B)) * stacked.G, b.T - 1 + start)
        st.clean_final = [f.repeat(stacked.G, 1, 1) for f in b.clean_final]
        st.owner = torch.arange(stacked.G, device=engine.device).repeat_interleave(B)
        stacked.batch = st
    st, n = stacked.batch, G * B
    if n == len(st.rows):
        return st
    cache = row_view(st.cache, n)
    if cache is None:  # no views: a copy of the rows' prefix
        return engine.subset(st, range(n), b.T - 1 + start)
    assert st.owner is not None
    finals = [f[:n] for f in st.clean_final]
    return Batch(st.rows[:n], cache, st.mask[:n], st.last[:n], st.T, finals, owner=st.owner[:n])


def run_group(
    engine: Engine,
    b: Batch,
    problems: Sequence[Problem],
    rows: Sequence[int],
    ref_rows: Sequence[int],
    ivs: Mapping[int, Intervention],
    reference: Reference,
    sources: Sources,
    gold: Sequence[tuple[list[int], int]],
    clean_ids: Sequence[list[int]],
    record: bool,
    stacked: Stacked,
) -> dict[int, list[Outcome]]:
    """The outcomes of a group of interventions (equal `group_key`) on batch b, as one stacked
    batch; {intervention index: its outcomes}."""
    K, G, B = engine.K, len(ivs), len(rows)
    first = next(iter(ivs.values()))
    start, thoughts = first.start(K), first.thoughts(K)
    prepared = [prepare(engine, x, ref_rows, reference, sources) for x in ivs.values()]
    edits = row_edits([p[2] for p in prepared], B, engine.device)
    golds = [p[3] for p in prepared]
    source = None
    if any(s is not None for s in golds):
        source = [x for s in golds for x in (s if s is not None else [None] * B)]
    st = stack(engine, b, stacked, G, start)
    engine.hooks.knockouts = [
        (e, e.columns(b.T, K), g) for g, x in enumerate(ivs.values()) for e in x.edges
    ]
    layers = reference.layers if record else None
    ids = [problems[i].id for i in rows]
    try:
        recorded: list = []
        if start <= thoughts:
            finals, recorded = engine.latents(st, start, thoughts, edits, layers)
            for g, x in enumerate(ivs.values()):
                check_finite([f[g * B : (g + 1) * B] for f in finals[start:]], x, ids)
        shift = K - thoughts if first.kind == "truncate_pos" else 0
        drafts = [[c] for c in clean_ids] * G
        answers = engine.decode(st, thoughts, list(gold) * G, drafts, source, shift=shift)
    finally:
        engine.hooks.knockouts = []
    out: dict[int, list[Outcome]] = {}
    for g, (j, x) in enumerate(ivs.items()):
        sl = slice(g * B, (g + 1) * B)
        out[j] = [
            make_outcome(engine, problems[i], i, x, a, s)
            for i, a, s in zip(rows, answers[sl], prepared[g][0], strict=True)
        ]
        if record:
            mine = [{layer: r[layer][sl] for layer in r} for r in recorded]
            attach_states(engine, b, out[j], reference, start, mine)
    return out
