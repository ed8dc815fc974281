"""The sweep's inputs: the problems, their counterfactual partners (a pairs file beside the data,
or `--pairs`) and which row each problem is patched from (`pair_id`, or a `--patch-map`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError
from opcircuits.files import read_json_object
from opcircuits.options import InterveneOptions


@dataclass
class Inputs:
    """The problems (data order) and partners, as records and as `Problem`s (problems first)."""

    records: list[dict[str, Any]]
    problems: list[Any]
    source_rows: list[int | None]  # per problem: its patch source's row in `problems`


def read_records(path: Path) -> list[dict[str, Any]]:
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


def read_inputs(options: InterveneOptions, pairs: Path | None) -> Inputs:
    """The problems of `--data`, the partners of `pairs` (only when patching) and the patch
    sources; errors name the file and line or problem."""
    records = read_records(options.data)
    if not records:
        raise OpcircuitsError("no problems", path=options.data)
    # Partners are only patch sources: without patching they would only cost clean runs.
    patching = {"patch", "path"} & set(options.kinds)
    partners = read_records(pairs) if pairs is not None and patching else []
    ids = {str(r["id"]) for r in records}
    reused = [str(r["id"]) for r in partners if str(r["id"]) in ids]
    if reused:
        raise OpcircuitsError(
            f"{len(reused)} partner(s) reuse ids of problems in --data ({_names(reused)}); a "
            "partner needs an id of its own (pair_id links it to its problem, and pairs inside "
            "the data file need no pairs file)",
            path=pairs,
            field="id",
        )
    patch_map = _read_patch_map(options.patch_map) if options.patch_map is not None else None
    source_rows = patch_sources(records, partners, patch_map, options.patch_map or pairs)
    problems = _problems(records, options.data) + _problems(partners, pairs or options.data)
    return Inputs(records, problems, source_rows)


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
        seen: set[str] = set()
        twice = [i for i in (str(r["id"]) for r in rows) if i in seen or seen.add(i)]
        raise OpcircuitsError(
            f"ids appear both in the data and in the partners: {_names(twice)}", path=where
        )
    if patch_map is not None:
        problem_ids = {str(r["id"]) for r in records}
        unknown = [str(k) for k in patch_map if str(k) not in problem_ids]
        if unknown:
            raise OpcircuitsError(
                f"{len(unknown)} key(s) name no problem of --data: {_names(unknown)}",
                path=where,
                field=unknown[0],
            )
        out: list[int | None] = []
        for r in records:
            src = patch_map.get(str(r["id"]))
            if src is not None and str(src) not in index:
                raise OpcircuitsError(
                    f"source {src!r} of {r['id']!r} is neither a problem nor a partner",
                    path=where,
                    field=str(r["id"]),
                )
            if src is not None and str(src) == str(r["id"]):
                raise OpcircuitsError(
                    f"{r['id']!r} is patched from itself: a self-patch changes nothing, yet would "
                    "be reported as following its source; give another source or leave it out",
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


def _names(ids: list[str]) -> str:
    return ", ".join(map(repr, ids[:5])) + (f" … ({len(ids)} in all)" if len(ids) > 5 else "")


def _read_patch_map(path: Path) -> dict[str, str]:
    data = read_json_object(path)
    bad = [k for k, v in data.items() if not isinstance(v, str)]
    if bad:
        raise OpcircuitsError(
            "every value must be a problem id (a string)", path=path, field=bad[0]
        )
    return data
