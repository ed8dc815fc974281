"""The thought store: a directory of continuous thoughts that extraction writes and analysis reads.

Layout (format_version 1)::

    STORE/
      manifest.json              what produced the data (model, layers, positions, dataset, …)
      records.parquet            one row per problem, in dataset order
      hidden-00000.safetensors   `hidden` [n, P, L, D] and `latent_inputs` [n, K, D] of shard 0
      hidden-00001.safetensors   ...
      parts/records-00000.parquet  (only while writing: shard 0's records, merged at finalize)

Shard i holds problems [i*shard_size, (i+1)*shard_size). A shard is written as its records part
first, then its hidden file (atomic rename, the commit point), whose safetensors metadata holds the
sha256 of the records part — so a shard counts as done only when both files exist and belong
together. `finalize` merges the parts into records.parquet and sets `complete` in the manifest.

Pure numpy/pyarrow: this module must not import torch (analysis reads stores without it).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from safetensors import safe_open
from safetensors.numpy import save_file

from opcircuits.errors import OpcircuitsError
from opcircuits.files import atomic_path, read_json_object, sha256_file, write_json_atomic
from opcircuits.versions import package_versions

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RECORDS = "records.parquet"
PARTS = "parts"
DEFAULT_SHARD_SIZE = 256
STORE_DTYPES = {"float16": np.float16, "float32": np.float32}
INCOMPLETE_HINT = "extraction not finished; rerun the extract command to resume"

# records.parquet columns, in order, with fixed types (so every shard and every run agrees).
RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("category", pa.string()),
        ("question", pa.string()),
        ("gold", pa.float64()),
        ("answer_text", pa.string()),
        ("predicted", pa.float64()),
        ("correct", pa.bool_()),
        ("n_steps", pa.int64()),
        ("ops_used", pa.list_(pa.string())),
        ("lens_top_ids", pa.list_(pa.list_(pa.int64()))),
        ("lens_top_tokens", pa.list_(pa.list_(pa.string()))),
        ("lens_top_probs", pa.list_(pa.list_(pa.float32()))),
    ]
)
RECORD_COLUMNS = tuple(RECORD_SCHEMA.names)
REQUIRED_COLUMNS = ("id", "category")

# Manifest fields that must agree before a writer may add shards to an existing store.
MATCH_FIELDS = (
    "format_version",
    "model",
    "checkpoint",
    "weights_sha256",
    "base",
    "dtype",
    "dataset_sha256",
    "layers",
    "positions",
    "num_latent",
    "store_dtype",
    "n_problems",
    "shard_size",
    "layer_names",
    # extraction settings that change the records (compared when the caller records them)
    "max_new_tokens",
    "top_k",
    "merge",
)

_SHARD_RE = re.compile(r"^hidden-(\d{5,})\.safetensors$")


def shard_name(index: int) -> str:
    return f"hidden-{index:05d}.safetensors"


def part_name(index: int) -> str:
    return f"records-{index:05d}.parquet"


def default_positions(num_latent: int) -> list[str]:
    """`["bot", "latent_1", …, "latent_K"]`: the positions extraction records."""
    return ["bot"] + [f"latent_{k}" for k in range(1, num_latent + 1)]


# --- validation helpers ---------------------------------------------------------------------------


def _check_layers(layers: Any, where: str | Path | None = None) -> list[int]:
    if isinstance(layers, str | bytes) or not isinstance(layers, Iterable):
        raise OpcircuitsError("layers must be a list of integers", path=where, field="layers")
    out = []
    for x in layers:
        if isinstance(x, bool) or not isinstance(x, int | np.integer):
            raise OpcircuitsError(f"layer {x!r} is not an integer", path=where, field="layers")
        out.append(int(x))
    if not out:
        raise OpcircuitsError("at least one layer is needed", path=where, field="layers")
    if len(set(out)) != len(out):
        raise OpcircuitsError(f"layers repeat: {out}", path=where, field="layers")
    return out


def _check_names(names: Any, what: str, where: str | Path | None = None) -> list[str]:
    if isinstance(names, str | bytes) or not isinstance(names, Iterable):
        raise OpcircuitsError(f"{what} must be a list of names", path=where, field=what)
    out = list(names)
    if not out or not all(isinstance(x, str) and x for x in out):
        raise OpcircuitsError(
            f"{what} must be non-empty strings, got {out!r}", path=where, field=what
        )
    if len(set(out)) != len(out):
        raise OpcircuitsError(f"{what} repeat: {out}", path=where, field=what)
    return out


def _as_array(x: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except Exception as exc:  # e.g. a bfloat16 torch tensor
        raise OpcircuitsError(
            f"cannot read {what} as a numpy array ({exc}); pass a float32 numpy array", field=what
        ) from exc
    if not np.issubdtype(arr.dtype, np.floating):
        raise OpcircuitsError(f"{what} must hold floats, got dtype {arr.dtype}", field=what)
    return arr


def _cast(arr: np.ndarray, store_dtype: str, what: str) -> np.ndarray:
    """Cast to the store dtype, refusing values that would overflow to inf (fp16 tops at 65504)."""
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=STORE_DTYPES[store_dtype])
    if store_dtype != "float32" and not np.isfinite(out).all():
        bad = np.isfinite(arr) & ~np.isfinite(out)
        if bad.any():
            big = float(np.abs(arr[bad]).max())
            raise OpcircuitsError(
                f"{what} has values up to {big:g}, beyond {store_dtype}'s range; "
                "use store_dtype float32 (--store-dtype float32)",
                field=what,
            )
    return out


def _py(value: Any) -> Any:
    """numpy/pandas values → plain Python (arrays to lists, NaN/NA to None)."""
    if isinstance(value, np.ndarray):
        return [_py(v) for v in value.tolist()] if value.dtype == object else value.tolist()
    if isinstance(value, list | tuple):
        return [_py(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _columns(records: Any) -> dict[str, list[Any]]:
    """Records (DataFrame or list of dicts) → column name → list of plain values."""
    if isinstance(records, pd.DataFrame):
        return {str(c): [_py(v) for v in records[c].tolist()] for c in records.columns}
    if isinstance(records, Mapping) or not isinstance(records, Iterable):
        raise OpcircuitsError("records must be a pandas DataFrame or a list of dicts")
    rows = list(records)
    names: list[str] = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise OpcircuitsError(f"record {i} is a {type(row).__name__}, not a dict")
        for k in row:
            if k not in names:
                names.append(str(k))
    return {k: [_py(row.get(k)) for row in rows] for k in names}


def records_table(records: Any) -> pa.Table:
    """Validate records and build the Arrow table in the store's fixed schema.

    The standard columns come first with fixed types (missing ones are nulls, except `id` and
    `category`, which are required); any extra columns follow with inferred types.
    """
    cols = _columns(records)
    n = len(next(iter(cols.values()))) if cols else 0
    for name in REQUIRED_COLUMNS:
        if name not in cols:
            raise OpcircuitsError(f"records lack the required column '{name}'", field=name)
    ids = cols["id"]
    for i, v in enumerate(ids):
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise OpcircuitsError(f"record {i}: id must be a string, got {v!r}", field="id")
    ids = [str(v) for v in ids]
    seen: set[str] = set()
    dups = sorted({v for v in ids if v in seen or seen.add(v)})
    if dups:
        raise OpcircuitsError(f"ids repeat: {dups[:10]}", field="id")
    cols["id"] = ids
    arrays, fields = [], []
    for field in RECORD_SCHEMA:
        values = cols.get(field.name, [None] * n)
        arrays.append(_arrow(values, field.type, field.name))
        fields.append(field)
    for name, values in cols.items():
        if name in RECORD_COLUMNS:
            continue
        arr = _arrow(values, None, name)
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _arrow(values: list[Any], type_: pa.DataType | None, name: str) -> pa.Array:
    try:
        return pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
        want = f" as {type_}" if type_ is not None else ""
        raise OpcircuitsError(f"cannot store values{want}: {exc}", field=name) from exc


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


def _shard_meta(path: Path) -> dict[str, Any]:
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


# --- reading --------------------------------------------------------------------------------------


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
    layers = _check_layers(manifest["layers"], mpath)
    positions = _check_names(manifest["positions"], "positions", mpath)
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
        elif not _shard_done(path, i):
            continue
        meta = _shard_meta(spath)
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


def _shard_done(path: Path, index: int) -> bool:
    """Shard `index` is done when its hidden file exists and names its records part's hash."""
    spath, ppath = path / shard_name(index), path / PARTS / part_name(index)
    if not (spath.is_file() and ppath.is_file()):
        return False
    try:
        meta = _shard_meta(spath)
    except OpcircuitsError:
        return False
    return meta.get("records_sha256") == sha256_file(ppath)


