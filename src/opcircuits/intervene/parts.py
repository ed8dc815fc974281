"""An intervene folder's layout: its own files, the parts a sweep resumes from, the manifest
that keeps a folder to one computation, and merging the parts into interventions.parquet.

A part proves what it holds, as a store's shards do: its parquet metadata (key `opcircuits`)
records the sweep's fingerprint (`sweep_sha256`, a hash of the manifest's identity: what the
numbers mean, inputs by content hash), its index, first row and problem ids, and the manifest's
`parts` records each finished part's sha256. On resume a part is kept only when all of these
match; any other (copied from another part or sweep, truncated, changed, its hash never
recorded) is removed and computed again, never merged.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import re
import shutil
from collections.abc import Iterator
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
    refuse_inside_inputs,
    refuse_same_files,
    sha256_file,
    write_json_atomic,
)

log = logging.getLogger(__package__)

FORMAT = "opcircuits-interventions/2"  # 2: routing controls, logit differences
MANIFEST = "manifest.json"
PARTS = "parts"
TABLE = "interventions.parquet"
RESULT = "interventions.json"
LOCK = ".manifest.lock"  # in parts/: the ranks of a multi-process sweep record parts under it
# Options that only change speed: a resumed sweep may use other values.
SPEED_ONLY = ("batch_size", "group_size", "device")
# Manifest keys that record where things came from, not what is computed: the inputs are
# identified by their content hashes (the same file by another path is the same sweep), the
# model by its resolved folders, weights hash and config.
PROVENANCE_ONLY = ("created", "complete", "speed", "parts", "data", "pairs", "model", "checkpoint",
                   "base")  # fmt: skip
PATH_OPTIONS = ("data", "pairs", "patch_map", "model", "checkpoint", "base")
META_KEY = b"opcircuits"

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
    rf"|{PARTS}/part-\d{{5,}}\.parquet|{PARTS}/{re.escape(LOCK)})$"
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


def write_parquet(
    rows: list[dict[str, Any]], path: Path, meta: dict[str, Any] | None = None
) -> None:
    """Deterministic parquet (fixed schema and options, no timestamps), written atomically;
    `meta` (what the part holds, `part_meta`) goes into its metadata."""
    for r in rows:  # a non-finite log-probability (underflow) is recorded as missing
        for key in ("logp_gold", "logp_source", "ld_first", "ld_answer"):
            if r.get(key) is not None and not math.isfinite(r[key]):
                r[key] = None
    schema = SCHEMA
    if meta is not None:
        schema = SCHEMA.with_metadata({META_KEY: json.dumps(meta, sort_keys=True)})
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=False, version="2.6")


def shards(n: int, size: int) -> list[range]:
    return [range(a, min(a + size, n)) for a in range(0, n, size)]


def refuse_inputs(out: Path, inputs: dict[str, Path | None], models: list[Path]) -> None:
    """The output folder may be no input file and may not lie inside the checkpoint's folders
    (`models`: a sweep written there would join the files the next load reads)."""
    given = {name: p for name, p in inputs.items() if p is not None}
    refuse_same_files({"--out": out}, {**given, "--model": models})
    refuse_inside_inputs({"--out": out}, {"--model": models})
    if out.exists() and not out.is_dir():
        raise OpcircuitsError("exists and is not a folder", path=out, field="out")


def identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a manifest says is computed (its provenance-only fields and paths left out)."""
    out = {k: v for k, v in manifest.items() if k not in PROVENANCE_ONLY}
    options = manifest.get("options")
    if isinstance(options, dict):
        out["options"] = {k: v for k, v in options.items() if k not in PATH_OPTIONS}
    return out


