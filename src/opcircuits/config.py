"""The experiment config of `opcircuits run`: one TOML file, one table per stage, checked strictly.

Tables and keys (every key is optional; defaults are the stages' own):

- `[run]`: `mode` (prototype | full | analysis_only), `out` (run directory), `store` (where the
  thought store lives; in analysis_only an existing store or a legacy `continuous_thoughts_*.json`).
- `[data]`: `source` (hf | DIR) plus the fields of `ClassifyOptions` and, prefixed `prototype_`,
  those of `PrototypeOptions` (the sampling seed is shared).
- `[extract]`: the fields of `ExtractOptions` except the paths the run sets (`dataset`, `out`).
- `[analyze]`: the fields of `AnalyzeOptions`.

Keys are the CLI option names with `-` → `_`. An unknown table or key is an error naming the file,
the table and the key, with a "did you mean" suggestion: a typo must never be silently ignored.
Values are type-checked against the dataclass annotations. CLI flags override the file, and the
resolved result is written back as TOML that `--config` accepts, so a run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError
from opcircuits.options import MODES

TABLES = ("run", "data", "extract", "analyze")

# Paths the run itself decides; setting them in a config would break the run directory's layout.
RUN_SET = {
    "data": {"in_path", "out"},
    "extract": {"dataset", "out"},
    "analyze": {"store_path", "out_dir", "out"},
}


@dataclass(frozen=True)
class Key:
    """One config key: its default and the annotation its value is checked against."""

    default: Any
    annotation: Any = Any
    help: str = ""
    minimum: int | float | None = None  # the field's `min` metadata


Schema = dict[str, dict[str, Key]]


@dataclass
class ResolvedConfig:
    """Every option of a run after defaults, the config file and the CLI flags are applied."""

    tables: dict[str, dict[str, Any]]
    source: Path | None = None  # the TOML file it came from, if any
    overridden: dict[str, list[str]] = field(default_factory=dict)  # table → keys set by CLI

    @property
    def mode(self) -> str:
        return self.tables["run"]["mode"]

    def to_toml(self) -> str:
        return dump_toml(self.tables, header=_resolved_header(self))


# --- schema from the stages' option dataclasses --------------------------------------------------


def _dataclass_keys(cls: type, skip: set[str]) -> dict[str, Key]:
    hints = _type_hints(cls)
    keys: dict[str, Key] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None  # required by the dataclass but set by the run
        keys[f.name] = Key(
            default, hints.get(f.name, Any), f.metadata.get("help", ""), f.metadata.get("min")
        )
    return keys


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation we cannot resolve is left unchecked, not fatal
        return {}


def build_schema(
    *,
    classify_options: type,
    prototype_options: type,
    extract_options: type,
    analyze_options: type,
    download_options: type,
    run_options: type,
) -> Schema:
    """The keys each table accepts, derived from the stages' dataclasses (so they never drift)."""
    data = _dataclass_keys(download_options, {"out"})
    data.update(_dataclass_keys(classify_options, RUN_SET["data"]))
    for name, key in _dataclass_keys(prototype_options, RUN_SET["data"] | {"seed"}).items():
        data[f"prototype_{name}"] = key
    return {
        "run": _dataclass_keys(run_options, {"force", "config"}),
        "data": data,
        "extract": _dataclass_keys(extract_options, RUN_SET["extract"]),
        "analyze": _dataclass_keys(analyze_options, RUN_SET["analyze"]),
    }


def default_schema() -> Schema:
    """The schema built from the option dataclasses of `opcircuits.options` (no torch)."""
    from opcircuits import options

    return build_schema(
        classify_options=options.ClassifyOptions,
        prototype_options=options.PrototypeOptions,
        extract_options=options.ExtractOptions,
        analyze_options=options.AnalyzeOptions,
        download_options=options.DownloadOptions,
        run_options=options.RunOptions,
    )


