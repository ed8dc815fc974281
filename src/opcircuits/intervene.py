"""`opcircuits intervene`: the causal-test sweep over a problem file, resumable and crash-safe.

For every problem of `--data`: the clean run and every intervention of the sweep (zero / mean /
resample / patch at each site, steering along a category direction and a random one at each
strength, truncation at every k < K), measured as `codi.interventions` describes. Output folder:

    OUT/
      manifest.json           what is being computed (options, model and data hashes); `complete`
      parts/part-00000.parquet  the rows of problems [0, shard_size), … (written atomically: a
                              part that exists is finished; a rerun continues with the next)
      interventions.parquet   one row per problem × intervention, in data order (all parts)
      interventions.json      options, provenance, per-category effects with bootstrap CIs,
                              interactions, findings, figure list
      *.png                   the figures (see `analysis.plots.draw_causal`)

A rerun with other options, model or data is refused with the fields that differ (the output is
never mixed); `--out` must not be an input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import math
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from opcircuits.errors import OpcircuitsError
from opcircuits.files import (
    atomic_path,
    check_replaceable,
    in_layout,
    read_json_object,
    sha256_file,
    write_json_atomic,
)
from opcircuits.options import InterveneOptions
from opcircuits.progress import stage_progress

log = logging.getLogger(__name__)

FORMAT = "opcircuits-interventions/1"
MANIFEST = "manifest.json"
PARTS = "parts"
TABLE = "interventions.parquet"
RESULT = "interventions.json"
# Options that only change speed: a resumed sweep may use other values.
SPEED_ONLY = ("batch_size", "device")

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("category", pa.string()),
        ("intervention", pa.string()),
        ("kind", pa.string()),
        ("sites", pa.string()),
        ("position", pa.string()),
        ("layer", pa.int64()),
        ("alpha", pa.float64()),
        ("direction", pa.string()),
        ("thoughts", pa.int64()),
        ("gold", pa.float64()),
        ("answer_text", pa.string()),
        ("predicted", pa.float64()),
        ("correct", pa.bool_()),
        ("changed", pa.bool_()),
        ("logp_gold", pa.float64()),
        ("source_id", pa.string()),
        ("source_gold", pa.float64()),
        ("logp_source", pa.float64()),
        ("follows_source", pa.bool_()),
    ]
)


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


# The files an intervene folder's layout defines (the manifest is its record), and the
# temporaries of an interrupted atomic write of one (`.<name>.<random>.tmp` beside it).
_OWN_RE = re.compile(
    rf"^(?:{re.escape(MANIFEST)}|{re.escape(TABLE)}|{re.escape(RESULT)}|causal_[a-z_]+\.png"
    rf"|{PARTS}/part-\d{{5,}}\.parquet)$"
)


def is_intervene_file(name: str) -> bool:
    """Whether `name` (relative to an intervene folder, POSIX) is a file `intervene` writes."""
    return in_layout(name, _OWN_RE)


def remove_interventions(path: str | Path) -> None:
    """Delete an intervene folder's own files (a sweep with other options is never resumed
    into it). Any other file in the folder is an error naming it, and then nothing is removed."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise OpcircuitsError("not an intervene output folder (no manifest.json)", path=path)
    check_replaceable(path, is_intervene_file)
    for child in path.iterdir():  # every file here is ours by now
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    """Deterministic parquet (fixed schema and options, no timestamps), written atomically."""
    for r in rows:  # a non-finite log-probability (underflow) is recorded as missing
        for key in ("logp_gold", "logp_source"):
            if r.get(key) is not None and not math.isfinite(r[key]):
                r[key] = None
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=False, version="2.6")


# --- inputs ------------------------------------------------------------------------------------


def _read(path: Path) -> list[dict[str, Any]]:
    """Problem records (the data stage's reader, which keeps `pair_id`), with their category
    (derived when absent)."""
    from opcircuits.data.io import read_problems
    from opcircuits.extract import problem_fields

    out = []
    for i, r in enumerate(read_problems(path)):
        try:
            fields = problem_fields(r)
        except OpcircuitsError as exc:
            raise OpcircuitsError(exc.message, path=path, line=i + 1, field=exc.field) from None
        out.append({**r, "category": fields["category"], "pair_id": r.get("pair_id")})
    return out


def _problems(records: list[dict[str, Any]], path: Path):
    from opcircuits.codi.interventions import Problem

    out = []
    for i, r in enumerate(records):
        try:
            out.append(Problem.from_record(r))
        except OpcircuitsError as exc:
            where = f"problem {r.get('id')!r} (item {i + 1}): "
            raise OpcircuitsError(where + exc.message, path=path, field=exc.field) from None
    return out


