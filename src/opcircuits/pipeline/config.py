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
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError
from opcircuits.files import read_text
from opcircuits.options import MODES, Group
from opcircuits.options.checks import check_type
from opcircuits.pipeline.schema import (
    INTERVENE_FLAGS,
    INTERVENE_SET,
    RUN_GROUPS,
    RUN_SET,
    TABLES,
    Key,
    Schema,
    build_schema,
    default_schema,
)
from opcircuits.pipeline.toml_write import (
    EXAMPLE_HEADER,
    dump_toml,
    example_toml,
    resolved_header,
    toml_value,
)

__all__ = [
    "EXAMPLE_HEADER",
    "INTERVENE_FLAGS",
    "INTERVENE_SET",
    "RUN_GROUPS",
    "RUN_SET",
    "TABLES",
    "Key",
    "ResolvedConfig",
    "Schema",
    "build_schema",
    "check_mode",
    "default_schema",
    "dump_toml",
    "example_toml",
    "read_toml",
    "resolve",
    "toml_value",
    "validate",
]


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
        return dump_toml(self.tables, header=resolved_header(self))

    def located(self, exc: OpcircuitsError) -> OpcircuitsError:
        """`exc` (about a key, `field='data.source'`) pointing at the config file's line when
        the key's value came from the file, the path it named kept in the message."""
        table, _, key = (exc.field or "").partition(".")
        if self.source is None or not key or key in self.overridden.get(table, []):
            return exc
        line = _key_line(self.source, table, key)
        if line is None:
            return exc
        named = f" ({exc.path})" if exc.path is not None else ""
        return OpcircuitsError(
            f"{exc.message}{named} (from the config file)",
            path=self.source,
            line=line,
            field=exc.field,
        )


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
    """Check `value` against the key's annotation with the options' own engine (`check_type`),
    converting the few TOML/CLI spellings that differ; an error names the file line."""
    try:
        return check_type(value, spec.annotation)
    except OpcircuitsError as exc:
        raise OpcircuitsError(
            f"{exc.message} (from {origin})",
            path=path,
            line=_key_line(path, table, key),
            field=f"{table}.{key}",
        ) from exc


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
