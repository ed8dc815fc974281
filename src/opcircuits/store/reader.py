"""Reading a thought store: `open_store` gives a `Store`, whose `hidden()` reads only the slices
asked for; `verify_store` also hashes every shard; `describe` summarises one for
`opcircuits store info`."""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import safe_open

from opcircuits.errors import OpcircuitsError
from opcircuits.files import read_json_object
from opcircuits.store.integrity import check_sha256, check_shard, read_shard_meta, shard_done
from opcircuits.store.schema import (
    FORMAT_VERSION,
    INCOMPLETE_HINT,
    MANIFEST,
    PARTS,
    RECORD_SCHEMA,
    RECORDS,
    check_layers,
    check_names,
    check_record_types,
    part_name,
    shard_name,
)

log = logging.getLogger(__name__)


class Store:
    """A thought store opened for reading (see `open_store`)."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        records: pd.DataFrame,
        shards: list[tuple[Path, int, int]],
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.records = records
        # (file, first row in this store, number of rows), in row order.
        self._shards = shards

    @property
    def layers(self) -> list[int]:
        return list(self.manifest["layers"])

    @property
    def layer_names(self) -> list[str] | None:
        names = self.manifest.get("layer_names")
        return list(names) if names else None

    @property
    def positions(self) -> list[str]:
        return list(self.manifest["positions"])

    @property
    def num_latent(self) -> int | None:
        return self.manifest.get("num_latent")

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["hidden_size"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (
            f"Store({str(self.path)!r}, n={len(self)}, positions={self.positions}, "
            f"layers={self.layers}, hidden_size={self.manifest.get('hidden_size')})"
        )

    def position_indices(self, positions: Any = None) -> list[int]:
        """Names (`"bot"`, `"latent_3"`) or indices into `.positions` → indices."""
        if positions is None:
            return list(range(len(self.positions)))
        if isinstance(positions, str | int | np.integer):
            positions = [positions]
        out = []
        for p in positions:
            if isinstance(p, str):
                if p not in self.positions:
                    raise OpcircuitsError(
                        f"unknown position {p!r}; this store has {self.positions}",
                        path=self.path,
                        field="positions",
                    )
                out.append(self.positions.index(p))
            elif isinstance(p, int | np.integer) and not isinstance(p, bool):
                n = len(self.positions)
                if not -n <= int(p) < n:
                    raise OpcircuitsError(
                        f"position index {p} out of range for {n} positions {self.positions}",
                        path=self.path,
                        field="positions",
                    )
                out.append(int(p) % n)
            else:
                raise OpcircuitsError(
                    f"position {p!r} is neither a name nor an index",
                    path=self.path,
                    field="positions",
                )
        return out

    def layer_indices(self, layers: Any = None) -> list[int]:
        """Layer numbers (HF hidden_states index, e.g. 8) or layer names/labels → indices."""
        if layers is None:
            return list(range(len(self.layers)))
        if isinstance(layers, str | int | np.integer):
            layers = [layers]
        names = self.layer_names or []
        out = []
        for x in layers:
            if isinstance(x, str) and x in names:
                out.append(names.index(x))
                continue
            if isinstance(x, str) and x.lstrip("-").isdigit():
                x = int(x)
            is_int = isinstance(x, int | np.integer) and not isinstance(x, bool)
            if is_int and int(x) in self.layers:
                out.append(self.layers.index(int(x)))
                continue
            known = f"{self.layers}" + (f" (named {names})" if names else "")
            raise OpcircuitsError(
                f"unknown layer {x!r}; this store has layers {known}",
                path=self.path,
                field="layers",
            )
        return out

    def hidden(self, positions: Any = None, layers: Any = None) -> np.ndarray:
        """Hidden states as float32 [N, P', L', D], reading only the selected slices from disk.

        `positions`: names or indices into `.positions`; `layers`: layer numbers (as in `.layers`)
        or names (`.layer_names`). A single value still gives a 4-D array.
        """
        p_idx = self.position_indices(positions)
        l_idx = self.layer_indices(layers)
        if not p_idx or not l_idx:
            raise OpcircuitsError(
                "select at least one position and one layer (None selects all)",
                path=self.path,
                field="positions" if not p_idx else "layers",
            )
        out = np.empty((len(self), len(p_idx), len(l_idx), self.hidden_size), dtype=np.float32)
        everything = p_idx == list(range(len(self.positions))) and l_idx == list(
            range(len(self.layers))
        )
        lo, hi = min(l_idx), max(l_idx) + 1
        rel = [i - lo for i in l_idx]
        for path, start, n in self._shards:
            with safe_open(str(path), framework="numpy") as f:
                if everything:
                    out[start : start + n] = f.get_tensor("hidden")
                    continue
                sl = f.get_slice("hidden")
                for j, p in enumerate(p_idx):
                    block = sl[:, p, lo:hi, :]  # [n, hi-lo, D]: one position, a span of layers
                    out[start : start + n, j] = block[:, rel]
        return out

    def latent_inputs(self) -> np.ndarray:
        """The K projected inputs fed back at latent steps 1..K, float32 [N, K, D]."""
        chunks = []
        for path, _, _ in self._shards:
            with safe_open(str(path), framework="numpy") as f:
                if "latent_inputs" not in f.keys():
                    raise OpcircuitsError(
                        "this store holds no latent_inputs", path=path, field="latent_inputs"
                    )
                chunks.append(f.get_tensor("latent_inputs").astype(np.float32))
        if not chunks:
            k = int(self.manifest.get("num_latent") or 0)
            return np.empty((0, k, self.hidden_size), dtype=np.float32)
        return np.concatenate(chunks, axis=0)


def open_store(path: str | Path, *, allow_incomplete: bool = False) -> Store:
    """Open a store for reading, checking that its files belong together (see `integrity`:
    every shard's run identity, layers, positions and ids, records.parquet's sha256; headers
    only, no shard is hashed — `verify_store` does that). An unfinished store is an error unless
    `allow_incomplete`, which gives the shards finished so far (in row order)."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise OpcircuitsError("not a thought store (no manifest.json)", path=path)
    manifest = read_json_object(mpath)
    n_total, size, complete = _check_manifest(manifest, mpath)
    if not complete and not allow_incomplete:
        raise OpcircuitsError(INCOMPLETE_HINT, path=path)
    n_shards = math.ceil(n_total / size) if n_total else 0
    ids: list[str] = []
    if complete:
        table = read_records(path / RECORDS, manifest["records_sha256"])
        ids = table.column("id").to_pylist()
        if len(ids) != n_total:
            raise OpcircuitsError(
                f"records hold {len(ids)} rows, the manifest says {n_total} problems",
                path=path / RECORDS,
            )

    shards: list[tuple[Path, int, int]] = []
    parts: list[pa.Table] = []
    row = 0
    for i in range(n_shards):
        start = i * size
        want = min(size, n_total - start)
        spath = path / shard_name(i)
        if complete:
            if not spath.is_file():
                raise OpcircuitsError(f"shard {spath.name} is missing", path=path)
            shard_ids, ids_from = ids[start : start + want], RECORDS
        elif shard_done(path, i):
            parts.append(read_records(path / PARTS / part_name(i)))
            shard_ids, ids_from = parts[-1].column("id").to_pylist(), "its records part"
        else:
            continue
        meta = read_shard_meta(spath)
        check_shard(meta, spath, i, manifest, shard_ids, ids_from)
        shards.append((spath, row, want))
        row += want
        d = meta["shapes"]["hidden"][3]
        if manifest.get("hidden_size") is None:
            manifest["hidden_size"] = d
        elif d != manifest["hidden_size"]:
            raise OpcircuitsError(
                f"shard has hidden size {d}, manifest says {manifest['hidden_size']}",
                path=spath,
                field="hidden",
            )

    if not complete:
        table = (
            pa.concat_tables(parts, promote_options="permissive")
            if parts
            else RECORD_SCHEMA.empty_table()
        )
        log.warning("%s is incomplete: %d of %d problems readable", path, row, n_total)
    if manifest.get("hidden_size") is None:
        manifest["hidden_size"] = 0
    return Store(path, manifest, table.to_pandas(), shards)


