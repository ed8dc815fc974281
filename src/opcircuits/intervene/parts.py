"""An intervene folder's layout: its own files, the parts a sweep resumes from, the manifest
that keeps a folder to one computation, and merging the parts into interventions.parquet."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from opcircuits.errors import OpcircuitsError
from opcircuits.files import (
    atomic_path,
    check_replaceable,
    in_layout,
    read_json_object,
    write_json_atomic,
)

FORMAT = "opcircuits-interventions/2"  # 2: routing controls, logit differences
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
        ("ld_first", pa.float64()),
        ("ld_answer", pa.float64()),
        ("ld_partner_first", pa.float64()),
        ("ld_partner_answer", pa.float64()),
        ("changed_step", pa.int64()),
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


def write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    """Deterministic parquet (fixed schema and options, no timestamps), written atomically."""
    for r in rows:  # a non-finite log-probability (underflow) is recorded as missing
        for key in ("logp_gold", "logp_source", "ld_first", "ld_answer"):
            if r.get(key) is not None and not math.isfinite(r[key]):
                r[key] = None
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=False, version="2.6")


def shards(n: int, size: int) -> list[range]:
    return [range(a, min(a + size, n)) for a in range(0, n, size)]


def refuse_inputs(out: Path, inputs: list[Path | None]) -> None:
    for p in inputs:
        if p is not None and out.resolve() == Path(p).resolve():
            raise OpcircuitsError("the output folder is an input of this command", path=out)
    if out.exists() and not out.is_dir():
        raise OpcircuitsError("exists and is not a folder", path=out, field="out")


def open_output(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
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


def merge_parts(out: Path, n_problems: int, shard_size: int) -> pa.Table:
    """Every part, in order, as one table written to interventions.parquet; an unfinished sweep
    (a part missing) is an error saying to rerun."""
    parts = sorted((out / PARTS).glob("part-*.parquet"))
    n_parts = len(shards(n_problems, shard_size))
    if len(parts) != n_parts:
        raise OpcircuitsError(
            f"{len(parts)} of {n_parts} parts finished; rerun to resume", path=out
        )
    table = pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in parts])
    with atomic_path(out / TABLE) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=False, version="2.6")
    return table
