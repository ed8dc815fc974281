"""What every options class is built from: `opt` (a field with its help and limits), the checks
`__post_init__` runs (`check_fields`), the one list parser (`split_list`), `Group` (a class as part
of a command or of the run config) and the constants several commands share."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError

# One generous default for every command that decodes answers (extract, evaluate): a well-trained
# model stops at EOS long before, and a short limit silently truncates long answers.
DEFAULT_MAX_NEW_TOKENS = 256

# What `data download` writes: the default problem file of every command that reads GSM8K.
DEFAULT_DATA = "data/gsm8k_full.jsonl"
MODES = ("prototype", "full", "analysis_only")
DTYPES = ("float32", "bfloat16", "float16")
STORE_DTYPES = ("float16", "float32")
SPLITS = ("train", "test")

HELP_MODEL = "Preset (demo, demo-arith, codi-gpt2, codi-llama3.2-1b), hub id or checkpoint folder."
HELP_DEVICE = "auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps."
HELP_DTYPE = "Model weights' dtype: float32, bfloat16 or float16."


def opt(default: Any = dataclasses.MISSING, *, help: str, **meta: Any) -> Any:
    """A dataclass field with its help text and other metadata (see the module docstring)."""
    metadata = {"help": help, **meta}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass
class Group:
    """One options class as part of a command or of the run config (`opcircuits run` reuses the
    data, extract and analyze classes instead of re-declaring their options)."""

    cls: type
    table: str | None = None  # the run config table its fields belong to
    prefix: str = ""  # key (and flag) prefix there: "prototype_" → prototype_per_category
    skip: frozenset[str] = frozenset()  # fields the caller sets itself (paths the run decides)
    cli_skip: frozenset[str] = frozenset()  # fields in the config but not offered as flags
    flags: Mapping[str, str] = field(default_factory=dict)  # field → flag name, no aliases
    help: Mapping[str, str] = field(default_factory=dict)  # field → help text in this command
    panel: str | None = None  # the --help panel its options are listed under


def split_list(
    value: str | Sequence[Any] | None, *, item: type = int, field: str | None = None
) -> list[Any] | None:
    """The one parser of list options: "4,8,14", ["4,8", "14"] (repeated flags) or [4, 8, 14]
    → [4, 8, 14]; None, "" and "all" → None (every one). Items are `item` (int, float or str)."""
    if value is None:
        return None
    parts = [value] if isinstance(value, str) else list(value)
    if len(parts) == 1 and isinstance(parts[0], str) and parts[0].strip().lower() in ("", "all"):
        return None
    out: list[Any] = []
    for part in parts:
        pieces = part.split(",") if isinstance(part, str) else [part]
        for piece in pieces:
            if isinstance(piece, str):
                piece = piece.strip()
                if not piece:
                    continue
            if item is int:
                if isinstance(piece, bool) or isinstance(piece, float):
                    piece = str(piece)  # 1.5 or True is not a layer number
                try:
                    piece = int(piece)
                except ValueError:
                    raise OpcircuitsError(
                        f"expected comma-separated integers or 'all', got {value!r}", field=field
                    ) from None
            elif item is float:
                try:
                    if isinstance(piece, bool):
                        raise ValueError
                    piece = float(piece)
                except ValueError:
                    raise OpcircuitsError(
                        f"expected comma-separated numbers, got {value!r}", field=field
                    ) from None
                if not math.isfinite(piece):
                    raise OpcircuitsError(f"must be finite numbers, got {value!r}", field=field)
            elif not isinstance(piece, str):
                raise OpcircuitsError(f"expected names, got {value!r}", field=field)
            out.append(piece)
    return out


def check_fields(options: Any) -> None:
    """Check every field's `min` and `choices`, and turn list options into lists."""
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        meta = f.metadata
        if "list" in meta and value is not None:
            if not (value == "all" and meta.get("all")):
                value = split_list(value, item=meta["list"], field=f.name)
                if value is None and not meta.get("all"):
                    raise OpcircuitsError("needs at least one value", field=f.name)
                setattr(options, f.name, value)
        low = meta.get("min")
        if low is not None and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
                raise OpcircuitsError(f"must be at least {low}, got {value!r}", field=f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise OpcircuitsError(f"must be a finite number, got {value}", field=f.name)
        choices = meta.get("choices")
        if choices is not None and value is not None and value not in choices:
            raise OpcircuitsError(
                f"must be one of {', '.join(map(str, choices))}, got {value!r}", field=f.name
            )
        if value is not None and f.type in ("Path", "Path | None") and not isinstance(value, Path):
            setattr(options, f.name, Path(value))
