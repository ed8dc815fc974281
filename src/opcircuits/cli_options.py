"""Typer commands generated from the option dataclasses of `opcircuits.options`.

`add_command(app, "extract", extract_cmd, Group(ExtractOptions))` gives `extract_cmd` a signature
Typer reads: one `--field-name` option per field (or the field's `flag`), `--x/--no-x` for
booleans, the field's help, its default shown, required when it has none; list fields (metadata
`list`) accept a comma list or the option repeated (`--layers 4,8 --layers 14`), joined into one
comma string that `options.split_list` parses; every old spelling in `aliases` is a hidden option
(or a hidden positional argument when it has no dashes). The command function then receives one
dataclass instance per group, built from the options given on the command line only, so every
default lives in the dataclass and nowhere else. With `overrides=True` it receives
`{field: value}` dicts of the given options instead (for `run`, whose config file supplies the
rest).

Why not a library: `tyro` builds argparse parsers (no Typer sub-commands, no rich help panels,
its own help layout), and Typer already renders the `--help` we want from a function signature;
what was missing is only writing that signature from a dataclass, which is this module.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from opcircuits.options import Group

_SCALARS = (bool, int, float, str, Path)


@dataclass
class _Param:
    """One generated Typer parameter and where its value goes."""

    name: str  # the Python parameter name (unique within the command)
    group: int  # index of its Group
    field: str  # dataclass field name
    flag: str  # "--data"
    alias_of: str | None = None  # for hidden aliases: the name of the main parameter
    is_list: bool = False
    info: Any = None
    annotation: Any = None


def _scalar(annotation: Any) -> Any:
    """The Typer type of a field annotation (`int | None` → int; lists are handled apart)."""
    args = typing.get_args(annotation) or (annotation,)
    for candidate in _SCALARS:
        if candidate in args:
            return candidate
    return str


def _default_text(value: Any, is_list: bool) -> Any:
    if value is dataclasses.MISSING:
        return ...
    if is_list and isinstance(value, (list, tuple)):
        return [",".join(map(str, value))]
    if is_list and value is not None:
        return [str(value)]
    return value


def plan(groups: tuple[Group, ...], overrides: bool) -> list[_Param]:
    """The parameters of a command made of `groups` (options first, hidden aliases after)."""
    params: list[_Param] = []
    aliases: list[_Param] = []
    for gi, group in enumerate(groups):
        hints = typing.get_type_hints(group.cls)
        for f in dataclasses.fields(group.cls):
            if f.name in group.skip or f.name in group.cli_skip or not f.init:
                continue
            meta = f.metadata
            flag_name = group.flags.get(f.name) or group.prefix + meta.get("flag", f.name)
            flag = "--" + flag_name.replace("_", "-")
            typ = _scalar(hints[f.name])
            is_list = "list" in meta
            default = f.default
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            alias_names = tuple(meta.get("aliases", ())) if not group.flags.get(f.name) else ()
            required = default is dataclasses.MISSING and not overrides and not alias_names
            shown = _default_text(default, is_list)
            if default is dataclasses.MISSING and not required:
                shown = None
            help_text = escape(group.help.get(f.name) or meta["help"])
            if default is dataclasses.MISSING and not required and not overrides:
                help_text += " " + escape("[required]")  # given by its flag or an old spelling
            decls = [f"{flag}/--no-{flag[2:]}"] if typ is bool else [flag]
            if meta.get("short"):
                decls.append(meta["short"])
            info = typer.Option(
                shown,
                *decls,
                help=help_text,
                rich_help_panel=group.panel,
                show_default=shown not in (None, ...),
                metavar=f"<{_scalar(meta['list']).__name__},…>" if is_list else None,
            )
            if is_list:
                annotation = list[str] if required else list[str] | None
            else:
                annotation = typ if required else typ | None
            name = f"g{gi}_{f.name}"
            params.append(_Param(name, gi, f.name, flag, None, is_list, info, annotation))
            for k, alias in enumerate(alias_names):
                aname = f"{name}_alias{k}"
                if alias.startswith("-"):
                    ainfo = typer.Option(None, alias, hidden=True)
                else:
                    ainfo = typer.Argument(None, metavar=alias, hidden=True, show_default=False)
                atype = list[str] | None if is_list else typ | None
                aliases.append(_Param(aname, gi, f.name, alias, name, is_list, ainfo, atype))
    return params + aliases


def collect(
    ctx: typer.Context, params: list[_Param], given: dict[str, Any], n_groups: int
) -> list[dict[str, Any]]:
    """{field: value} per group, from the parameters given on the command line (not defaults)."""
    values: list[dict[str, Any]] = [{} for _ in range(n_groups)]
    flags: dict[tuple[int, str], str] = {}
    for p in params:
        source = ctx.get_parameter_source(p.name)
        value = given[p.name]
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP") or value is None:
            continue
        if p.is_list:
            value = ",".join(str(v) for v in value)
        key = (p.group, p.field)
        if key in flags:
            ctx.fail(f"{p.flag} and {flags[key]} are the same option: give one")
        flags[key] = p.flag
        values[p.group][p.field] = value
    return values


def _check_required(
    ctx: typer.Context, params: list[_Param], groups: tuple[Group, ...], values: list[dict]
) -> None:
    for p in params:
        if p.alias_of is not None:
            continue
        f = next(f for f in dataclasses.fields(groups[p.group].cls) if f.name == p.field)
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and p.field not in values[p.group]:
            ctx.fail(f"Missing option '{p.flag}'.")


def add_command(
    app: typer.Typer,
    name: str,
    fn: Callable[..., Any],
    *groups: Group,
    overrides: bool = False,
) -> None:
    """Register `fn` as command `name`, its options generated from `groups`.

    `fn` receives one dataclass per group (or, with `overrides`, one dict per group of the
    options given); its docstring is the command's help."""
    params = plan(groups, overrides)

    def command(ctx: typer.Context, **given: Any) -> Any:
        values = collect(ctx, params, given, len(groups))
        if overrides:
            return fn(*values)
        _check_required(ctx, params, groups, values)
        return fn(*(g.cls(**v) for g, v in zip(groups, values, strict=True)))

    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
            )
        ]
        + [
            inspect.Parameter(
                p.name, inspect.Parameter.KEYWORD_ONLY, default=p.info, annotation=p.annotation
            )
            for p in params
        ]
    )
    command.__annotations__ = {"ctx": typer.Context, **{p.name: p.annotation for p in params}}
    command.__doc__ = fn.__doc__
    command.__name__ = fn.__name__
    app.command(name)(command)


__all__ = ["Group", "add_command", "collect", "plan"]
