"""Writing a thought store: the manifest, the resumable sharded `StoreWriter` (extraction's
writer), `write_store` (a whole store from numpy arrays) and `remove_store`."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import save_file

from opcircuits.errors import OpcircuitsError
from opcircuits.files import atomic_path, read_json_object, sha256_file, write_json_atomic
from opcircuits.store.reader import Store, open_store, shard_done, shard_meta
from opcircuits.store.schema import (
    DEFAULT_SHARD_SIZE,
    FORMAT_VERSION,
    INCOMPLETE_HINT,
    MANIFEST,
    MATCH_FIELDS,
    PARTS,
    RECORD_SCHEMA,
    RECORDS,
    SHARD_RE,
    STORE_DTYPES,
    as_float_array,
    cast_to_store_dtype,
    check_layers,
    check_names,
    part_name,
    records_table,
    shard_name,
)
from opcircuits.versions import package_versions

log = logging.getLogger(__name__)


def _write_parquet(table: pa.Table, path: Path) -> None:
    """Deterministic parquet: fixed options, no timestamps, written atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            compression_level=3,
            use_dictionary=True,
            write_statistics=False,
            version="2.6",
        )


def build_manifest(manifest: Mapping[str, Any], n_total: int, shard_size: int) -> dict[str, Any]:
    """Complete a caller's manifest dict with the store's own fields and defaults."""
    m = dict(manifest)
    m["layers"] = check_layers(m.get("layers"))
    m["positions"] = check_names(m.get("positions"), "positions")
    if m.get("layer_names") is not None:
        m["layer_names"] = check_names(m["layer_names"], "layer_names")
        if len(m["layer_names"]) != len(m["layers"]):
            raise OpcircuitsError(
                f"{len(m['layer_names'])} layer_names for {len(m['layers'])} layers",
                field="layer_names",
            )
    store_dtype = m.get("store_dtype") or "float16"
    if store_dtype not in STORE_DTYPES:
        raise OpcircuitsError(
            f"store_dtype {store_dtype!r} is not one of {sorted(STORE_DTYPES)} "
            "(numpy, and so the store, has no bfloat16; float16 keeps bfloat16's precision "
            "within its range)",
            field="store_dtype",
        )
    if isinstance(n_total, bool) or int(n_total) < 0:
        raise OpcircuitsError(f"n_total must be >= 0, got {n_total}", field="n_problems")
    if isinstance(shard_size, bool) or int(shard_size) < 1:
        raise OpcircuitsError(f"shard_size must be >= 1, got {shard_size}", field="shard_size")
    if m.get("num_latent") is None:
        m["num_latent"] = sum(1 for p in m["positions"] if p.startswith("latent_"))
    m.update(
        format_version=FORMAT_VERSION,
        store_dtype=store_dtype,
        n_problems=int(n_total),
        shard_size=int(shard_size),
        complete=False,
    )
    for key in (
        "model",
        "checkpoint",
        "weights_sha256",
        "base",
        "dtype",
        "hidden_size",
        "dataset",
        "dataset_sha256",
    ):
        m.setdefault(key, None)
    m.setdefault("versions", package_versions())
    m.setdefault("created", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    # As JSON will give it back (tuples → lists, Paths → str), so a resumed run compares equal.
    try:
        return json.loads(json.dumps(m, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise OpcircuitsError(f"manifest is not JSON-serialisable: {exc}") from exc


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serialisable")


def manifest_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Fields that make `old`'s data unusable for `new` (hidden_size only when both know it)."""
    diffs = [
        f"{k}: store has {old.get(k)!r}, run has {new.get(k)!r}"
        for k in MATCH_FIELDS
        if old.get(k) != new.get(k)
    ]
    a, b = old.get("hidden_size"), new.get("hidden_size")
    if a is not None and b is not None and a != b:
        diffs.append(f"hidden_size: store has {a!r}, run has {b!r}")
    return diffs


_MANIFEST_TMP = f".{MANIFEST}."


def _create_once(path: Path, text: str) -> None:
    """Create `path` holding `text` unless it exists, never visible half-written: several ranks
    may race here and exactly one file wins (a hard link fails if the name is taken)."""
    fd, name = tempfile.mkstemp(prefix=_MANIFEST_TMP, suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        umask = os.umask(0)  # mkstemp makes 0600 files; give the manifest the usual mode
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        os.link(tmp, path)
    except FileExistsError:
        pass  # another rank's manifest won; the caller compares it like any existing one
    finally:
        tmp.unlink(missing_ok=True)


class StoreWriter:
    """Resumable, sharded writing of a store (extraction's writer).

    Creating a writer on an existing store checks that its manifest matches `manifest` (an
    OpcircuitsError lists the differing fields — never mixed data), so rerunning the same command
    continues after the last finished shard. Several processes may write one store: rank r of W
    writes shards r, r+W, …; the main process calls `finalize` once all are done.
    """

    def __init__(
        self,
        path: str | Path,
        manifest: Mapping[str, Any],
        n_total: int,
        shard_size: int = DEFAULT_SHARD_SIZE,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.path = Path(path)
        if world_size < 1 or not 0 <= rank < world_size:
            raise OpcircuitsError(f"rank {rank} of world_size {world_size} is invalid")
        self.rank, self.world_size = rank, world_size
        wanted = build_manifest(manifest, n_total, shard_size)
        self.n_total, self.shard_size = wanted["n_problems"], wanted["shard_size"]
        self.n_shards = math.ceil(self.n_total / self.shard_size) if self.n_total else 0
        if self.path.exists() and not self.path.is_dir():
            raise OpcircuitsError("exists and is not a directory", path=self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest = self._create_or_check(wanted)

    def _create_or_check(self, wanted: dict[str, Any]) -> dict[str, Any]:
        mpath = self.path / MANIFEST
        if not mpath.exists():
            # Other ranks may be creating this store at this very moment: their manifest's
            # temporary file, then the manifest, then their shards appear. A file seen while no
            # manifest exists yet, other than such a temporary file, is someone else's.
            foreign = [p for p in self.path.iterdir() if not p.name.startswith(_MANIFEST_TMP)]
            if foreign and not mpath.exists():
                raise OpcircuitsError(
                    "directory is not empty and holds no store manifest; choose an empty or new "
                    "directory",
                    path=self.path,
                )
            _create_once(mpath, json.dumps(wanted, indent=2, sort_keys=True) + "\n")
        existing = read_json_object(mpath)
        diffs = manifest_differences(existing, wanted)
        if diffs:
            raise OpcircuitsError(
                "an existing store was made with different settings; use another --out or "
                "delete it. Differences: " + "; ".join(diffs),
                path=self.path,
            )
        if existing.get("versions") != wanted.get("versions"):
            log.warning(
                "resuming %s written with versions %s (now %s)",
                self.path,
                existing.get("versions"),
                wanted.get("versions"),
            )
        return existing

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def shard_bounds(self, index: int) -> tuple[int, int]:
        """Rows [start, stop) of shard `index`."""
        if not 0 <= index < self.n_shards:
            raise OpcircuitsError(f"shard {index} out of range (store has {self.n_shards} shards)")
        start = index * self.shard_size
        return start, min(start + self.shard_size, self.n_total)

    def done_shards(self) -> list[int]:
        if self.complete:
            return list(range(self.n_shards))
        return [i for i in range(self.n_shards) if shard_done(self.path, i)]

    def pending_shards(self, rank: int | None = None, world_size: int | None = None) -> list[int]:
        """Unfinished shards of this rank (r, r+W, r+2W, …), in order."""
        rank = self.rank if rank is None else rank
        world = self.world_size if world_size is None else world_size
        if self.complete:
            return []
        return [i for i in range(rank, self.n_shards, world) if not shard_done(self.path, i)]

    def write_shard(self, index: int, hidden: Any, latent_inputs: Any, records: Any) -> None:
        """Write shard `index` atomically: its records part, then its hidden file (commit)."""
        if self.complete:
            raise OpcircuitsError("store is already complete", path=self.path)
        start, stop = self.shard_bounds(index)
        n = stop - start
        m = self.manifest
        hidden = as_float_array(hidden, "hidden")
        P, L = len(m["positions"]), len(m["layers"])
        if hidden.ndim != 4 or hidden.shape[:3] != (n, P, L):
            raise OpcircuitsError(
                f"shard {index}: hidden has shape {list(hidden.shape)}, expected "
                f"[{n}, {P}, {L}, D] "
                f"(problems, positions {m['positions']}, layers {m['layers']}, hidden size)",
                field="hidden",
            )
        D = hidden.shape[3]
        if m.get("hidden_size") is not None and D != m["hidden_size"]:
            raise OpcircuitsError(
                f"shard {index}: hidden size {D}, manifest says {m['hidden_size']}", field="hidden"
            )
        tensors = {"hidden": cast_to_store_dtype(hidden, m["store_dtype"], "hidden")}
        if latent_inputs is not None:
            lat = as_float_array(latent_inputs, "latent_inputs")
            K = m.get("num_latent")
            if (
                lat.ndim != 3
                or lat.shape[0] != n
                or lat.shape[2] != D
                or (K is not None and lat.shape[1] != K)
            ):
                raise OpcircuitsError(
                    f"shard {index}: latent_inputs has shape {list(lat.shape)}, expected "
                    f"[{n}, {K}, {D}]",
                    field="latent_inputs",
                )
            tensors["latent_inputs"] = cast_to_store_dtype(lat, m["store_dtype"], "latent_inputs")
        table = records_table(records)
        if table.num_rows != n:
            raise OpcircuitsError(
                f"shard {index}: {table.num_rows} records for {n} problems", field="records"
            )
        ppath = self.path / PARTS / part_name(index)
        _write_parquet(table, ppath)
        meta = {
            "format_version": FORMAT_VERSION,
            "shard": index,
            "start": start,
            "n": n,
            "records_sha256": sha256_file(ppath),
        }
        # One metadata key: safetensors writes several in random order (bytes would differ).
        with atomic_path(self.path / shard_name(index)) as tmp:
            save_file(tensors, str(tmp), metadata={"opcircuits": json.dumps(meta, sort_keys=True)})
        log.debug("wrote shard %d (%d problems) of %s", index, n, self.path)

    def finalize(self) -> Store:
        """Merge the shards' records into records.parquet and mark the store complete."""
        if self.complete:
            shutil.rmtree(self.path / PARTS, ignore_errors=True)  # left by a crash after commit
            return open_store(self.path)
        missing = [i for i in range(self.n_shards) if not shard_done(self.path, i)]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (" …" if len(missing) > 20 else "")
            raise OpcircuitsError(
                f"cannot finalize: shards {shown} not written yet; {INCOMPLETE_HINT}",
                path=self.path,
            )
        tables, sizes, lat = [], set(), set()
        for i in range(self.n_shards):
            meta = shard_meta(self.path / shard_name(i))
            sizes.add(meta["shapes"]["hidden"][3])
            lat.add("latent_inputs" in meta["shapes"])
            tables.append(pq.read_table(self.path / PARTS / part_name(i)))
        if len(sizes) > 1 or len(lat) > 1:
            raise OpcircuitsError(
                f"shards disagree (hidden sizes {sorted(sizes)}, latent_inputs "
                f"present {sorted(lat)})",
                path=self.path,
            )
        table = (
            pa.concat_tables(tables, promote_options="permissive")
            if tables
            else RECORD_SCHEMA.empty_table()
        )
        ids = table.column("id").to_pylist()
        if len(set(ids)) != len(ids):
            raise OpcircuitsError("ids repeat across shards", path=self.path, field="id")
        _write_parquet(table.combine_chunks(), self.path / RECORDS)
        manifest = dict(self.manifest)
        if manifest.get("hidden_size") is None and sizes:
            manifest["hidden_size"] = sizes.pop()
        manifest["complete"] = True
        write_json_atomic(self.path / MANIFEST, manifest)
        self.manifest = manifest
        shutil.rmtree(self.path / PARTS, ignore_errors=True)
        return open_store(self.path)


def write_store(
    path: str | Path,
    hidden: Any,
    records: Any,
    layers: Sequence[int],
    positions: Sequence[str],
    latent_inputs: Any = None,
    *,
    overwrite: bool = False,
    **manifest: Any,
) -> Store:
    """Write a whole store at once — thoughts from any model, for analysis.

    hidden: [N, P, L, D] floats; records: DataFrame or list of dicts (N rows; `id` and `category`
    required, other standard columns filled with nulls); latent_inputs: [N, K, D] or None.
    Extra keyword arguments go into the manifest (`model`, `dataset`, `store_dtype`,
    `shard_size`, `layer_names`, …). An existing store at `path` is an error unless `overwrite`.
    """
    path = Path(path)
    hidden = as_float_array(hidden, "hidden")
    layers, positions = check_layers(layers), check_names(positions, "positions")
    table = records_table(records)
    n = table.num_rows
    if hidden.ndim != 4 or hidden.shape[:3] != (n, len(positions), len(layers)):
        raise OpcircuitsError(
            f"hidden has shape {list(hidden.shape)}, expected [{n}, {len(positions)}, "
            f"{len(layers)}, D] ({n} records, positions {positions}, layers {layers})",
            field="hidden",
        )
    if latent_inputs is not None:
        lat = as_float_array(latent_inputs, "latent_inputs")
        if lat.ndim != 3 or lat.shape[0] != n or lat.shape[2] != hidden.shape[3]:
            raise OpcircuitsError(
                f"latent_inputs has shape {list(lat.shape)}, expected [{n}, K, {hidden.shape[3]}]",
                field="latent_inputs",
            )
        manifest.setdefault("num_latent", lat.shape[1])
    if path.exists():
        if (path / MANIFEST).exists() and overwrite:
            remove_store(path)
        elif (path / MANIFEST).exists():
            raise OpcircuitsError(
                "a store already exists here; delete it or choose another path", path=path
            )
    shard_size = int(manifest.pop("shard_size", None) or max(DEFAULT_SHARD_SIZE, 1))
    manifest.setdefault("hidden_size", int(hidden.shape[3]))
    writer = StoreWriter(
        path, {**manifest, "layers": layers, "positions": positions}, n, shard_size
    )
    for i in writer.pending_shards():
        a, b = writer.shard_bounds(i)
        writer.write_shard(
            i,
            hidden[a:b],
            None if latent_inputs is None else lat[a:b],
            table.slice(a, b - a).to_pylist(),
        )
    return writer.finalize()


def remove_store(path: str | Path) -> None:
    """Delete a store's own files (never anything else in the directory)."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise OpcircuitsError("not a thought store (no manifest.json)", path=path)
    (path / MANIFEST).unlink()
    for p in path.iterdir():
        if p.name == RECORDS or SHARD_RE.match(p.name):
            p.unlink()
    shutil.rmtree(path / PARTS, ignore_errors=True)
