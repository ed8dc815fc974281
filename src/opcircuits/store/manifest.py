"""A store's manifest: built from the caller's fields and the store's own, compared on resume,
and created exactly once when several processes start writing one store together."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError
from opcircuits.files import read_json_object
from opcircuits.jsonable import jsonable
from opcircuits.store.schema import (
    FORMAT_VERSION,
    MANIFEST,
    MATCH_FIELDS,
    STORE_DTYPES,
    check_layers,
    check_names,
)
from opcircuits.versions import package_versions

log = logging.getLogger(__name__)

# Fields `finalize` sets (a caller's copy of another store's manifest must not carry them over).
FINAL_FIELDS = ("complete", "shards_sha256", "records_sha256")


def build_manifest(manifest: Mapping[str, Any], n_total: int, shard_size: int) -> dict[str, Any]:
    """Complete a caller's manifest dict with the store's own fields and defaults."""
    m = {k: v for k, v in manifest.items() if k not in FINAL_FIELDS}
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
        return json.loads(json.dumps(jsonable(m)))
    except (TypeError, ValueError) as exc:
        raise OpcircuitsError(f"manifest is not JSON-serialisable: {exc}") from exc


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


def create_or_check_manifest(path: Path, wanted: dict[str, Any]) -> dict[str, Any]:
    """The manifest of the store at `path`: created from `wanted` in an empty directory, else
    read and compared with it (an error lists the differing fields: data is never mixed)."""
    mpath = path / MANIFEST
    if not mpath.exists():
        # Other ranks may be creating this store at this very moment: their manifest's temporary
        # file, then the manifest, then their shards appear. A file seen while no manifest exists
        # yet, other than such a temporary file, is someone else's.
        foreign = [p for p in path.iterdir() if not p.name.startswith(_MANIFEST_TMP)]
        if foreign and not mpath.exists():
            raise OpcircuitsError(
                "directory is not empty and holds no store manifest; choose an empty or new "
                "directory",
                path=path,
            )
        _create_once(mpath, json.dumps(wanted, indent=2, sort_keys=True) + "\n")
    existing = read_json_object(mpath)
    diffs = manifest_differences(existing, wanted)
    if diffs:
        raise OpcircuitsError(
            "an existing store was made with different settings; use another --out or "
            "delete it. Differences: " + "; ".join(diffs),
            path=path,
        )
    if existing.get("versions") != wanted.get("versions"):
        log.warning(
            "resuming %s written with versions %s (now %s)",
            path,
            existing.get("versions"),
            wanted.get("versions"),
        )
    return existing


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
