"""Reading a thought store: `open_store` gives a `Store`, whose `hidden()` reads only the slices
asked for; `describe` summarises one for `opcircuits store info`."""

from __future__ import annotations

import json
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
from opcircuits.files import read_json_object, sha256_file
from opcircuits.store.schema import (
    FORMAT_VERSION,
    INCOMPLETE_HINT,
    MANIFEST,
    PARTS,
    RECORD_SCHEMA,
    RECORDS,
    check_layers,
    check_names,
    part_name,
    shard_name,
)

log = logging.getLogger(__name__)


def shard_meta(path: Path) -> dict[str, Any]:
    """The opcircuits metadata and tensor shapes of one shard file (reads the header only)."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get("opcircuits", "{}"))
            meta["shapes"] = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except OpcircuitsError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise OpcircuitsError(f"unreadable shard ({exc})", path=path) from exc
    return meta


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
    """Open a store for reading. An unfinished store is an error unless `allow_incomplete`, which
    gives the shards finished so far (in row order)."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise OpcircuitsError("not a thought store (no manifest.json)", path=path)
    manifest = read_json_object(mpath)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise OpcircuitsError(
            f"store format_version {version!r} is not supported (this opcircuits reads "
            f"{FORMAT_VERSION})",
            path=mpath,
            field="format_version",
        )
    for key in ("layers", "positions", "n_problems", "shard_size"):
        if key not in manifest:
            raise OpcircuitsError("manifest lacks this field", path=mpath, field=key)
    layers = check_layers(manifest["layers"], mpath)
    positions = check_names(manifest["positions"], "positions", mpath)
    n_total, size = int(manifest["n_problems"]), int(manifest["shard_size"])
    complete = bool(manifest.get("complete"))
    if not complete and not allow_incomplete:
        raise OpcircuitsError(INCOMPLETE_HINT, path=path)
    n_shards = math.ceil(n_total / size) if n_total else 0

    shards: list[tuple[Path, int, int]] = []
    parts: list[pa.Table] = []
    row = 0
    for i in range(n_shards):
        want = min(size, n_total - i * size)
        spath = path / shard_name(i)
        if complete:
            if not spath.is_file():
                raise OpcircuitsError(f"shard {spath.name} is missing", path=path)
        elif not shard_done(path, i):
            continue
        meta = shard_meta(spath)
        shape = meta["shapes"].get("hidden")
        expect = [want, len(positions), len(layers)]
        if shape is None or shape[:3] != expect:
            raise OpcircuitsError(
                f"shard holds hidden {shape}, manifest says [{want}, {len(positions)}, "
                f"{len(layers)}, D]",
                path=spath,
            )
        if not complete:
            parts.append(pq.read_table(path / PARTS / part_name(i)))
        shards.append((spath, row, want))
        row += want
        if manifest.get("hidden_size") is None:
            manifest["hidden_size"] = shape[3]
        elif shape[3] != manifest["hidden_size"]:
            raise OpcircuitsError(
                f"shard has hidden size {shape[3]}, manifest says {manifest['hidden_size']}",
                path=spath,
            )

    if complete:
        rpath = path / RECORDS
        if not rpath.is_file():
            raise OpcircuitsError("records.parquet is missing", path=path)
        table = pq.read_table(rpath)
    else:
        table = (
            pa.concat_tables(parts, promote_options="permissive")
            if parts
            else (RECORD_SCHEMA.empty_table())
        )
        log.warning("%s is incomplete: %d of %d problems readable", path, row, n_total)
    if table.num_rows != row:
        raise OpcircuitsError(f"records hold {table.num_rows} rows, shards {row}", path=path)
    if manifest.get("hidden_size") is None:
        manifest["hidden_size"] = 0
    return Store(path, manifest, table.to_pandas(), shards)


def shard_done(path: Path, index: int) -> bool:
    """Shard `index` is done when its hidden file exists and names its records part's hash."""
    spath, ppath = path / shard_name(index), path / PARTS / part_name(index)
    if not (spath.is_file() and ppath.is_file()):
        return False
    try:
        meta = shard_meta(spath)
    except OpcircuitsError:
        return False
    return meta.get("records_sha256") == sha256_file(ppath)


def describe(store: Store) -> dict[str, Any]:
    """Manifest plus array shapes, for `opcircuits store info`."""
    shapes: dict[str, list[int]] = {}
    for spath, _, _ in store._shards:
        for k, shape in shard_meta(spath)["shapes"].items():
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