# --- writing --------------------------------------------------------------------------------------


def build_manifest(manifest: Mapping[str, Any], n_total: int, shard_size: int) -> dict[str, Any]:
    """Complete a caller's manifest dict with the store's own fields and defaults."""
    m = dict(manifest)
    m["layers"] = _check_layers(m.get("layers"))
    m["positions"] = _check_names(m.get("positions"), "positions")
    if m.get("layer_names") is not None:
        m["layer_names"] = _check_names(m["layer_names"], "layer_names")
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
            if any(self.path.iterdir()):
                raise OpcircuitsError(
                    "directory is not empty and holds no store manifest; choose an empty or new "
                    "directory",
                    path=self.path,
                )
            # Exclusive create: several ranks may race here; exactly one manifest wins.
            with atomic_path(self.path / f".{MANIFEST}.new") as tmp:
                tmp.write_text(
                    json.dumps(wanted, indent=2, sort_keys=True) + "\n", encoding="utf-8"
                )
                try:
                    os.link(tmp, mpath)
                except FileExistsError:
                    pass
            (self.path / f".{MANIFEST}.new").unlink(missing_ok=True)
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
        return [i for i in range(self.n_shards) if _shard_done(self.path, i)]

    def pending_shards(self, rank: int | None = None, world_size: int | None = None) -> list[int]:
        """Unfinished shards of this rank (r, r+W, r+2W, …), in order."""
        rank = self.rank if rank is None else rank
        world = self.world_size if world_size is None else world_size
        if self.complete:
            return []
        return [i for i in range(rank, self.n_shards, world) if not _shard_done(self.path, i)]

    def write_shard(self, index: int, hidden: Any, latent_inputs: Any, records: Any) -> None:
        """Write shard `index` atomically: its records part, then its hidden file (commit)."""
        if self.complete:
            raise OpcircuitsError("store is already complete", path=self.path)
        start, stop = self.shard_bounds(index)
        n = stop - start
        m = self.manifest
        hidden = _as_array(hidden, "hidden")
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
        tensors = {"hidden": _cast(hidden, m["store_dtype"], "hidden")}
        if latent_inputs is not None:
            lat = _as_array(latent_inputs, "latent_inputs")
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
            tensors["latent_inputs"] = _cast(lat, m["store_dtype"], "latent_inputs")
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
        missing = [i for i in range(self.n_shards) if not _shard_done(self.path, i)]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (" …" if len(missing) > 20 else "")
            raise OpcircuitsError(
                f"cannot finalize: shards {shown} not written yet; {INCOMPLETE_HINT}",
                path=self.path,
            )
        tables, sizes, lat = [], set(), set()
        for i in range(self.n_shards):
            meta = _shard_meta(self.path / shard_name(i))
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
    hidden = _as_array(hidden, "hidden")
    layers, positions = _check_layers(layers), _check_names(positions, "positions")
    table = records_table(records)
    n = table.num_rows
    if hidden.ndim != 4 or hidden.shape[:3] != (n, len(positions), len(layers)):
        raise OpcircuitsError(
            f"hidden has shape {list(hidden.shape)}, expected [{n}, {len(positions)}, "
            f"{len(layers)}, D] ({n} records, positions {positions}, layers {layers})",
            field="hidden",
        )
    if latent_inputs is not None:
        lat = _as_array(latent_inputs, "latent_inputs")
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
    pending = writer.pending_shards()
    with Progress(
        TextColumn("writing {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        transient=True,
        disable=len(pending) < 4,
    ) as progress:
        task = progress.add_task(f"{path.name} shards", total=len(pending))
        for i in pending:
            a, b = writer.shard_bounds(i)
            writer.write_shard(
                i,
                hidden[a:b],
                None if latent_inputs is None else lat[a:b],
                table.slice(a, b - a).to_pylist(),
            )
            progress.advance(task)
    return writer.finalize()


def remove_store(path: str | Path) -> None:
    """Delete a store's own files (never anything else in the directory)."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise OpcircuitsError("not a thought store (no manifest.json)", path=path)
    (path / MANIFEST).unlink()
    for p in path.iterdir():
        if p.name == RECORDS or _SHARD_RE.match(p.name):
            p.unlink()
    shutil.rmtree(path / PARTS, ignore_errors=True)


def describe(store: Store) -> dict[str, Any]:
    """Manifest plus array shapes, for `opcircuits store info`."""
    shapes: dict[str, list[int]] = {}
    for spath, _, _ in store._shards:
        for k, shape in _shard_meta(spath)["shapes"].items():
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
