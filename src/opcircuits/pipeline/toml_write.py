"""Writing TOML (the stdlib only reads it): flat tables (`dump_toml`), the annotated
`experiment.toml` (`example_toml`) and the header of a run's `config.resolved.toml`."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opcircuits.pipeline.schema import TABLES, Schema, default_schema


def toml_value(value: Any) -> str:
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
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
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
                lines.append(f"{key} = {toml_value(value)}")
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
                shown = "(unset)" if example is None else toml_value(example)
                lines.append(f"# {key} = {shown}")
            else:
                lines.append(f"{key} = {toml_value(spec.default)}")
    return "\n".join(lines) + "\n"


def resolved_header(config: Any) -> str:
    src = str(config.source) if config.source else "no config file"
    cli = "; ".join(f"[{t}] {', '.join(keys)}" for t, keys in config.overridden.items()) or "none"
    return (
        "# The resolved configuration of this run (defaults <- config file <- command line).\n"
        f"# Config file: {src}. Set on the command line: {cli}.\n"
        "# Repeat the run with: opcircuits run --config <this file>"
    )
