"""The schema of `opcircuits run`'s config: which keys each table takes, derived from the stages'
option dataclasses (`RUN_GROUPS`), with each key's default, annotation and help."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opcircuits.options import (
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
        # full mode extracts the baseline stores itself, and runs the causal tests; a tuned lens
        # belongs to one store, which the run makes itself (`lens train` then `analyze`)
        skip=frozenset(
            {"matched_store", "random_store", "interventions", "attribution", "tuned_lens"}
        ),
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
