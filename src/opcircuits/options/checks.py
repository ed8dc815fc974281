"""The one engine that checks an option's value against its field: the type (`convert`, the
annotation), the limits (`min`, `choices`, finite numbers) and the list spelling (`split_list`).

Every options class calls `check_fields` from `__post_init__`, so a value from the command line,
from Python or from `opcircuits run`'s config gets the same checks and the same messages. The
config also calls `check_type` (the annotation part) as it reads each TOML key, so a value of the
wrong type is reported with its file and line even when a flag overrides it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError


class _Mismatch:
    pass


MISMATCH: Any = _Mismatch()  # what `convert` returns for a value that does not fit


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
            out.append(_list_item(piece, item, value, field))
    return out


def _list_item(piece: Any, item: type, value: Any, field: str | None) -> Any:
    if item is int:
        if isinstance(piece, bool) or isinstance(piece, float):
            piece = str(piece)  # 1.5 or True is not a layer number
        try:
            return int(piece)
        except ValueError:
            raise OpcircuitsError(
                f"expected comma-separated integers or 'all', got {value!r}", field=field
            ) from None
    if item is float:
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
        return piece
    if not isinstance(piece, str):
        raise OpcircuitsError(f"expected names, got {value!r}", field=field)
    return piece


# --- the annotation ------------------------------------------------------------------------------


def convert(value: Any, annotation: Any) -> Any:
    """`value` made to fit `annotation`, or the `MISMATCH` marker. Any/unknown types pass."""
    if annotation is Any or annotation is None:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, args)
    if origin is typing.Literal:
        return value if value in args else MISMATCH
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return MISMATCH
        item = args[0] if args else Any
        items = [convert(v, item) for v in value]
        if any(v is MISMATCH for v in items):
            return MISMATCH
        return tuple(items) if origin is tuple or annotation is tuple else items
    return _convert_scalar(value, annotation)


def _convert_union(value: Any, args: tuple[Any, ...]) -> Any:
    # Exact type first (so 3 stays an int in `int | str`), then conversions.
    for arg in args:
        if arg is type(None):
            if value is None:
                return None
            continue
        if _is_exact(value, arg):
            return value
    for arg in args:
        if arg is type(None):
            continue
        out = convert(value, arg)
        if out is not MISMATCH:
            return out
    return MISMATCH


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _convert_scalar(value: Any, annotation: Any) -> Any:
    if annotation is bool:
        return value if isinstance(value, bool) else MISMATCH
    if annotation is int:
        return value if _is_int(value) else MISMATCH
    if annotation is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        return MISMATCH
    if annotation is str:
        if isinstance(value, str):
            return value
        # `layers = [4, 8, 14]` in TOML for an option the CLI spells "4,8,14".
        if isinstance(value, (list, tuple)) and all(
            _is_int(v) or isinstance(v, str) for v in value
        ):
            return ",".join(str(v) for v in value)
        if isinstance(value, os.PathLike):  # a folder given from Python as a Path
            return str(value)
        return str(value) if _is_int(value) else MISMATCH
    if annotation is Path or (isinstance(annotation, type) and issubclass(annotation, Path)):
        return Path(value) if isinstance(value, (str, Path)) else MISMATCH
    return value  # a type we do not model: the class's own checks validate it


def _is_exact(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return _is_int(value)
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return isinstance(value, annotation)
    return False


def type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("pathlib.", "")


def check_type(value: Any, annotation: Any, *, field: str | None = None) -> Any:
    """`value` converted to `annotation` (see `convert`); one that does not fit is an error."""
    converted = convert(value, annotation)
    if converted is MISMATCH:
        raise OpcircuitsError(
            f"expected {type_name(annotation)}, got {type(value).__name__}", field=field
        )
    return converted


# --- one field -----------------------------------------------------------------------------------


def check_value(name: str, value: Any, annotation: Any, meta: Mapping[str, Any]) -> Any:
    """One field's value checked and normalized: a list option parsed (`split_list` checks its
    items), any other converted to its annotation; then `min` and `max` (each item of a list),
    finiteness and `choices`."""
    if "list" in meta:
        if value is not None and not (value == "all" and meta.get("all")):
            value = split_list(value, item=meta["list"], field=name)
            if value is None and not meta.get("all"):
                raise OpcircuitsError("needs at least one value", field=name)
    else:
        checked = check_type(value, annotation, field=name)
        # The caller's value is kept (an int stays an int in a float option); paths become Path.
        if isinstance(checked, Path):
            value = checked
    low = meta.get("min")
    if low is not None and value is not None:
        for item in value if isinstance(value, list) else [value]:  # each item of a list
            if isinstance(item, bool) or not isinstance(item, (int, float)) or item < low:
                raise OpcircuitsError(f"must be at least {low}, got {item!r}", field=name)
    high = meta.get("max")
    if high is not None and value is not None:
        # Checked before anything is allocated: a count beyond it would exhaust the machine.
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, (int, float)) and not isinstance(item, bool) and item > high:
                raise OpcircuitsError(f"must be at most {high}, got {item!r}", field=name)
    if isinstance(value, float) and not math.isfinite(value):
        raise OpcircuitsError(f"must be a finite number, got {value}", field=name)
    choices = meta.get("choices")
    if choices is not None and value is not None and value not in choices:
        raise OpcircuitsError(
            f"must be one of {', '.join(map(str, choices))}, got {value!r}", field=name
        )
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(options: Any) -> None:
    """Check every field of an options instance (`check_value`), storing the normalized values
    (lists parsed, paths as `Path`)."""
    hints = _hints(type(options))
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        checked = check_value(f.name, value, hints.get(f.name, Any), f.metadata)
        if checked is not value:
            setattr(options, f.name, checked)