def _check_manifest(manifest: dict[str, Any], mpath: Path) -> tuple[int, int, bool]:
    """Refuse a manifest of another format or with fields of the wrong type; returns the number
    of problems, the shard size and whether the store is complete."""
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        older = " (written by an earlier opcircuits: extract or import it again)"
        raise OpcircuitsError(
            f"store format_version {version!r} is not supported (this opcircuits reads "
            f"{FORMAT_VERSION}){older if version == 1 else ''}",
            path=mpath,
            field="format_version",
        )
    for key in ("layers", "positions", "n_problems", "shard_size"):
        if key not in manifest:
            raise OpcircuitsError("manifest lacks this field", path=mpath, field=key)
    check_layers(manifest["layers"], mpath)
    check_names(manifest["positions"], "positions", mpath)
    for key, low in (("n_problems", 0), ("shard_size", 1), ("hidden_size", 0)):
        value = manifest.get(key)
        if key == "hidden_size" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise OpcircuitsError(
                f"must be an integer >= {low}, got {value!r}", path=mpath, field=key
            )
    complete = manifest.get("complete")
    if not isinstance(complete, bool):
        raise OpcircuitsError(
            f"must be true or false, got {complete!r}", path=mpath, field="complete"
        )
    if complete:
        n_total, size = manifest["n_problems"], manifest["shard_size"]
        n_shards = math.ceil(n_total / size) if n_total else 0
        hashes = manifest.get("shards_sha256")
        if not (
            isinstance(hashes, list)
            and len(hashes) == n_shards
            and all(isinstance(h, str) for h in hashes)
        ):
            raise OpcircuitsError(
                f"must list the sha256 of each of the {n_shards} shards",
                path=mpath,
                field="shards_sha256",
            )
        if not isinstance(manifest.get("records_sha256"), str):
            raise OpcircuitsError(
                "must be the sha256 of records.parquet", path=mpath, field="records_sha256"
            )
    return manifest["n_problems"], manifest["shard_size"], complete


