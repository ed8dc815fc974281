"""Writing a thought store: the resumable sharded `StoreWriter` (extraction's writer),
`write_store` (a whole store from numpy arrays) and `remove_store`. The manifest is built in
`manifest`; what each shard records about itself, and how it is checked, in `integrity`."""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import SafetensorError
from safetensors.numpy import save_file

from opcircuits.errors import OpcircuitsError
from opcircuits.files import (
    atomic_path,
    check_replaceable,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)
from opcircuits.scratch import sweep_stale
from opcircuits.store.integrity import (
    check_sha256,
    check_shard,
    read_shard_meta,
    shard_done,
    shard_metadata,
)
from opcircuits.store.manifest import build_manifest, create_or_check_manifest
from opcircuits.store.reader import Store, open_store, read_records
from opcircuits.store.schema import (
    DEFAULT_SHARD_SIZE,
    INCOMPLETE_HINT,
    MANIFEST,
    PARTS,
    RECORD_SCHEMA,
    RECORDS,
    as_float_array,
    cast_to_store_dtype,
    check_finite,
    check_layers,
    check_names,
    hash_name,
    is_store_file,
    part_name,
    records_table,
    shard_name,
)

log = logging.getLogger(__name__)

# A temporary file of a shard write is this old only if the write was killed: swept on resume (a
# fresh one may belong to a second command writing the same store).
STALE_AFTER = 600.0
# How safetensors reports the OS error that stopped a write: "... (os error 28)".
_OS_ERROR_RE = re.compile(r"\(os error (\d+)\)")


