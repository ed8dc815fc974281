"""MkDocs hook: the generated parts of the docs, rendered at build time so they cannot drift.

Markers in a page's Markdown are replaced by Markdown generated from the code and the files:

- `<!-- opcircuits:cli -->`: every command with its options (flag, type, default, help), taken
  from the option dataclasses through the same plan `opcircuits.cli_options` builds Typer's
  options from.
- `<!-- opcircuits:config -->`: every table and key of the experiment TOML, from
  `opcircuits.pipeline.config.default_schema()` (the schema `opcircuits run` checks against).
- `<!-- opcircuits:modules -->`: every module under `src/opcircuits/` with the first sentence of
  its docstring and its length, and the files over the 450-line limit named as exceptions.
- `<!-- opcircuits:benchmark PATTERN -->`: the result files `benchmarks/results/PATTERN.json`
  (a glob), as written by `benchmarks/results.write_result`: one table of figures per file, with
  its command, machine, versions and notes. No matching file renders "not measured yet".
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import inspect
import json
import re
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "opcircuits"
MAX_LINES = 450  # the limit on a source file's length
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"<!--\s*opcircuits:(\w[\w-]*)\s*([^>]*?)\s*-->")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        kind, arg = match.group(1), match.group(2).strip()
        if kind == "cli":
            return cli_reference()
        if kind == "config":
            return config_reference()
        if kind == "benchmark":
            return benchmark_results(arg)
        if kind == "modules":
            return module_map()
        raise ValueError(f"{page.file.src_path}: unknown marker opcircuits:{kind}")

    return MARKER.sub(replace, markdown)


# --- shared formatting ---------------------------------------------------------------------------


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _text(text: str) -> str:
    """Prose from a help string: code spans kept, `*`, `<` and `>` outside them made literal."""
    parts = re.split(r"(`[^`]*`)", text)
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("*", "\\*").replace("<", "&lt;").replace(">", "&gt;")
    return _cell("".join(parts))


def _code(value: Any) -> str:
    text = str(value)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _type_name(annotation: Any) -> str:
    args = typing.get_args(annotation)
    if args:
        return " | ".join(_type_name(a) for a in args)
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _default(value: Any) -> str:
    if value is dataclasses.MISSING or value is ...:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    if isinstance(value, bool):
        value = str(value).lower()
    return _code(value)


# --- the command line ----------------------------------------------------------------------------


def _commands(app: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    """(full name, Typer's command info, callback) of every command, sub-apps included."""
    out = [(f"{prefix} {c.name}".strip(), c, c.callback) for c in app.registered_commands]
    for group in app.registered_groups:
        out += _commands(group.typer_instance, f"{prefix} {group.name}".strip())
    return out


def cli_reference() -> str:
    from opcircuits import cli
    from opcircuits.cli_options import plan

    lines: list[str] = []
    for name, _info, callback in _commands(cli.app, "opcircuits"):
        # `cli_options.add_command` closes over the command's Groups: the dataclasses it was
        # generated from; `plan` is the exact list of Typer options it built from them.
        scope = inspect.getclosurevars(callback).nonlocals
        groups, overrides = scope["groups"], scope["overrides"]
        lines += [f"### `{name}`", ""]
        doc = inspect.cleandoc(callback.__doc__ or "")
        if doc:
            lines += [doc, ""]
        classes = ", ".join(f"`{g.cls.__module__}.{g.cls.__name__}`" for g in groups)
        lines += [f"Options from {classes}.", ""]
        params = plan(groups, overrides)
        aliases: dict[str, list[str]] = {}
        for p in params:
            if p.alias_of is not None:
                aliases.setdefault(p.alias_of, []).append(p.flag)
        lines += ["| option | type | default | help |", "|---|---|---|---|"]
        for p in params:
            if p.alias_of is not None:
                continue
            hints = typing.get_type_hints(groups[p.group].cls)
            field = next(f for f in dataclasses.fields(groups[p.group].cls) if f.name == p.field)
            meta = field.metadata
            if "list" in meta:
                typ = f"list of {meta['list'].__name__}"
            else:
                typ = _type_name(hints[p.field])
            flag = p.flag
            if typ == "bool":
                flag = f"{p.flag}/--no-{p.flag[2:]}"
            if meta.get("short"):
                flag += f", {meta['short']}"
            default = field.default
            if field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            help_text = p.info.help.replace("\\[", "[")
            if p.name in aliases:
                help_text += " Old spelling, still accepted: " + ", ".join(
                    _code(a) for a in aliases[p.name]
                )
            shown = "given by the config" if overrides and default is dataclasses.MISSING else None
            lines.append(
                f"| {_code(flag)} | {_cell(typ)} | {shown or _cell(_default(default))} "
                f"| {_text(help_text)} |"
            )
        lines.append("")
    return "\n".join(lines)


# --- the experiment config -----------------------------------------------------------------------


def config_reference() -> str:
    from opcircuits.pipeline.config import TABLES, default_schema

    schema = default_schema()
    lines: list[str] = []
    for table in TABLES:
        lines += [f"### `[{table}]`", "", "| key | type | default | help |", "|---|---|---|---|"]
        for key, spec in schema[table].items():
            meta = spec.metadata
            typ = f"list of {meta['list'].__name__}" if "list" in meta else None
            typ = typ or _type_name(spec.annotation)
            default = _default(spec.default)
            if spec.default is None and meta.get("example") is not None:
                default += f" (e.g. {_code(meta['example'])})"
            lines.append(f"| `{key}` | {_cell(typ)} | {_cell(default)} | {_text(spec.help)} |")
        lines.append("")
    return "\n".join(lines)


# --- benchmark results ---------------------------------------------------------------------------


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def _figure(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_figure(v) for v in value)
    return str(value)


def _mapping(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_figure(v)}" for k, v in value.items()) or "—"
    return str(value) if value else "—"


def benchmark_results(pattern: str) -> str:
    if not pattern:
        raise ValueError("opcircuits:benchmark needs a result name or glob")
    paths = sorted(p for p in RESULTS.glob("*.json") if fnmatch.fnmatch(p.stem, pattern))
    if not paths:
        return (
            f'!!! note "Not measured yet"\n    No result file `benchmarks/results/{pattern}.json`'
            " exists yet: the figures appear here once the benchmark has been run.\n"
        )
    blocks = []
    for path in paths:
        result = json.loads(path.read_text(encoding="utf-8"))
        rows = ["| figure | value |", "|---|---|"]
        rows += [
            f"| `{_cell(k)}` | {_cell(_figure(v))} |"
            for k, v in _flat(result.get("figures", {})).items()
        ]
        provenance = [
            f"- **command**: {_code(result.get('command', '?'))}",
            f"- **measured at**: {result.get('measured_at') or 'not recorded'}",
            f"- **machine**: {_mapping(result.get('machine'))}",
            f"- **versions**: {_mapping(result.get('versions'))}",
        ]
        if result.get("notes"):
            provenance.append(f"- **notes**: {result['notes']}")
        blocks.append(
            f"**`{path.name}`** ({result.get('benchmark', '?')})\n\n"
            + "\n".join(rows)
            + "\n\n"
            + "\n".join(provenance)
            + "\n"
        )
    return "\n".join(blocks)


# --- the module map ------------------------------------------------------------------------------


def _summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    return first or "—"


def module_map() -> str:
    rows = ["| module | lines | what |", "|---|---:|---|"]
    long: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            long.append(f"`{name}` ({n} lines)")
        rows.append(f"| `{name}` | {n} | {_text(_summary(path))} |")
    note = (
        "Files over the limit of "
        + str(MAX_LINES)
        + " lines, the named exceptions: "
        + ", ".join(long)
        + "."
        if long
        else f"No file is over the limit of {MAX_LINES} lines."
    )
    return "\n".join(rows) + "\n\n" + note + "\n"
