"""The sweep (`intervene`, the command): the interventions the options ask for, the model, the
manifest, and the parts not yet finished, run in batches that never cross a part."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError
from opcircuits.files import sha256_file
from opcircuits.intervene.outputs import finalize
from opcircuits.intervene.partners import Inputs, default_pairs, read_inputs
from opcircuits.intervene.parts import (
    FORMAT,
    PARTS,
    SPEED_ONLY,
    open_output,
    part_name,
    refuse_inputs,
    shards,
)
from opcircuits.options import InterveneOptions
from opcircuits.progress import stage_progress

log = logging.getLogger(__package__)  # the command's logger, as before the package split


def build_sweep(
    options: InterveneOptions,
    num_latent: int,
    num_layers: int,
    with_patch: bool,
    num_heads: int = 0,
) -> tuple[list[Any], list[str]]:
    """The interventions the options ask for, in a fixed order, and notes on what was skipped."""
    from opcircuits.codi import interventions as iv
    from opcircuits.codi.interventions import Intervention, parse_sites

    notes: list[str] = []
    sites = parse_sites(options.sites, num_latent, num_layers)
    steer_spec = options.steer_sites or f"latents@{num_layers // 2}"
    out: list[Intervention] = []
    for kind in options.kinds:
        if kind in ("zero", "mean", "resample"):
            out += [Intervention(kind, s) for s in sites]
            out += [Intervention(kind, s) for s in joint_sites(num_latent, num_layers)]
        elif kind == "knockout":
            heads = num_heads or 1
            edges = iv.parse_edges(options.edges, num_latent, num_layers, heads)
            out += [Intervention("knockout", edges=(e,)) for e in edges]
        elif kind == "path":
            if with_patch:
                out += [Intervention("path", path=p) for p in iv.PATHS]
            else:
                notes.append("path skipped: no problem has a partner")
        elif kind == "patch":
            if with_patch:
                out += [Intervention("patch", s) for s in sites]
                # Each pair patched at the thought that should hold its changed step.
                for layer in range(num_layers + 1):
                    steps = range(1, num_latent + 1)
                    out.append(Intervention("patch_step", tuple(iv.Site(s, layer) for s in steps)))
            else:
                notes.append(
                    "patch skipped: no problem has a partner (pair_id pairs in the data or a "
                    "pairs file beside it, or --patch-map)"
                )
        elif kind == "steer":
            for s in parse_sites(steer_spec, num_latent, num_layers):
                for direction in ("diff", "random"):
                    out += [Intervention("steer", s, a, direction) for a in options.alphas]
        elif kind == "truncate":
            out += [Intervention("truncate", keep=k) for k in range(num_latent)]
            out += [Intervention("truncate_pos", keep=k) for k in range(num_latent)]
    return list(dict.fromkeys(out)), notes  # a site set asked for twice runs once


def joint_sites(num_latent: int, num_layers: int) -> list[tuple[Any, ...]]:
    """latent_{k+1} … latent_K together, for k = 0 … K-1, at the input (layer 0) and at every
    layer: the content of the later thoughts at fixed positions."""
    from opcircuits.codi.interventions import Site

    out = []
    for k in range(num_latent):
        steps = range(k + 1, num_latent + 1)
        out.append(tuple(Site(s, 0) for s in steps))
        out.append(tuple(Site(s, x) for s in steps for x in range(num_layers + 1)))
    return out


def _steer_categories(options: InterveneOptions, categories: list[str]) -> tuple[str, str] | None:
    if options.steer_categories is not None:
        a, b = options.steer_categories
        return a, b
    if {"pure_addition", "pure_multiplication"} <= set(categories):
        return "pure_addition", "pure_multiplication"
    present = sorted(set(categories))
    return (present[0], present[1]) if len(present) >= 2 else None


@dataclass
class Parts:
    """The sweep's parts: their problem rows and batches, the partners' batches (only the clean
    reference runs them) and the parts not yet written."""

    rows: list[range]
    batches: list[list[list[int]]]
    extra_batches: list[list[int]]
    pending: list[int]


@dataclass
class Plan:
    """What the sweep runs: its interventions (fixed order), the notes on what was skipped, the
    steering categories and the layers whose clean states the reference keeps."""

    sweep: list[Any]
    notes: list[str]
    steer: tuple[str, str] | None
    layers: list[int]


def intervene(options: InterveneOptions) -> Path:
    """Run the sweep `options` describe into `options.out` (resuming a finished part's worth);
    returns the path of `interventions.json`."""
    from opcircuits.codi import interventions as iv

    out = Path(options.out)
    pairs = options.pairs if options.pairs is not None else default_pairs(options.data)
    refuse_inputs(out, [options.data, pairs, options.patch_map])
    inputs = read_inputs(options, pairs)
    model, tokenizer = _load_model(options)
    heads = int(getattr(model.lm.config, "num_attention_heads", 0) or 0)
    plan = _plan(options, inputs, model.config.num_latent, model.num_layers, heads)
    manifest = open_output(out, _manifest(options, inputs, pairs, model, plan))
    parts_dir = out / PARTS
    parts_dir.mkdir(exist_ok=True)
    part_rows = shards(len(inputs.records), options.shard_size)
    pending = [i for i, _ in enumerate(part_rows) if not (parts_dir / part_name(i)).is_file()]

    engine = iv.Engine(model, tokenizer, max_new_tokens=options.max_new_tokens)
    parts = _parts(engine, inputs, part_rows, pending, options.batch_size)
    if pending:
        _run_parts(out, options, engine, inputs, plan, parts)
    return finalize(out, options, manifest, plan.notes, engine.stats)


def _load_model(options: InterveneOptions):
    from opcircuits.codi.checkpoint import load_codi

    model_name, checkpoint = options.model, options.checkpoint
    if checkpoint is not None and options.model == "demo":  # a bare --checkpoint is the model
        model_name, checkpoint = str(checkpoint), None
    return load_codi(
        model_name, checkpoint=checkpoint, base=options.base, dtype=options.dtype,
        device=options.device,
    )  # fmt: skip


def _plan(options: InterveneOptions, inputs: Inputs, K: int, n_layers: int, heads: int) -> Plan:
    with_patch = any(s is not None for s in inputs.source_rows)
    sweep, notes = build_sweep(options, K, n_layers, with_patch, heads)
    cats = [str(r["category"]) for r in inputs.records]
    steer = _steer_categories(options, cats) if "steer" in options.kinds else None
    if "steer" in options.kinds and steer is None:
        notes.append("steer skipped: the data has fewer than two categories")
        sweep = [x for x in sweep if x.kind != "steer"]
    if "resample" in options.kinds and len(inputs.records) < 2:
        raise OpcircuitsError("resample needs at least two problems", field="kinds")
    layers = sorted({s.layer for x in sweep for s in x.sites} | {n_layers})
    return Plan(sweep, notes, steer, layers)


def _manifest(
    options: InterveneOptions, inputs: Inputs, pairs: Path | None, model, plan: Plan
) -> dict[str, Any]:
    """What is being computed: a folder holding another computation is never resumed."""
    from opcircuits.versions import package_versions

    src = model.source
    opts = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in dataclasses.asdict(options).items()
        if k not in SPEED_ONLY and k != "out"
    }
    return {
        "format": FORMAT,
        "options": opts,
        "model": src.name,
        "checkpoint": src.checkpoint,
        "weights_sha256": sha256_file(src.weights_path),
        "base": src.base,
        "num_latent": model.config.num_latent,
        "num_layers": model.num_layers,
        "data": str(options.data),
        "data_sha256": sha256_file(options.data),
        "pairs": str(pairs) if pairs is not None else None,
        "pairs_sha256": sha256_file(pairs) if pairs is not None else None,
        "patch_map_sha256": sha256_file(options.patch_map) if options.patch_map else None,
        "n_problems": len(inputs.records),
        "interventions": [x.label for x in plan.sweep],
        "steer_categories": list(plan.steer) if plan.steer else None,
        "versions": package_versions(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "complete": False,
    }


def _parts(
    engine, inputs: Inputs, part_rows: list[range], pending: list[int], batch_size: int
) -> Parts:
    from opcircuits.codi import interventions as iv

    lengths = [engine.prompt_length(p.question) for p in inputs.problems]

    # Batches never cross a part, and the reference uses the very batches of the sweep, so that
    # the states an intervention copies in are bit-identical to its own clean run's.
    def batches(rows: Sequence[int]) -> list[list[int]]:
        plan = iv.plan_batches([lengths[i] for i in rows], batch_size)
        return [[rows[j] for j in b] for b in plan]

    part_batches = [batches(rows) for rows in part_rows]
    extra_batches = batches(range(len(inputs.records), len(inputs.problems)))
    return Parts(part_rows, part_batches, extra_batches, pending)


def _run_parts(
    out: Path,
    options: InterveneOptions,
    engine,
    inputs: Inputs,
    plan: Plan,
    parts: Parts,
) -> None:
    """The clean reference, then every pending part, each written when it is finished."""
    from opcircuits import intervene as package  # its `_write_parquet`: the seam tests patch
    from opcircuits.codi import interventions as iv

    problems, N = inputs.problems, len(inputs.records)
    log.info("%s: clean reference over %d problems", out, len(problems))
    every_batch = [b for bs in parts.batches for b in bs] + parts.extra_batches
    ref = iv.clean_reference(
        engine, problems, every_batch, plan.layers, reference_rows=list(range(N))
    )
    if plan.steer:
        ref.add_category_direction(*plan.steer)
        ref.add_random_direction(options.seed)
    sources = iv.Sources(
        resample=iv.resample_sources(N, options.seed) if N >= 2 else None,
        patch=inputs.source_rows,
    )
    baseline = _partner_baselines(engine, ref, inputs, options.batch_size)
    todo = sum(len(parts.rows[i]) for i in parts.pending)
    with stage_progress("intervene", enabled=True) as bar:
        task = bar.add_task("intervene", total=todo)
        for i in parts.pending:
            rows: list[dict[str, Any]] = []
            runs = iv.run_interventions(
                engine, problems, parts.batches[i], plan.sweep, ref, sources=sources
            )
            with contextlib.closing(runs):  # removes the hooks even on Ctrl-C
                for outcomes in runs:
                    rows += iv.outcome_rows(outcomes, problems, ref)
                    bar.advance(task, len({o.problem for o in outcomes}))
            _add_columns(rows, inputs, baseline)
            order = {pid: k for k, pid in enumerate(p.id for p in problems[:N])}
            labels = {x.label: k for k, x in enumerate([iv.Intervention("none"), *plan.sweep])}
            rows.sort(key=lambda r: (order[r["id"]], labels[r["intervention"]]))
            package._write_parquet(rows, out / PARTS / part_name(i))


def _partner_baselines(engine, ref, inputs: Inputs, batch_size: int) -> dict[str, tuple]:
    """Per problem id with a partner: the logit difference (the partner's answer minus the
    problem's; first differing token, whole answer) in the partner's own clean run."""
    from opcircuits.codi import interventions as iv

    pairs = [(i, s) for i, s in enumerate(inputs.source_rows) if s is not None]
    if not pairs:
        return {}
    runs = iv.partner_runs(engine, ref, pairs, batch_size)
    return {
        inputs.problems[i].id: (
            -a.ld_first if a.ld_first is not None else None,
            a.logp_gold - a.logp_source if a.logp_source is not None else None,
        )
        for (i, _), a in zip(pairs, runs, strict=True)
    }


def _add_columns(rows: list[dict[str, Any]], inputs: Inputs, baseline: dict[str, tuple]) -> None:
    """The record's `changed_step` (which step its partner changes) on every row, and the partner
    baseline of the logit difference on the clean run's rows."""
    step = {str(r["id"]): r.get("changed_step") for r in inputs.records}
    for r in rows:
        value = step.get(r["id"])
        r["changed_step"] = int(value) if value is not None else None
        first, answer = baseline.get(r["id"], (None, None)) if r["kind"] == "none" else (None, None)
        r["ld_partner_first"], r["ld_partner_answer"] = first, answer