def _save_safetensors(tensors: dict[str, np.ndarray], path: Path, metadata: dict) -> None:
    """`save_file`, with the OS error behind a failed write (a full disk, no permission) raised
    as the OSError it is: safetensors raises its own error type, which `files.writing` (one
    line naming the shard and the free space) would not recognise."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        found = _OS_ERROR_RE.search(str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code)) from exc


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


def _sites(m: Mapping[str, Any]) -> list[str]:
    """`position@layer` names of the hidden states' [P, L] cells (the analysis' site names)."""
    return [f"{p}@{layer}" for p in m["positions"] for layer in m["layers"]]


class StoreWriter:
    """Resumable, sharded writing of a store (extraction's writer).

    Creating a writer on an existing store checks that its manifest matches `manifest` (an
    OpcircuitsError lists the differing fields — never mixed data), so rerunning the same command
    continues after the last finished shard; the main process (rank 0) first re-checks every
    shard it keeps (metadata against the manifest, ids, and the file's sha256). Several processes
    may write one store: rank r of W writes shards r, r+W, …; the main process calls `finalize`
    once all are done. `ids`, the problems' ids in order, lets every shard's records be checked
    against the problem list.
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
        ids: Sequence[str] | None = None,
    ) -> None:
        self.path = Path(path)
        if world_size < 1 or not 0 <= rank < world_size:
            raise OpcircuitsError(f"rank {rank} of world_size {world_size} is invalid")
        self.rank, self.world_size = rank, world_size
        wanted = build_manifest(manifest, n_total, shard_size)
        self.n_total, self.shard_size = wanted["n_problems"], wanted["shard_size"]
        self.n_shards = math.ceil(self.n_total / self.shard_size) if self.n_total else 0
        self.ids = None if ids is None else [str(x) for x in ids]
        if self.ids is not None and len(self.ids) != self.n_total:
            raise OpcircuitsError(f"{len(self.ids)} ids for {self.n_total} problems", field="id")
        if self.path.exists() and not self.path.is_dir():
            raise OpcircuitsError("exists and is not a directory", path=self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        if rank == 0:  # before the other ranks start writing (they wait for this one)
            sweep_stale(self.path, older_than=STALE_AFTER, recursive=True)
        self.manifest = create_or_check_manifest(self.path, wanted)
        if rank == 0 and not self.complete:
            for i in self.done_shards():
                self._check_kept(i)

    def _check_kept(self, index: int) -> None:
        """A shard from an earlier run of this command, kept on resume: its metadata must match
        the manifest and its records (and the problem list), and its bytes the hash recorded
        when it was written. An error names the shard; deleting it has it written again."""
        spath, hpath = self.path / shard_name(index), self.path / PARTS / hash_name(index)
        meta = read_shard_meta(spath)
        check_shard(meta, spath, index, self.manifest, self._part_ids(index), "its records part")
        if self.ids is not None:
            a, b = self.shard_bounds(index)
            check_shard(meta, spath, index, self.manifest, self.ids[a:b], "the problem list")
        check_sha256(spath, hpath.read_text().strip(), f"{PARTS}/{hpath.name}")

    def _part_ids(self, index: int) -> list[str]:
        return read_records(self.path / PARTS / part_name(index)).column("id").to_pylist()

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
        """Write shard `index` atomically: its records part, its hash file, then its hidden file
        (the commit). Non-finite states are refused (an error naming the problems and sites)."""
        if self.complete:
            raise OpcircuitsError("store is already complete", path=self.path)
        start, stop = self.shard_bounds(index)
        n, m, at = stop - start, self.manifest, f"shard {index}: "
        arrays = self._arrays(index, n, hidden, latent_inputs)
        table = records_table(records)
        if table.num_rows != n:
            raise OpcircuitsError(f"{at}{table.num_rows} records for {n} problems", field="records")
        ids = table.column("id").to_pylist()
        if self.ids is not None and ids != self.ids[start:stop]:
            j = next(
                j for j, (a, b) in enumerate(zip(ids, self.ids[start:stop], strict=True)) if a != b
            )
            raise OpcircuitsError(
                f"{at}row {start + j} holds problem {ids[j]!r}, the problem list has "
                f"{self.ids[start + j]!r} there",
                field="id",
            )
        sites = {"hidden": _sites(m)}
        if "latent_inputs" in arrays:
            sites["latent_inputs"] = [f"latent_inputs[{k}]" for k in range(m["num_latent"])]
        tensors = {}
        for what, arr in arrays.items():
            check_finite(arr, ids, sites[what], what, prefix=at)
            tensors[what] = cast_to_store_dtype(arr, m["store_dtype"], what)
        ppath = self.path / PARTS / part_name(index)
        _write_parquet(table, ppath)
        metadata = shard_metadata(m, index, start, ids, sha256_file(ppath))
        needed = sum(t.nbytes for t in tensors.values())
        with atomic_path(self.path / shard_name(index), needed=needed) as tmp:
            _save_safetensors(tensors, tmp, metadata)
            # the shard's own hash, recorded before it counts as written (see `integrity`)
            write_text_atomic(self.path / PARTS / hash_name(index), sha256_file(tmp) + "\n")
        log.debug("wrote shard %d (%d problems) of %s", index, n, self.path)

    def _arrays(self, index: int, n: int, hidden: Any, latent_inputs: Any) -> dict[str, np.ndarray]:
        """`hidden` [n, P, L, D] and `latent_inputs` [n, K, D] (or None) of shard `index` as
        float arrays of the manifest's shapes."""
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
        if latent_inputs is None:
            return {"hidden": hidden}
        lat = as_float_array(latent_inputs, "latent_inputs")
        K = m["num_latent"]
        if lat.ndim != 3 or lat.shape != (n, K, D):
            raise OpcircuitsError(
                f"shard {index}: latent_inputs has shape {list(lat.shape)}, expected "
                f"[{n}, {K}, {D}]",
                field="latent_inputs",
            )
        return {"hidden": hidden, "latent_inputs": lat}

    def finalize(self) -> Store:
        """Check every shard against the manifest and its records, merge the records into
        records.parquet, record every file's sha256 in the manifest and mark it complete."""
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
        tables, hashes, sizes, lat = [], [], set(), set()
        for i in range(self.n_shards):
            spath = self.path / shard_name(i)
            meta = read_shard_meta(spath)
            tables.append(read_records(self.path / PARTS / part_name(i)))
            ids = tables[-1].column("id").to_pylist()
            check_shard(meta, spath, i, self.manifest, ids, "its records part")
            hashes.append((self.path / PARTS / hash_name(i)).read_text().strip())
            sizes.add(meta["shapes"]["hidden"][3])
            lat.add("latent_inputs" in meta["shapes"])
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
        manifest["shards_sha256"] = hashes
        manifest["records_sha256"] = sha256_file(self.path / RECORDS)
        cut = (
            table.column("answer_truncated").to_pylist()
            if "answer_truncated" in table.column_names
            else []
        )
        if any(v is not None for v in cut):  # recorded by extraction; null for other sources
            manifest["n_answer_truncated"] = sum(bool(v) for v in cut)
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
    ids = table.column("id").to_pylist()
    check_finite(hidden, ids, _sites({"positions": positions, "layers": layers}), "hidden")
    if latent_inputs is not None:
        check_finite(
            lat, ids, [f"latent_inputs[{k}]" for k in range(lat.shape[1])], "latent_inputs"
        )
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
        path, {**manifest, "layers": layers, "positions": positions}, n, shard_size, ids=ids
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
    """Delete a store's own files. Anything else in the folder is an error naming it, and then
    nothing is removed."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise OpcircuitsError("not a thought store (no manifest.json)", path=path)
    check_replaceable(path, is_store_file)
    for child in path.iterdir():  # every file here is the store's by now
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
