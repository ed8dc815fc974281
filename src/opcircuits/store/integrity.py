"""How a store's files prove that they belong together.

Every shard's safetensors metadata (one JSON object under the key ``opcircuits``) says what it
holds: the store's run identity (`run_sha256`, a hash of the manifest's `MATCH_FIELDS`: model,
checkpoint, weights, dataset, layers, positions, sizes and extraction settings), its `layers` and
`positions`, the `ids` of its problems in row order, its place (`shard`, `start`, `n`) and, for
resuming, the sha256 of its records part. While a store is written, `parts/hidden-NNNNN.sha256`
holds each shard file's own sha256 (written before the shard is committed); `finalize` moves them
into the manifest's `shards_sha256`, beside `records_sha256` of records.parquet.

Two levels of checking: `check_shard` compares a shard's metadata and shapes with the manifest and
the records (header reads only: every open, finalize and resume); `check_sha256` hashes the whole
file (`verify_store`, and resume for the shards it keeps). A shard copied from another run,
relabelled layers or positions, or reordered records fail the first; changed tensor bytes only the
second.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safetensors import safe_open

from opcircuits.errors import OpcircuitsError
from opcircuits.files import sha256_file
from opcircuits.store.schema import (
    FORMAT_VERSION,
    MATCH_FIELDS,
    PARTS,
    hash_name,
    part_name,
    shard_name,
)

META_KEY = "opcircuits"


def run_identity(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest fields that decide what a store's numbers mean (`MATCH_FIELDS`)."""
    fields = {k: manifest.get(k) for k in MATCH_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()


def store_fingerprint(manifest: Mapping[str, Any]) -> str:
    """sha256 naming one complete store's contents (its run identity and the sha256 of its
    records and every shard): what a file derived from a store (a tuned lens) records, so that it
    is never applied to another store."""
    fields = {
        "run_sha256": run_identity(manifest),
        "records_sha256": manifest.get("records_sha256"),
        "shards_sha256": manifest.get("shards_sha256"),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()


def shard_metadata(
    manifest: Mapping[str, Any], index: int, start: int, ids: Sequence[str], records_sha256: str
) -> dict[str, str]:
    """The safetensors metadata of a shard (one key: safetensors orders several at random, and
    the bytes of equal stores must be equal)."""
    meta = {
        "format_version": FORMAT_VERSION,
        "shard": index,
        "start": start,
        "n": len(ids),
        "run_sha256": run_identity(manifest),
        "layers": list(manifest["layers"]),
        "positions": list(manifest["positions"]),
        "ids": list(ids),
        "records_sha256": records_sha256,
    }
    return {META_KEY: json.dumps(meta, sort_keys=True, ensure_ascii=False)}


def read_shard_meta(path: Path) -> dict[str, Any]:
    """The opcircuits metadata and tensor shapes of one shard file (reads the header only)."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
            meta["shapes"] = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise OpcircuitsError(
            f"unreadable shard, truncated or not a safetensors file ({exc})", path=path
        ) from exc
    if not isinstance(meta, dict):
        raise OpcircuitsError("shard metadata is not a JSON object", path=path)
    return meta


def shard_done(path: Path, index: int) -> bool:
    """Shard `index` of an unfinished store is done when its hidden file, records part and hash
    file exist and the hidden file names its records part's hash."""
    spath, ppath = path / shard_name(index), path / PARTS / part_name(index)
    if not (spath.is_file() and ppath.is_file() and (path / PARTS / hash_name(index)).is_file()):
        return False
    try:
        meta = read_shard_meta(spath)
    except OpcircuitsError:
        return False
    return meta.get("records_sha256") == sha256_file(ppath)


def check_shard(
    meta: Mapping[str, Any],
    path: Path,
    index: int,
    manifest: Mapping[str, Any],
    ids: Sequence[str],
    ids_from: str,
) -> None:
    """Refuse a shard whose metadata or shapes disagree with the manifest or with `ids` (the
    problems its rows should hold, read from `ids_from`); the error names the shard and field."""

    def bad(message: str, field: str) -> OpcircuitsError:
        return OpcircuitsError(message, path=path, field=field)

    if meta.get("format_version") != FORMAT_VERSION:
        raise bad(
            f"shard format_version {meta.get('format_version')!r}, this opcircuits writes "
            f"{FORMAT_VERSION}: the shard is not from this store",
            "format_version",
        )
    start = index * int(manifest["shard_size"])
    if (meta.get("shard"), meta.get("start")) != (index, start):
        raise bad(
            f"shard holds shard {meta.get('shard')!r} (rows from {meta.get('start')!r}); "
            f"this file name is shard {index} (rows from {start})",
            "shard",
        )
    for key in ("layers", "positions"):
        if meta.get(key) != list(manifest[key]):
            raise bad(f"shard holds {key} {meta.get(key)}, the manifest says {manifest[key]}", key)
    if meta.get("run_sha256") != run_identity(manifest):
        raise bad(
            "shard was written by another run: its run identity differs from the one of this "
            "store's manifest (model, checkpoint, weights, dataset, sizes or settings)",
            "run_sha256",
        )
    held = meta.get("ids")
    want = min(int(manifest["shard_size"]), int(manifest["n_problems"]) - start)
    if not isinstance(held, list) or len(held) != want or len(ids) != want:
        n = len(held) if isinstance(held, list) else None
        raise bad(
            f"shard holds {n} problem ids and {ids_from} {len(ids)}; the manifest's sizes make "
            f"{want}",
            "ids",
        )
    for j, (a, b) in enumerate(zip(ids, held, strict=True)):
        if a != b:
            raise bad(
                f"row {start + j} is problem {a!r} in {ids_from} but {b!r} in the shard "
                "(records reordered, or a shard of other problems)",
                "ids",
            )
    shapes = meta.get("shapes", {})
    shape = shapes.get("hidden")
    expect = [want, len(manifest["positions"]), len(manifest["layers"])]
    if shape is None or len(shape) != 4 or shape[:3] != expect:
        raise bad(
            f"shard holds hidden {shape}, the manifest says [{expect[0]}, {expect[1]}, "
            f"{expect[2]}, D]",
            "hidden",
        )
    lat = shapes.get("latent_inputs")
    if lat is not None and (len(lat) != 3 or lat[0] != want or lat[2] != shape[3]):
        raise bad(
            f"shard holds latent_inputs {lat}, expected [{want}, K, {shape[3]}]", "latent_inputs"
        )


def check_sha256(path: Path, expected: str, recorded_in: str) -> None:
    """Hash the whole file; refuse it when it differs from what `recorded_in` recorded."""
    got = sha256_file(path)
    if got != expected:
        raise OpcircuitsError(
            f"the file changed after it was written: its sha256 is {got[:12]}…, {recorded_in} "
            f"recorded {str(expected)[:12]}…",
            path=path,
            field="sha256",
        )