# --- reading and checking ------------------------------------------------------------------------


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise OpcircuitsError("config file not found", path=path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise OpcircuitsError(f"not valid TOML: {exc}", path=path) from exc
    except UnicodeDecodeError as exc:
        raise OpcircuitsError(f"not UTF-8 text: {exc}", path=path) from exc


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def _key_line(path: Path | None, table: str | None, key: str) -> int | None:
    """Best-effort line number of `key` (inside `[table]`) in a TOML file, for the error message."""
    if path is None or not path.is_file():
        return None
    current: str | None = None
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        header = re.match(r"^\s*\[\s*([^\]\s]+)\s*\]", line)
        if header:
            current = header.group(1)
            if table is None and current == key:
                return number
            continue
        if current == table and pattern.match(line):
            return number
    return None


def check_mode(mode: Any, *, path: Path | None = None) -> str:
    if mode not in MODES:
        hint = _suggest(str(mode), list(MODES))
        raise OpcircuitsError(
            f"unknown mode '{mode}'; {hint}choose one of {', '.join(MODES)}",
            path=path,
            line=_key_line(path, "run", "mode"),
            field="run.mode" if path else "mode",
        )
    return mode


def _check_table(
    table: str,
    values: Mapping[str, Any],
    schema: Schema,
    path: Path | None,
    origin: str,
) -> dict[str, Any]:
    keys = schema[table]
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key not in keys:
            line = _key_line(path, table, key)
            if key in RUN_SET.get(table, set()):
                msg = f"'{key}' in [{table}] is set by the run itself (use [run] out / store)"
            else:
                elsewhere = [t for t in TABLES if t != table and key in schema[t]]
                hint = _suggest(key, sorted(keys))
                if elsewhere:
                    hint += f"'{key}' belongs in [{elsewhere[0]}]. "
                msg = (
                    f"unknown key '{key}' in [{table}]; {hint}valid keys: {', '.join(sorted(keys))}"
                )
            raise OpcircuitsError(msg, path=path, line=line, field=f"{table}.{key}")
        checked[key] = _coerce(table, key, value, keys[key], path, origin)
    return checked


def _coerce(table: str, key: str, value: Any, spec: Key, path: Path | None, origin: str) -> Any:
    """Check `value` against `annotation`, converting the few TOML/CLI spellings that differ."""

    def fail(why: str) -> OpcircuitsError:
        return OpcircuitsError(
            f"{why} (from {origin})",
            path=path,
            line=_key_line(path, table, key),
            field=f"{table}.{key}",
        )

    converted = _convert(value, spec.annotation)
    if converted is _MISMATCH:
        raise fail(f"expected {_type_name(spec.annotation)}, got {type(value).__name__}")
    value = converted
    low = spec.minimum
    if low is not None and isinstance(value, int) and not isinstance(value, bool) and value < low:
        raise fail(f"must be at least {low}, got {value}")
    if isinstance(value, float) and not math.isfinite(value):
        raise fail(f"must be a finite number, got {value}")
    return value


class _Mismatch:
    pass


_MISMATCH: Any = _Mismatch()


def _convert(value: Any, annotation: Any) -> Any:
    """`value` made to fit `annotation`, or the `_MISMATCH` marker. Any/unknown types pass."""
    if annotation is Any or annotation is None:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
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
            out = _convert(value, arg)
            if out is not _MISMATCH:
                return out
        return _MISMATCH
    if origin is typing.Literal:
        return value if value in args else _MISMATCH
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return _MISMATCH
        item = args[0] if args else Any
        items = [_convert(v, item) for v in value]
        if any(v is _MISMATCH for v in items):
            return _MISMATCH
        return tuple(items) if origin is tuple or annotation is tuple else items
    if annotation is bool:
        return value if isinstance(value, bool) else _MISMATCH
    if annotation is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISMATCH
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return _MISMATCH
    if annotation is str:
        if isinstance(value, str):
            return value
        # `layers = [4, 8, 14]` in TOML for an option the CLI spells "4,8,14".
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, str)) and not isinstance(v, bool) for v in value
        ):
            return ",".join(str(v) for v in value)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return _MISMATCH
    if annotation is Path or (isinstance(annotation, type) and issubclass(annotation, Path)):
        if isinstance(value, (str, Path)):
            return Path(value)
        return _MISMATCH
    return value  # a type we do not model: the stage validates it


def _is_exact(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return isinstance(value, annotation)
    return False


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("pathlib.", "")


def resolve(
    config_path: str | Path | None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    schema: Schema | None = None,
) -> ResolvedConfig:
    """Defaults ← TOML file ← CLI overrides (`{table: {key: value}}`, None values ignored)."""
    schema = schema if schema is not None else default_schema()
    path = Path(config_path) if config_path is not None else None
    tables = {t: {k: key.default for k, key in schema[t].items()} for t in TABLES}

    if path is not None:
        raw = read_toml(path)
        for name, values in raw.items():
            if name not in TABLES:
                hint = _suggest(name, list(TABLES))
                if not isinstance(values, dict):
                    owners = [t for t in TABLES if name in schema[t]]
                    if owners:
                        hint += f"'{name}' belongs in [{owners[0]}]. "
                    msg = f"unknown top-level key '{name}'; {hint}keys go in the tables "
                else:
                    msg = f"unknown table [{name}]; {hint}tables are "
                raise OpcircuitsError(
                    msg + ", ".join(f"[{t}]" for t in TABLES),
                    path=path,
                    line=_key_line(path, None, name),
                    field=name,
                )
            if not isinstance(values, dict):
                raise OpcircuitsError(f"[{name}] must be a table", path=path, field=name)
            tables[name].update(_check_table(name, values, schema, path, "the config file"))

    overridden: dict[str, list[str]] = {}
    for table, values in (overrides or {}).items():
        given = {k: v for k, v in values.items() if v is not None}
        if table not in TABLES:
            raise OpcircuitsError(f"unknown table [{table}] in the command-line overrides")
        tables[table].update(_check_table(table, given, schema, None, "the command line"))
        if given:
            overridden[table] = sorted(given)

    check_mode(
        tables["run"]["mode"], path=path if "mode" not in overridden.get("run", []) else None
    )
    return ResolvedConfig(tables=tables, source=path, overridden=overridden)


# --- writing TOML (the stdlib only reads it) ------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError(f"cannot write {value} to TOML")
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        escaped = (
            value.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\n", "\\n")
            .replace("\t", "\\t")
        )
        escaped = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped)
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(tables: Mapping[str, Mapping[str, Any]], *, header: str = "") -> str:
    """Flat tables of scalars and lists, deterministic. None has no TOML spelling: it is written
    as a comment (the key then takes its default, None, when read back)."""
    lines = [header.rstrip("\n")] if header else []
    for table, values in tables.items():
        if lines:
            lines.append("")
        lines.append(f"[{table}]")
        for key, value in values.items():
            if value is None:
                lines.append(f"# {key} = (unset: the stage's default)")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _resolved_header(config: ResolvedConfig) -> str:
    src = str(config.source) if config.source else "no config file"
    cli = "; ".join(f"[{t}] {', '.join(keys)}" for t, keys in config.overridden.items()) or "none"
    return (
        "# The resolved configuration of this run (defaults <- config file <- command line).\n"
        f"# Config file: {src}. Set on the command line: {cli}.\n"
        "# Repeat the run with: opcircuits run --config <this file>"
    )
