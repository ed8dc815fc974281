"""What the sweep makes of one intervention on one batch: its edits and sources (`prepare`),
the checks on its states, and its outcomes (`Outcome`, one problem under one intervention);
shared by the one-at-a-time runs (`run`) and the stacked ones (`groups`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from opcircuits.codi.interventions.engine import Answer, Engine
from opcircuits.codi.interventions.kinds import TABLE, Edit
from opcircuits.codi.interventions.reference import Reference, Sources
from opcircuits.codi.interventions.spec import Intervention, Problem, Site
from opcircuits.codi.prompt import decode_answer, extract_number
from opcircuits.errors import OpcircuitsError

PATCHING = ("patch", "patch_step", "path")  # kinds measured against the source's answer too


@dataclass
class Outcome:
    """One problem under one intervention."""

    problem: int  # index into the run's problems
    intervention: Intervention
    answer_ids: list[int]
    answer_text: str
    predicted: float | None
    correct: bool
    logp_gold: float
    source: int | None = None  # resample/patch: the source's reference row
    logp_source: float | None = None  # patch: the source's gold answer, teacher-forced
    ld_first: float | None = None  # the source's first differing answer token minus the gold's
    states: torch.Tensor | None = None  # [K+1, L, D] at the reference layers, when recorded


def site_edit(
    iv: Intervention,
    site: Site,
    ref: Reference,
    src_rows: Sequence[int] | None,
    dtype: torch.dtype,
    device: torch.device,
) -> Edit:
    """The edit of one site of a site kind's intervention."""
    li = ref.layer_index(site.layer)
    make = TABLE[iv.kind].edit
    if make is None:
        raise AssertionError(iv.kind)
    return make(iv, ref, site.step, li, src_rows, dtype, device)


def prepare(
    engine: Engine,
    iv: Intervention,
    ref_rows: Sequence[int],
    reference: Reference,
    sources: Sources,
) -> tuple[list[int | None], list[int], dict[int, dict[int, Edit]], list | None]:
    """An intervention's sources on a batch's rows: (each row's source or None, the reference
    rows its edits read, the edits `edits[step][layer]`, the sources' gold answer prompts for a
    patching kind or None)."""
    src: list[int | None] = [None] * len(ref_rows)
    src_rows = list(ref_rows)  # a kind without a source reads the problems' own rows (erase)
    source = TABLE[iv.kind].source  # resample, patch, path: the field of `sources` to read
    if source is not None:
        table = getattr(sources, source)
        if table is None:
            raise OpcircuitsError(f"{iv.kind}: no source problems given", field="kinds")
        src = [table[r] for r in ref_rows]
        # A problem without a source is left as it is (patched from itself).
        src_rows = [s if s is not None else r for s, r in zip(src, ref_rows, strict=True)]
    edits: dict[int, dict[int, Edit]] = {}
    for site in iv.sites:
        edit = site_edit(iv, site, reference, src_rows, engine.dtype, engine.device)
        edits.setdefault(site.step, {})[site.layer] = edit
    # Patching measures the source's answer too (and the clean run, when sources exist).
    source_gold = sources_gold(engine, reference, src) if iv.kind in PATCHING else None
    return src, src_rows, edits, source_gold


def sources_gold(engine: Engine, reference: Reference, src: Sequence[int | None]):
    """The sources' gold answer prompts (None where a row has no source; None for no source)."""
    if all(s is None for s in src):
        return None
    return [engine.gold_ids(reference.problems[s].gold) if s is not None else None for s in src]


def check_finite(finals: Sequence[torch.Tensor], iv: Intervention, ids: Sequence[str]) -> None:
    """The intervened thoughts' states must be numbers: a NaN or inf state (a steering strength
    beyond the dtype's range) would decode to an arbitrary answer, reported as an effect."""
    if not finals:
        return
    ok = torch.isfinite(torch.cat(list(finals), 1)).flatten(1).all(1).cpu().tolist()
    bad = [i for i, good in zip(ids, ok, strict=True) if not good]
    if bad:
        shown = ", ".join(bad[:5]) + (" …" if len(bad) > 5 else "")
        raise OpcircuitsError(
            f"{iv.label}: the intervened states are NaN or inf for {len(bad)} problem(s) "
            f"({shown}); use smaller steering strengths (--alphas) or --dtype float32",
            field="alphas" if iv.kind == "steer" else "kinds",
        )


def attach_states(engine, b, outcomes, reference, start, recorded) -> None:
    """Each outcome's states [K+1, L, D]: the clean run's before `start`, then the recorded
    ones, NaN for steps that never ran (after a truncation)."""
    B, L, D = len(outcomes), len(reference.layers), engine.model.hidden_size
    steps = []
    for s in range(engine.K + 1):
        if s < start:
            assert b.clean_states is not None
            steps.append(b.clean_states[:, s].float().cpu())
        elif s - start < len(recorded):
            r = recorded[s - start]
            steps.append(torch.stack([r[x] for x in reference.layers], 1).float().cpu())
        else:  # steps after a truncation never ran
            steps.append(torch.full((B, L, D), float("nan")))
    for o, st in zip(outcomes, torch.stack(steps, 1), strict=True):
        o.states = st


def make_outcome(
    engine: Engine, problem: Problem, i: int, iv: Intervention, a: Answer, source: int | None
) -> Outcome:
    text = decode_answer(engine.model, engine.tokenizer, a.ids)
    predicted = extract_number(text)
    gold = problem.gold_value
    return Outcome(
        problem=i,
        intervention=iv,
        answer_ids=a.ids,
        answer_text=text,
        predicted=predicted,
        # As extraction scores it: the last number of the answer equals the gold value.
        correct=predicted is not None and predicted == gold,
        logp_gold=a.logp_gold,
        source=source,
        logp_source=a.logp_source,
        ld_first=a.ld_first,
    )
