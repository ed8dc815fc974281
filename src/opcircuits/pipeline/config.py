"""The experiment config of `opcircuits run`: one TOML file, one table per stage, checked strictly.

Tables and keys (every key is optional; defaults are the stages' own):

- `[run]`: `mode` (prototype | full | analysis_only), `out` (run directory), `store` (where the
  thought store lives; in analysis_only an existing store or a legacy `continuous_thoughts_*.json`).
- `[data]`: `source` (hf | DIR | synthetic) plus the fields of `ClassifyOptions`, prefixed
  `prototype_` those of `PrototypeOptions` (the sampling seed is shared), and prefixed `synth_`
  those of `SynthOptions` that a synthetic run does not set itself.
- `[extract]`: the fields of `ExtractOptions` except the paths the run sets (`dataset`, `out`).
- `[analyze]`: the fields of `AnalyzeOptions`.
- `[intervene]`: `enabled` (auto | on | off: the causal-test stage runs in full mode, or when
  on) and the fields of `InterveneOptions` except the data, output, pairs and model, which the
  run sets (the model and decoding are `[extract]`'s, so the causal tests use the probed model).

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
import textwrap
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError
from opcircuits.files import read_text
from opcircuits.options import (
    MODES,
    AnalyzeOptions,
    ClassifyOptions,
    DownloadOptions,
    ExtractOptions,
    Group,
    InterveneOptions,
    PrototypeOptions,
    RunInterveneOptions,
    RunOptions,
    SynthOptions,
)

TABLES = ("run", "data", "extract", "analyze", "intervene")
_DATA = "Data (prototype, full)"
_MODEL = "Model and extraction (prototype, full)"
_ANALYSIS = "Analysis"
_CAUSAL = "Causal tests (full; prototype with --intervene on)"
# [intervene] keys the run sets: the problems, output and partners of its own data, and the
# model (with its precision and decoding) of [extract].
INTERVENE_SET = frozenset(
    {"data", "out", "pairs", "model", "checkpoint", "base", "dtype", "device", "max_new_tokens"}
)
# `run`'s flags for the [intervene] keys: --intervene-kinds etc. (`intervene`'s own names would
# collide with extract's --batch-size and the run's --seed).
INTERVENE_FLAGS = {
    f.name: f"intervene_{f.name}"
    for f in dataclasses.fields(InterveneOptions)
    if f.name not in INTERVENE_SET
}

# The run's tables, made of the stages' own option classes (`run --help` lists them by panel).
# `skip`: paths the run decides itself; setting them would break the run directory's layout.
RUN_GROUPS = (
    Group(RunOptions, table="run"),
    Group(DownloadOptions, table="data", skip=frozenset({"out"}), panel=_DATA),
    Group(
        ClassifyOptions,
        table="data",
        skip=frozenset({"in_path", "out"}),
        panel=_DATA,
        help={
            "seed": "Sets both the sampling seed ([data] seed, default 42) and the analysis "
            "seed ([analyze] seed, default 0)."
        },
    ),
    Group(
        PrototypeOptions,
        table="data",
        prefix="prototype_",
        skip=frozenset({"in_path", "out", "seed"}),  # the sampling seed is shared
        panel=_DATA,
    ),
    Group(
        SynthOptions,
        table="data",
        prefix="synth_",
        # the run decides these: the test split, n = 3 × per_category, the shared seed
        skip=frozenset({"out", "n", "seed", "split", "pairs"}),
        panel=_DATA,
    ),
    Group(ExtractOptions, table="extract", skip=frozenset({"dataset", "out"}), panel=_MODEL),
    Group(
        AnalyzeOptions,
        table="analyze",
        # full mode extracts the baseline stores itself, and runs the causal tests
        skip=frozenset({"matched_store", "random_store", "interventions"}),
        cli_skip=frozenset({"seed"}),  # run's --seed sets it
        flags={"layers": "analyze_layers"},
        help={"layers": "Layers to analyze (default: all in the store); [analyze] layers."},
        panel=_ANALYSIS,
    ),
    Group(RunInterveneOptions, table="intervene", flags={"enabled": "intervene"}, panel=_CAUSAL),
    Group(
        InterveneOptions,
        table="intervene",
        skip=INTERVENE_SET,
        flags=INTERVENE_FLAGS,
        panel=_CAUSAL,
    ),
)
# Keys the run sets itself, per table (a table may take several groups: union their skips).
RUN_SET: dict[str, set[str]] = {}
for _group in RUN_GROUPS:
    if _group.table not in (None, "run"):
        RUN_SET.setdefault(_group.table, set()).update(_group.prefix + k for k in _group.skip)


@dataclass(frozen=True)
class Key:
    """One config key: its default and the annotation its value is checked against."""

    default: Any
    annotation: Any = Any
    help: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)  # the field's (example, min, …)


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


def _keys(group: Group) -> dict[str, Key]:
    hints = typing.get_type_hints(group.cls)
    keys: dict[str, Key] = {}
    for f in dataclasses.fields(group.cls):
        if f.name in group.skip or not f.init or f.metadata.get("toml") is False:
            continue
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = f.default
        keys[group.prefix + f.name] = Key(default, hints[f.name], f.metadata["help"], f.metadata)
    return keys


def build_schema(groups: tuple[Group, ...] = RUN_GROUPS) -> Schema:
    """The keys each table accepts, derived from the stages' dataclasses (so they never drift)."""
    schema: Schema = {t: {} for t in TABLES}
    for group in groups:
        assert group.table is not None
        schema[group.table].update(_keys(group))
    return schema


