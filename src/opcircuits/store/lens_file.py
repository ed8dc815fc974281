"""`tuned-lens.json`, the record of a tuned lens trained on one store (`opcircuits lens train`):
its names, and the one reader both the lens (torch, `codi/tuned_lens.py`) and the analysis
(numpy) use, so a lens is never applied to, nor reported for, another store's states.

Torch-free, like the rest of this package."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError
from opcircuits.files import read_json_object
from opcircuits.store.integrity import store_fingerprint

LENS_JSON = "tuned-lens.json"
LENS_WEIGHTS = "tuned-lens.safetensors"
LENS_FORMAT = "opcircuits-tuned-lens"
LENS_VERSION = 1
LENS_FILES = (LENS_JSON, LENS_WEIGHTS)
_KEYS = ("store", "weights", "settings", "layers", "final_layer", "positions", "kl", "split")


def lens_json_path(path: str | Path) -> Path:
    """A lens folder (what `lens train --out` wrote) or its tuned-lens.json → the JSON file."""
    path = Path(path)
    return path / LENS_JSON if path.is_dir() else path


def _finite(value: Any, path: Path, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OpcircuitsError(f"must be a finite number, got {value!r}", path=path, field=field)
    return float(value)


def read_lens_json(path: str | Path, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checked contents of a tuned-lens.json (or of the folder holding it). With `manifest`
    (the store's), a lens trained on another store is an error naming both fingerprints."""
    jpath = lens_json_path(path)
    if not jpath.is_file():
        raise OpcircuitsError(
            f"no {LENS_JSON} here (written by `opcircuits lens train`)", path=path
        )
    lens = read_json_object(jpath)
    if lens.get("format") != LENS_FORMAT or lens.get("format_version") != LENS_VERSION:
        raise OpcircuitsError(
            f"not a tuned lens of this opcircuits (format {lens.get('format')!r} version "
            f"{lens.get('format_version')!r}; expected {LENS_FORMAT!r} version {LENS_VERSION})",
            path=jpath,
            field="format",
        )
    for key in _KEYS:
        if key not in lens:
            raise OpcircuitsError("the lens record lacks this field", path=jpath, field=key)
    rows = lens["kl"]
    if not isinstance(rows, list) or not rows:
        raise OpcircuitsError("must be a non-empty list of layers", path=jpath, field="kl")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("layer"), int):
            raise OpcircuitsError("each row needs an integer layer", path=jpath, field=f"kl[{i}]")
        for name in ("tuned", "logit"):
            _finite(row.get(name), jpath, f"kl[{i}].{name}")
    if manifest is not None:
        want, got = store_fingerprint(manifest), (lens["store"] or {}).get("fingerprint")
        if got != want:
            raise OpcircuitsError(
                f"this tuned lens was trained on another store (fingerprint {str(got)[:12]}…), "
                f"not on this one ({want[:12]}…): train one on this store with `opcircuits lens "
                "train`",
                path=jpath,
                field="store.fingerprint",
            )
    return lens
