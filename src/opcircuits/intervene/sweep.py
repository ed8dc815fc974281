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
from typing import TYPE_CHECKING, Any

from opcircuits.errors import OpcircuitsError
from opcircuits.files import read_json_object, sha256_file
from opcircuits.intervene.outputs import finalize
from opcircuits.intervene.partners import Inputs, default_pairs, read_inputs
from opcircuits.intervene.parts import (
    FORMAT,
    MANIFEST,
    PARTS,
    RESULT,
    SPEED_ONLY,
    kept_parts,
    open_output,
    part_meta,
    part_name,
    record_part,
    refuse_inputs,
    remove_lock,
    shards,
)
from opcircuits.options import InterveneOptions
from opcircuits.progress import stage_progress

if TYPE_CHECKING:
    from opcircuits.codi.ranks import Ranks

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
        elif kind == "erase":  # LEACE at each site, and its random-subspace control
            out += [Intervention(k, s) for s in sites for k in ("erase", "erase_random")]
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
    returns the path of `interventions.json`. Under `accelerate launch` rank r of W computes
    parts r, r+W, … and the main process merges them (see `_intervene`)."""
    from opcircuits.codi.ranks import Ranks

    ranks = Ranks()  # before any input is read: see `codi.ranks`
    try:
        return _intervene(options, ranks)
    finally:
        ranks.close()


def _intervene(options: InterveneOptions, ranks: Ranks) -> Path:
    """Three phases, each ending where every rank learns whether one failed: every rank checks
    and loads everything (the main process alone opens the folder and checks the parts it
    keeps); every rank runs the clean reference over all problems (mean, resample and patch read
    any problem's states) and then its own parts; the main process merges."""
    from opcircuits.codi import interventions as iv

    out = Path(options.out)
    pending: list[int] = []
    with ranks.together():
        inputs, pairs, model, tokenizer, plan = _prepare(options, out, ranks)
        manifest = _manifest(options, inputs, pairs, model, plan)
        part_rows = shards(len(inputs.records), options.shard_size)
        ids = [str(r["id"]) for r in inputs.records]
        if ranks.main:
            manifest = open_output(out, manifest)
            (out / PARTS).mkdir(exist_ok=True)
            pending = kept_parts(out, manifest, part_rows, ids)
    with ranks.together():
        if not ranks.main:  # the folder as the main process left it: kept parts are recorded
            manifest = read_json_object(out / MANIFEST)
            kept = manifest.get("parts") or {}
            pending = [i for i in range(len(part_rows)) if part_name(i) not in kept]
        mine = set(ranks.shares(len(part_rows)))
        pending = [i for i in pending if i in mine]
        if ranks.world > 1:
            shown = ", ".join(map(str, pending)) or "none"
            log.info("%s: rank %d of %d computes parts %s", out, ranks.rank, ranks.world, shown)
        engine = iv.Engine(model, tokenizer, max_new_tokens=options.max_new_tokens)
        parts = _parts(engine, inputs, part_rows, pending, options.batch_size)
        if pending:
            _run_parts(out, options, engine, inputs, plan, parts, manifest, ranks)
    with ranks.together():
        if ranks.main:  # every rank's parts, as recorded in the manifest on disk
            manifest = read_json_object(out / MANIFEST)
            result = finalize(out, options, manifest, plan.notes, engine.stats, ids)
            remove_lock(out)  # no rank records a part any more
    return result if ranks.main else out / RESULT


def _prepare(options: InterveneOptions, out: Path, ranks: Ranks):
    """The inputs, model and plan; every refusal comes before anything is written, so a
    corrected rerun is never refused as a sweep with other options."""
    pairs = options.pairs if options.pairs is not None else default_pairs(options.data)
    for field, path in (("data", options.data), ("pairs", pairs), ("patch_map", options.patch_map)):
        if path is not None and not Path(path).is_file():  # read (or hashed) even when unused
            raise OpcircuitsError("no such file", path=path, field=field)
    from opcircuits.codi.resolve import local_folders

    models = local_folders(options.model, options.checkpoint)
    inputs_given = {"--data": options.data, "--pairs": pairs, "--patch-map": options.patch_map}
    refuse_inputs(out, inputs_given, models)
    inputs = read_inputs(options, pairs)
    model, tokenizer = load_model(options, ranks.device(options.device))
    check_questions(model, tokenizer, inputs)
    heads = int(getattr(model.lm.config, "num_attention_heads", 0) or 0)
    plan = _plan(options, inputs, model.config.num_latent, model.num_layers, heads)
    return inputs, pairs, model, tokenizer, plan


def check_questions(model, tokenizer, inputs: Inputs) -> None:
    """Every problem's and partner's prompt, thoughts and answer start fit in the model's
    positions (as extract checks), and so does each gold answer the sweep scores after them (a
    problem's own and its patch source's, after the longer prompt of the two): an error naming
    the problems that do not."""
    from opcircuits.codi.latent import check_lengths, max_positions
    from opcircuits.codi.prompt import gold_answer_ids, prompt_ids

    problems = inputs.problems
    check_lengths(model, tokenizer, [p.question for p in problems], [p.id for p in problems])
    limit = max_positions(model)
    if limit is None:
        return
    prompt = [len(prompt_ids(model, tokenizer, p.question)) for p in problems]
    gold = [
        len(gold_answer_ids(tokenizer, p.gold, model.eot_id, model.config.remove_eos)[0])
        for p in problems
    ]
    sources = [*inputs.source_rows, *[None] * (len(problems) - len(inputs.source_rows))]
    need = {}
    for i, s in enumerate(sources):
        rows = [i] if s is None else [i, s]
        n = max(prompt[r] for r in rows) + model.config.num_latent + max(gold[r] for r in rows) - 1
        if n > limit:
            need[problems[i].id] = n
    if need:
        shown = ", ".join(list(need)[:20]) + (f" … ({len(need)} in all)" if len(need) > 20 else "")
        raise OpcircuitsError(
            f"{len(need)} problems do not fit in this model's {limit} positions with their gold "
            f"answer (their own or their patch source's): {shown} need up to "
            f"{max(need.values())}; shorten or leave out those problems",
            field="question",
        )


def load_model(options: InterveneOptions, device: str | None = None):
    """The sweep's model (also DAS's and attribution's): `--model`/`--checkpoint`/`--base`, on
    `device` (default `options.device`; a rank's own GPU under accelerate)."""
    from opcircuits.codi.checkpoint import load_codi
    from opcircuits.codi.config import model_and_checkpoint

    model_name, checkpoint = model_and_checkpoint(options.model, options.checkpoint)
    return load_codi(
        model_name, checkpoint=checkpoint, base=options.base, dtype=options.dtype,
        device=options.device if device is None else device,
    )  # fmt: skip


def _plan(options: InterveneOptions, inputs: Inputs, K: int, n_layers: int, heads: int) -> Plan:
    with_patch = any(s is not None for s in inputs.source_rows)
    sweep, notes = build_sweep(options, K, n_layers, with_patch, heads)
    cats = [str(r["category"]) for r in inputs.records]
    steer = _steer_categories(options, cats) if "steer" in options.kinds else None
    missing = sorted(set(steer or ()) - set(cats))
    if missing:
        raise OpcircuitsError(
            f"no problem of category {', '.join(map(repr, missing))} to build the steering "
            f"direction; the data's categories are {', '.join(sorted(set(cats)))}",
            path=options.data,
            field="steer_categories",
        )
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
    from opcircuits.codi.resolve import weights_sha256
    from opcircuits.versions import package_versions

    src = model.source
    codi_config = {k: v for k, v in src.config.to_dict().items() if k != "base"}  # base_dir
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
        "weights_sha256": weights_sha256(src),
        "base": src.base,
        # The model as computed with: its folders (resolved, however they were spelled) and
        # config; `model`, `checkpoint` and `base` above are what was asked for.
        "checkpoint_dir": str(Path(src.checkpoint_dir).resolve()),
        "base_dir": str(Path(src.base_dir).resolve()),
        "codi_config": codi_config,
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
    manifest: dict[str, Any],
    ranks: Ranks,
) -> None:
    """The clean reference, then every pending part, each written when it is finished (with
    what it holds in its metadata, and its sha256 recorded in the manifest)."""
    from opcircuits import intervene as package  # its `_write_parquet`: the seam tests patch
    from opcircuits.codi import interventions as iv

    problems, N = inputs.problems, len(inputs.records)
    log.info("%s: clean reference over %d problems", out, len(problems))
    every_batch = [b for bs in parts.batches for b in bs] + parts.extra_batches
    ref = iv.clean_reference(
        engine, problems, every_batch, plan.layers, reference_rows=list(range(N))
    )
    ref.erase_seed = options.seed
    if plan.steer:
        ref.add_category_direction(*plan.steer)
        ref.add_random_direction(options.seed)
    sources = iv.Sources(
        resample=iv.resample_sources(N, options.seed) if N >= 2 else None,
        patch=inputs.source_rows,
    )
    baseline = _partner_baselines(engine, ref, inputs, options.batch_size)
    todo = sum(len(parts.rows[i]) for i in parts.pending)
    with stage_progress(f"intervene (rank {ranks.rank})", enabled=ranks.main) as bar:
        task = bar.add_task("intervene", total=todo)
        for i in parts.pending:
            rows: list[dict[str, Any]] = []
            runs = iv.run_interventions(
                engine,
                problems,
                parts.batches[i],
                plan.sweep,
                ref,
                sources=sources,
                group=options.group_size,
            )
            with contextlib.closing(runs):  # removes the hooks even on Ctrl-C
                for outcomes in runs:
                    rows += iv.outcome_rows(outcomes, problems, ref)
                    bar.advance(task, len({o.problem for o in outcomes}))
            _add_columns(rows, inputs, baseline)
            order = {pid: k for k, pid in enumerate(p.id for p in problems[:N])}
            labels = {x.label: k for k, x in enumerate([iv.Intervention("none"), *plan.sweep])}
            rows.sort(key=lambda r: (order[r["id"]], labels[r["intervention"]]))
            span = parts.rows[i]
            meta = part_meta(manifest, i, span.start, [problems[j].id for j in span])
            package._write_parquet(rows, out / PARTS / part_name(i), meta)
            record_part(out, manifest, i, shared=ranks.world > 1)


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