def read_records(path: Path, sha256: str | None = None) -> pa.Table:
    """A records file (records.parquet or a part), checked against `sha256` when given and
    against the schema; any fault is an error naming the file (read once: the hash is cheap)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise OpcircuitsError("records file is missing", path=path) from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise OpcircuitsError(
            "the file changed after the store was written (its sha256 differs from the "
            "manifest's records_sha256)",
            path=path,
            field="records_sha256",
        )
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise OpcircuitsError(
            f"not a readable parquet file, truncated or corrupt ({exc})", path=path
        ) from exc
    check_record_types(table, path)
    return table


def verify_store(path: str | Path) -> Store:
    """`open_store`'s checks plus the sha256 of every shard against the manifest's
    `shards_sha256` (reads every byte); an error names the first shard that differs."""
    store = open_store(path)
    for (spath, _, _), expected in zip(store._shards, store.manifest["shards_sha256"], strict=True):
        check_sha256(spath, expected, "the manifest's shards_sha256")
    return store


def describe(store: Store) -> dict[str, Any]:
    """Manifest plus array shapes, for `opcircuits store info`."""
    shapes: dict[str, list[int]] = {}
    for spath, _, _ in store._shards:
        for k, shape in read_shard_meta(spath)["shapes"].items():
            if k in shapes:
                shapes[k][0] += shape[0]
            else:
                shapes[k] = list(shape)
    return {
        "path": str(store.path),
        "manifest": store.manifest,
        "shapes": shapes,
        "n_shards": len(store._shards),
        "records_columns": list(store.records.columns),
    }