def fingerprint(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's `identity`: every part of the sweep records it."""
    text = json.dumps(identity(manifest), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = identity(old), identity(new)
    differ = [k for k in b if a.get(k) != b[k]]
    if "options" in differ and isinstance(a.get("options"), dict):
        names = sorted(k for k in {*a["options"], *b["options"]}
                       if a["options"].get(k) != b["options"].get(k))  # fmt: skip
        differ[differ.index("options")] = f"options ({', '.join(names)})"
    return differ


def open_output(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create the output folder, or check that an existing one holds the same computation (a
    folder whose sweep has no finished part yet holds nothing to keep: it is started afresh)."""
    path = out / MANIFEST
    if path.is_file():
        old = read_json_object(path)
        differ = _differences(old, manifest)
        if not differ:
            return old
        if old.get("parts") or any((out / PARTS).glob("part-*.parquet")):
            raise OpcircuitsError(
                f"holds a sweep with other {', '.join(differ)}; use another --out (or delete it)",
                path=out,
            )
        check_replaceable(out, is_intervene_file)
        log.info("%s: no part of its sweep was finished; starting this one instead", out)
        write_json_atomic(path, manifest)
        return manifest
    if out.is_dir() and any(out.iterdir()):
        raise OpcircuitsError(
            "is not empty and holds no intervene manifest; use another --out", path=out
        )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, manifest)
    return manifest


def part_meta(manifest: dict[str, Any], index: int, start: int, ids: list[str]) -> dict[str, Any]:
    """What part `index` holds: the sweep (its fingerprint), its place and its problems."""
    return {
        "format": FORMAT,
        "sweep_sha256": fingerprint(manifest),
        "part": index,
        "start": start,
        "n": len(ids),
        "ids": list(ids),
    }


def check_part(out: Path, manifest: dict[str, Any], index: int, start: int, ids: list[str]):
    """Why part `index` (rows from `start`, problems `ids`) cannot be kept, or None when it
    proves to be that part of this sweep: its metadata, rows and recorded sha256."""
    path = out / PARTS / part_name(index)
    parts = manifest.get("parts")
    recorded = parts.get(path.name) if isinstance(parts, dict) else None
    if recorded is None:
        return "its sha256 was never recorded in the manifest (written by another sweep?)"
    if sha256_file(path) != recorded:
        return "its sha256 differs from the one the manifest recorded (changed or replaced)"
    try:
        raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
        meta = json.loads(raw) if raw is not None else None
        held = pq.read_table(path, columns=["id"]).column("id").to_pylist()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        return f"unreadable ({type(exc).__name__})"
    want = part_meta(manifest, index, start, ids)
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in want.items()):
        return "its metadata names another sweep, part or problems"
    if [k for k, _ in itertools.groupby(held)] != list(ids):  # each problem's rows together
        return "its rows hold other problems than its metadata"
    return None


def kept_parts(out: Path, manifest: dict[str, Any], part_rows: list[range], ids: list[str]):
    """The parts finished earlier that prove to be this sweep's (`check_part`); every other part
    file is removed (a warning says why) and will be computed again. Returns the pending ones."""
    if not isinstance(manifest.get("parts"), dict):  # none yet (or not a record of ours)
        manifest["parts"] = {}
    parts = manifest["parts"]
    before = json.dumps(manifest, sort_keys=True)
    names = {part_name(i) for i in range(len(part_rows))}
    for stray in sorted((out / PARTS).glob("part-*.parquet")):
        if stray.name not in names:
            log.warning("%s: not a part of this sweep (%d parts); removed", stray, len(names))
            stray.unlink()
    pending = []
    for i, rows in enumerate(part_rows):
        path = out / PARTS / part_name(i)
        if not path.is_file():
            parts.pop(path.name, None)
            pending.append(i)
            continue
        why = check_part(out, manifest, i, rows.start, ids[rows.start : rows.stop])
        if why is not None:
            log.warning("%s: %s; removed, computing it again", path, why)
            path.unlink()
            parts.pop(path.name, None)
            pending.append(i)
    if pending and manifest.get("complete"):
        manifest["complete"] = False
    if json.dumps(manifest, sort_keys=True) != before:
        write_json_atomic(out / MANIFEST, manifest)
    return pending


def record_part(out: Path, manifest: dict[str, Any], index: int, *, shared: bool = False) -> None:
    """Record a part just written: its sha256 in the manifest (then it counts as finished).
    `shared`: other processes record their parts in the same manifest, so the entry is added to
    the manifest on disk under a lock, never by rewriting it from this process's copy."""
    name = part_name(index)
    sha = sha256_file(out / PARTS / name)
    manifest.setdefault("parts", {})[name] = sha
    if not shared:
        write_json_atomic(out / MANIFEST, manifest)
        return
    with _locked(out / PARTS / LOCK):
        on_disk = read_json_object(out / MANIFEST)
        if not isinstance(on_disk.get("parts"), dict):
            on_disk["parts"] = {}
        on_disk["parts"][name] = sha
        write_json_atomic(out / MANIFEST, on_disk)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if missing), released when the process
    dies. fcntl locks on a regular file also hold on NFS, where ranks on several machines meet."""
    import fcntl

    with open(path, "a") as fh:  # "a": never truncates
        fcntl.lockf(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(fh, fcntl.LOCK_UN)


def remove_lock(out: Path) -> None:
    """The lock file the ranks of a multi-process sweep shared (theirs, by its name in our
    layout), once every rank is done: the folder then holds what a single process leaves."""
    with contextlib.suppress(FileNotFoundError):
        (out / PARTS / LOCK).unlink()


def merge_parts(out: Path, manifest: dict[str, Any], part_rows: list[range], ids: list[str]):
    """Every part, in order, as one table written to interventions.parquet; a part that does
    not prove to be this sweep's (`check_part`) is an error saying to rerun."""
    paths = []
    for i, rows in enumerate(part_rows):
        path = out / PARTS / part_name(i)
        why = "missing" if not path.is_file() else check_part(
            out, manifest, i, rows.start, ids[rows.start : rows.stop]
        )  # fmt: skip
        if why is not None:
            raise OpcircuitsError(f"part {i}: {why}; rerun to compute it again", path=path)
        paths.append(path)
    table = pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in paths])
    with atomic_path(out / TABLE) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=False, version="2.6")
    return table
