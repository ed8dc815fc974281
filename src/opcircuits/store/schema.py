"""What a thought store is: its file names, its records' schema and the checks and casts that
every value passes before it is written.

Pure numpy/pyarrow: this package must not import torch (analysis reads stores without it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from opcircuits.errors import OpcircuitsError
from opcircuits.files import in_layout
from opcircuits.jsonable import jsonable

# 2: shards carry the run identity, layers, positions and ids; the manifest their sha256s.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
RECORDS = "records.parquet"
PARTS = "parts"
DEFAULT_SHARD_SIZE = 256
STORE_DTYPES = {"float16": np.float16, "float32": np.float32}
INCOMPLETE_HINT = "extraction not finished; rerun the extract command to resume"

# records.parquet columns, in order, with fixed types (so every shard and every run agrees). A new
# column is one line here: stores written before it lack the column (readers treat it as absent).
RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("category", pa.string()),
        ("question", pa.string()),
        ("gold", pa.float64()),
        ("answer_text", pa.string()),
        ("predicted", pa.float64()),
        ("correct", pa.bool_()),
        ("answer_truncated", pa.bool_()),  # decoding hit the limit before EOS
        ("n_steps", pa.int64()),
        ("ops_used", pa.list_(pa.string())),
        # each solution step's operator, in order (null unless every step has exactly one)
        ("step_ops", pa.list_(pa.string())),
        # each step's result r_j (null where its text is not one number) and the first token id
        # of r_j's text under the model's tokenizer, and of " r_j" (matched against the lens)
        ("step_results", pa.list_(pa.float64())),
        ("step_result_ids", pa.list_(pa.int64())),
        ("step_result_space_ids", pa.list_(pa.int64())),  # the same after a space (`Ġ8`)
        ("lens_top_ids", pa.list_(pa.list_(pa.int64()))),
        ("lens_top_tokens", pa.list_(pa.list_(pa.string()))),
        ("lens_top_probs", pa.list_(pa.list_(pa.float32()))),
        # the lens at every stored layer: [position][layer (manifest order)][k] ids
        ("lens_layer_top_ids", pa.list_(pa.list_(pa.list_(pa.int64())))),
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

SHARD_RE = re.compile(r"^hidden-(\d{5,})\.safetensors$")


def shard_name(index: int) -> str:
    return f"hidden-{index:05d}.safetensors"


def part_name(index: int) -> str:
    return f"records-{index:05d}.parquet"


def hash_name(index: int) -> str:
    """parts/hidden-NNNNN.sha256: shard `index`'s sha256 while the store is being written."""
    return f"hidden-{index:05d}.sha256"


_OWN_RE = re.compile(
    rf"^(?:{re.escape(MANIFEST)}|{re.escape(RECORDS)}|hidden-\d{{5,}}\.safetensors"
    rf"|{PARTS}/records-\d{{5,}}\.parquet|{PARTS}/hidden-\d{{5,}}\.sha256)$"
)


def is_store_file(name: str) -> bool:
    """Whether `name` (relative to a store folder, POSIX) is a file the store layout defines (or a
    temporary file of an interrupted write of one): the files a store's writer may delete."""
    return in_layout(name, _OWN_RE)


def default_positions(num_latent: int) -> list[str]:
    """`["bot", "latent_1", …, "latent_K"]`: the positions extraction records."""
    return ["bot"] + [f"latent_{k}" for k in range(1, num_latent + 1)]


# --- validation helpers ---------------------------------------------------------------------------


def check_layers(layers: Any, where: str | Path | None = None) -> list[int]:
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


def check_names(names: Any, what: str, where: str | Path | None = None) -> list[str]:
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


def as_float_array(x: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except Exception as exc:  # e.g. a bfloat16 torch tensor
        raise OpcircuitsError(
            f"cannot read {what} as a numpy array ({exc}); pass a float32 numpy array", field=what
        ) from exc
    if not np.issubdtype(arr.dtype, np.floating):
        raise OpcircuitsError(f"{what} must hold floats, got dtype {arr.dtype}", field=what)
    return arr


def cast_to_store_dtype(arr: np.ndarray, store_dtype: str, what: str) -> np.ndarray:
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


def check_finite(
    arr: np.ndarray, ids: list[str], sites: list[str], what: str, prefix: str = ""
) -> None:
    """Refuse NaN and inf (a store never holds them: the analysis would fail or mislead); the
    error names the problems (`ids`, one per row) and sites (`sites`, one per entry of the
    middle axes, flattened) that hold them."""
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad = ~finite.reshape(arr.shape[0], -1, arr.shape[-1]).all(axis=2)  # [rows, sites]
    rows = [ids[i] for i in np.flatnonzero(bad.any(axis=1))]
    where = [sites[j] for j in np.flatnonzero(bad.any(axis=0))]
    raise OpcircuitsError(
        f"{prefix}{what} holds NaN or inf for {len(rows)} problem(s) {_few(rows)} at {len(where)} "
        f"site(s) {_few(where)}; a store refuses non-finite states (check the model's weights "
        "and dtype, or leave these problems out)",
        field=what,
    )


def _few(names: list[str], k: int = 8) -> str:
    return "[" + ", ".join(map(repr, names[:k])) + (", …]" if len(names) > k else "]")


def check_record_types(table: pa.Table, path: Path) -> None:
    """Refuse records whose standard columns have other types than the schema's, or whose ids
    are missing (a file written by another tool, or edited)."""
    for name in REQUIRED_COLUMNS:
        if name not in table.column_names:
            raise OpcircuitsError("records lack this required column", path=path, field=name)
    for field in RECORD_SCHEMA:
        if field.name in table.column_names:
            got = table.schema.field(field.name).type
            if got != field.type:
                raise OpcircuitsError(
                    f"column has type {got}, expected {field.type}", path=path, field=field.name
                )
    if table.column("id").null_count:
        raise OpcircuitsError("records have a null id", path=path, field="id")


def _columns(records: Any) -> dict[str, list[Any]]:
    """Records (DataFrame or list of dicts) → column name → list of plain values."""
    if isinstance(records, pd.DataFrame):
        return {str(c): [jsonable(v) for v in records[c].tolist()] for c in records.columns}
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
    return {k: [jsonable(row.get(k)) for row in rows] for k in names}


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