def default_pairs(data: Path) -> Path | None:
    """`data/x.jsonl` → `data/x.pairs.jsonl` when it exists (as `opcircuits data synth` writes)."""
    candidate = data.with_name(f"{data.stem}.pairs.jsonl")
    return candidate if candidate.is_file() else None


def patch_sources(
    records: list[dict[str, Any]],
    partners: list[dict[str, Any]],
    patch_map: dict[str, str] | None,
    where: Path | None = None,
) -> list[int | None]:
    """For each problem, the row of its patch source among records + partners (None: none).

    With a map: its entries (ids must exist). Otherwise by `pair_id`: a problem's source is the
    other record with its pair_id (a partner from the pairs file, or a second problem)."""
    rows = records + partners
    index = {str(r["id"]): i for i, r in enumerate(rows)}
    if len(index) != len(rows):
        raise OpcircuitsError("an id appears both in the data and in the partners", path=where)
    if patch_map is not None:
        out: list[int | None] = []
        for r in records:
            src = patch_map.get(str(r["id"]))
            if src is not None and str(src) not in index:
                raise OpcircuitsError(
                    f"source {src!r} of {r['id']!r} is neither a problem nor a partner",
                    path=where,
                    field=str(r["id"]),
                )
            out.append(index[str(src)] if src is not None else None)
        return out
    by_pair: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r.get("pair_id") is not None:
            by_pair.setdefault(str(r["pair_id"]), []).append(i)
    out = []
    for i, r in enumerate(records):
        members = [j for j in by_pair.get(str(r.get("pair_id")), []) if j != i]
        if r.get("pair_id") is None or not members:
            out.append(None)
            continue
        if len(members) > 1:
            raise OpcircuitsError(
                f"pair_id {r['pair_id']!r} has {len(members) + 1} members; patching needs "
                "pairs (or a --patch-map)",
                path=where,
                field="pair_id",
            )
        out.append(members[0])
    return out


def _read_patch_map(path: Path) -> dict[str, str]:
    data = read_json_object(path)
    bad = [k for k, v in data.items() if not isinstance(v, str)]
    if bad:
        raise OpcircuitsError(
            "every value must be a problem id (a string)", path=path, field=bad[0]
        )
    return data


# --- the sweep ------------------------------------------------------------------------------------


def build_sweep(
    options: InterveneOptions, num_latent: int, num_layers: int, with_patch: bool
) -> tuple[list[Any], list[str]]:
    """The interventions the options ask for, in a fixed order, and notes on what was skipped."""
    from opcircuits.codi.interventions import Intervention, parse_sites

    notes: list[str] = []
    sites = parse_sites(options.sites, num_latent, num_layers)
    steer_spec = options.steer_sites or f"latents@{num_layers // 2}"
    out: list[Intervention] = []
    for kind in options.kinds:
        if kind in ("zero", "mean", "resample"):
            out += [Intervention(kind, s) for s in sites]
        elif kind == "patch":
            if with_patch:
                out += [Intervention("patch", s) for s in sites]
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
    return out, notes


def _steer_categories(options: InterveneOptions, categories: list[str]) -> tuple[str, str] | None:
    if options.steer_categories is not None:
        a, b = options.steer_categories
        return a, b
    if {"pure_addition", "pure_multiplication"} <= set(categories):
        return "pure_addition", "pure_multiplication"
    present = sorted(set(categories))
    return (present[0], present[1]) if len(present) >= 2 else None


def _shards(n: int, size: int) -> list[range]:
    return [range(a, min(a + size, n)) for a in range(0, n, size)]


def _refuse_inputs(out: Path, inputs: list[Path | None]) -> None:
    for p in inputs:
        if p is not None and out.resolve() == Path(p).resolve():
            raise OpcircuitsError("the output folder is an input of this command", path=out)
    if out.exists() and not out.is_dir():
        raise OpcircuitsError("exists and is not a folder", path=out, field="out")