def default_schema() -> Schema:
    """The schema built from the option dataclasses of `opcircuits.options` (no torch)."""
    return build_schema(RUN_GROUPS)


# --- reading and checking ------------------------------------------------------------------------


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise OpcircuitsError("config file not found", path=path)
    text = read_text(path)  # a byte that is not UTF-8: an error naming the line
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise OpcircuitsError(f"not valid TOML: {exc}", path=path) from exc


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
                where = (
                    "the model and decoding are [extract]'s, the problems the run's"
                    if table == "intervene"
                    else "use [run] out / store"
                )
                msg = f"'{key}' in [{table}] is set by the run itself ({where})"
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
    return converted


def _placeholder(annotation: str) -> Any:
    """A stand-in for a required field the run fills in later (a path)."""
    return Path(".") if "Path" in annotation else ""


def validate(
    tables: Mapping[str, Mapping[str, Any]],
    path: Path | None = None,
    from_file: Mapping[str, set[str]] | None = None,
    groups: tuple[Group, ...] = RUN_GROUPS,
) -> None:
    """Build every stage's options from the tables, so their own checks (`__post_init__`) run
    before anything does; an error names the table key, and the file line when it came from it."""
    from_file = from_file or {}
    for group in groups:
        assert group.table is not None
        values = tables[group.table]
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(group.cls):
            key = group.prefix + f.name
            if key in values and f.name not in group.skip:
                kwargs[f.name] = values[key]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                kwargs[f.name] = _placeholder(str(f.type))
        try:
            group.cls(**kwargs)
        except OpcircuitsError as exc:
            key = group.prefix + (exc.field or "")
            in_file = path is not None and key in from_file.get(group.table, set())
            origin = "the config file" if in_file else "the command line"
            raise OpcircuitsError(
                f"{exc.message} (from {origin})",
                path=path if in_file else None,
                line=_key_line(path, group.table, key) if in_file else None,
                field=f"{group.table}.{key}",
            ) from exc


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

    from_file: dict[str, set[str]] = {}
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
            from_file[name] = set(values)

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
    for table, keys in overridden.items():  # a flag replaces the file's value
        from_file[table] = from_file.get(table, set()) - set(keys)
    validate(tables, path, from_file)
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


EXAMPLE_HEADER = """\
# An experiment for `opcircuits run --config experiment.toml`.
#
# Every option of every stage is listed with its default value, so this file, as shipped, runs
# exactly what `opcircuits run` runs without one. Keys are the command-line option names with
# "-" turned into "_" (`--batch-size` -> batch_size). Flags given on the command line override
# this file. An unknown table or key is an error (a typo is never silently ignored).
# Lines starting with "#" show options whose default is "unset"; remove the "#" to set them.
# Each run writes the fully resolved configuration to <out>/config.resolved.toml, which this
# command accepts again to repeat the run. Relative paths are taken from the directory you run
# `opcircuits` in.
#
# Generated from the options in src/opcircuits/options/ (a test checks it is up to date):
#   python -c "from opcircuits.pipeline.config import example_toml as t; print(t(), end='')" \\
#     > experiment.toml
"""


def example_toml(schema: Schema | None = None) -> str:
    """The annotated `experiment.toml`: every key with its help and default (or an example)."""
    schema = schema if schema is not None else default_schema()
    lines = [EXAMPLE_HEADER.rstrip("\n")]
    for table in TABLES:
        lines += ["", f"[{table}]"]
        for key, spec in schema[table].items():
            lines += ["# " + line for line in textwrap.wrap(spec.help, 96)]
            if spec.default is None:
                example = spec.metadata.get("example")
                shown = "(unset)" if example is None else _toml_value(example)
                lines.append(f"# {key} = {shown}")
            else:
                lines.append(f"{key} = {_toml_value(spec.default)}")
    return "\n".join(lines) + "\n"


def _resolved_header(config: ResolvedConfig) -> str:
    src = str(config.source) if config.source else "no config file"
    cli = "; ".join(f"[{t}] {', '.join(keys)}" for t, keys in config.overridden.items()) or "none"
    return (
        "# The resolved configuration of this run (defaults <- config file <- command line).\n"
        f"# Config file: {src}. Set on the command line: {cli}.\n"
        "# Repeat the run with: opcircuits run --config <this file>"
    )