def _open_output(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create the output folder, or check that an existing one holds the same computation."""
    path = out / MANIFEST
    if path.is_file():
        old = read_json_object(path)
        keys = [k for k in manifest if k not in ("created", "complete", "speed")]
        differ = [k for k in keys if old.get(k) != manifest[k]]
        if differ:
            raise OpcircuitsError(
                f"holds a sweep with other {', '.join(differ)}; use another --out (or delete it)",
                path=out,
            )
        return old
    if out.is_dir() and any(out.iterdir()):
        raise OpcircuitsError(
            "is not empty and holds no intervene manifest; use another --out", path=out
        )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, manifest)
    return manifest


def intervene(options: InterveneOptions) -> Path:
    """Run the sweep `options` describe into `options.out` (resuming a finished part's worth);
    returns the path of `interventions.json`."""
    from opcircuits.codi import interventions as iv
    from opcircuits.codi.checkpoint import load_codi
    from opcircuits.versions import package_versions

    out = Path(options.out)
    pairs = options.pairs if options.pairs is not None else default_pairs(options.data)
    _refuse_inputs(out, [options.data, pairs, options.patch_map])
    records = _read(options.data)
    if not records:
        raise OpcircuitsError("no problems", path=options.data)
    # Partners are only patch sources: without patching they would only cost clean runs.
    partners = _read(pairs) if pairs is not None and "patch" in options.kinds else []
    ids = {str(r["id"]) for r in records}
    partners = [r for r in partners if str(r["id"]) not in ids]  # a problem is its own record
    patch_map = _read_patch_map(options.patch_map) if options.patch_map is not None else None
    source_rows = patch_sources(records, partners, patch_map, options.patch_map or pairs)
    problems = _problems(records, options.data) + _problems(partners, pairs or options.data)
    N = len(records)

    model_name, checkpoint = options.model, options.checkpoint
    if checkpoint is not None and options.model == "demo":  # a bare --checkpoint is the model
        model_name, checkpoint = str(checkpoint), None
    model, tokenizer = load_codi(
        model_name, checkpoint=checkpoint, base=options.base, dtype=options.dtype,
        device=options.device,
    )  # fmt: skip
    src = model.source
    K, n_layers = model.config.num_latent, model.num_layers
    with_patch = any(s is not None for s in source_rows)
    sweep, notes = build_sweep(options, K, n_layers, with_patch)
    cats = [str(r["category"]) for r in records]
    steer = _steer_categories(options, cats) if "steer" in options.kinds else None
    if "steer" in options.kinds and steer is None:
        notes.append("steer skipped: the data has fewer than two categories")
        sweep = [x for x in sweep if x.kind != "steer"]
    if "resample" in options.kinds and N < 2:
        raise OpcircuitsError("resample needs at least two problems", field="kinds")
    layers = sorted({s.layer for x in sweep for s in x.sites} | {n_layers})

    opts = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in dataclasses.asdict(options).items()
        if k not in SPEED_ONLY and k != "out"
    }
    manifest = {
        "format": FORMAT,
        "options": opts,
        "model": src.name,
        "checkpoint": src.checkpoint,
        "weights_sha256": sha256_file(src.weights_path),
        "base": src.base,
        "num_latent": K,
        "num_layers": n_layers,
        "data": str(options.data),
        "data_sha256": sha256_file(options.data),
        "pairs": str(pairs) if pairs is not None else None,
        "pairs_sha256": sha256_file(pairs) if pairs is not None else None,
        "patch_map_sha256": sha256_file(options.patch_map) if options.patch_map else None,
        "n_problems": N,
        "interventions": [x.label for x in sweep],
        "steer_categories": list(steer) if steer else None,
        "versions": package_versions(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "complete": False,
    }
    manifest = _open_output(out, manifest)
    parts_dir = out / PARTS
    parts_dir.mkdir(exist_ok=True)
    shards = _shards(N, options.shard_size)
    pending = [i for i, _ in enumerate(shards) if not (parts_dir / part_name(i)).is_file()]

    engine = iv.Engine(model, tokenizer, max_new_tokens=options.max_new_tokens)
    lengths = [engine.prompt_length(p.question) for p in problems]

    # Batches never cross a part, and the reference uses the very batches of the sweep, so that
    # the states an intervention copies in are bit-identical to its own clean run's.
    def batches(rows: Sequence[int]) -> list[list[int]]:
        plan = iv.plan_batches([lengths[i] for i in rows], options.batch_size)
        return [[rows[j] for j in b] for b in plan]

    part_batches = [batches(shard) for shard in shards]
    extra_batches = batches(range(N, len(problems)))
    if pending:
        log.info("%s: clean reference over %d problems", out, len(problems))
        ref = iv.clean_reference(
            engine, problems, [b for bs in part_batches for b in bs] + extra_batches, layers,
            reference_rows=list(range(N)),
        )  # fmt: skip
        if steer:
            ref.add_category_direction(*steer)
            ref.add_random_direction(options.seed)
        sources = iv.Sources(
            resample=iv.resample_sources(N, options.seed) if N >= 2 else None,
            patch=source_rows,
        )
        todo = sum(len(shards[i]) for i in pending)
        with stage_progress("intervene", enabled=True) as bar:
            task = bar.add_task("intervene", total=todo)
            for i in pending:
                rows: list[dict[str, Any]] = []
                runs = iv.run_interventions(
                    engine, problems, part_batches[i], sweep, ref, sources=sources
                )
                with contextlib.closing(runs):  # removes the hooks even on Ctrl-C
                    for outcomes in runs:
                        rows += iv.outcome_rows(outcomes, problems, ref)
                        bar.advance(task, len({o.problem for o in outcomes}))
                order = {pid: k for k, pid in enumerate(p.id for p in problems[:N])}
                labels = {x.label: k for k, x in enumerate([iv.Intervention("none"), *sweep])}
                rows.sort(key=lambda r: (order[r["id"]], labels[r["intervention"]]))
                _write_parquet(rows, parts_dir / part_name(i))
    return finalize(out, options, manifest, notes, engine.stats)


def finalize(
    out: Path, options: InterveneOptions, manifest: dict[str, Any], notes: list[str], stats
) -> Path:
    """Merge the parts into interventions.parquet, aggregate, draw, mark complete."""
    from opcircuits.report.figures import draw_causal

    parts = sorted((out / PARTS).glob("part-*.parquet"))
    n_parts = len(_shards(manifest["n_problems"], options.shard_size))
    if len(parts) != n_parts:
        raise OpcircuitsError(
            f"{len(parts)} of {n_parts} parts finished; rerun to resume", path=out
        )
    table = pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in parts])
    with atomic_path(out / TABLE) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=False, version="2.6")
    frame = table.to_pandas()
    result = summarize(frame, manifest, options, notes)
    result["figures"] = draw_causal(result, out)
    write_json_atomic(out / RESULT, result)
    if not manifest.get("complete"):
        write_json_atomic(out / MANIFEST, {**manifest, "complete": True})
    log.info("%s: %d rows (answers found: %s)", out / TABLE, len(frame), dict(stats))
    return out / RESULT


def summarize(
    frame: pd.DataFrame, manifest: dict[str, Any], options: InterveneOptions, notes: list[str]
) -> dict[str, Any]:
    """interventions.json: provenance, clean accuracy, effects with CIs, interactions, the
    accuracy-by-thoughts curve and the findings (sentences computed from the numbers)."""
    from opcircuits.analysis import causal
    from opcircuits.analysis.stats import wilson_interval
    from opcircuits.report.findings import causal as causal_findings

    effects, interactions = causal.effects(frame, n_boot=options.bootstrap, seed=options.seed)
    clean = frame[frame["kind"] == "none"]
    cats = sorted(clean["category"].astype(str).unique())
    clean_acc = {}
    for cat in [*cats, causal.ALL]:
        sub = clean if cat == causal.ALL else clean[clean["category"] == cat]
        w = wilson_interval(float(sub["correct"].sum()), len(sub))
        clean_acc[cat] = {"n": len(sub), "accuracy": w.mean, "ci": [w.low, w.high]}
    K = manifest["num_latent"]
    # Accuracy against the number of thoughts kept (truncation; K = the clean run), Wilson CIs.
    thoughts = []
    trunc = frame[frame["kind"].isin(["truncate", "none"])]
    for cat in [*cats, causal.ALL]:
        in_cat = trunc if cat == causal.ALL else trunc[trunc["category"] == cat]
        for k, sub in in_cat.groupby("thoughts"):
            w = wilson_interval(float(sub["correct"].sum()), len(sub))
            thoughts.append(
                {"thoughts": int(k), "category": cat, "n": len(sub), "accuracy": w.mean,
                 "ci": [w.low, w.high]}
            )  # fmt: skip
    result = {
        "provenance": {k: v for k, v in manifest.items() if k not in ("options", "complete")},
        "options": manifest["options"],
        "num_latent": K,
        "num_layers": manifest["num_layers"],
        "positions": ["bot"] + [f"latent_{k}" for k in range(1, K + 1)],
        "categories": cats,
        "clean": clean_acc,
        "thoughts": _round(thoughts),
        "effects": _round(effects),
        "interactions": _round(interactions),
        "notes": notes,
        "methods": causal.METHODS,
    }
    result["findings"] = causal_findings.sentences(result)
    return result


def _round(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Floats to 6 decimals (stable JSON); NaN never reaches the file."""

    def r(v: Any) -> Any:
        if isinstance(v, float):
            return None if not math.isfinite(v) else round(v, 6)
        if isinstance(v, list):
            return [r(x) for x in v]
        return v

    return [{k: r(v) for k, v in row.items()} for row in rows]
