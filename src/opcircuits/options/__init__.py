"""Every option of every command, declared once (torch-free and cheap to import).

One class per command, in `data.py` (data commands), `experiment.py` (extract, stores, analyze,
intervene, run), `codi.py` (train, new-base, evaluate), `doctor.py`, `lens.py` (lens train) and
`attribute.py` (attribute), `das.py` (das),
built from `core.py` and checked by `checks.py`; all are importable from here:
`from opcircuits.options import ExtractOptions`.

Each option is a dataclass field: its default, its help text (`metadata["help"]`) and its limits
(`metadata["min"]`, `metadata["max"]`, `metadata["choices"]`) live here, and `__post_init__`
checks them and the value's type against the annotation (`checks.check_fields`, the one
checking engine, which the TOML config uses too), raising `OpcircuitsError(..., field=name)`.
The command line
(`opcircuits.cli_options`) and the TOML schema of `opcircuits run` (`opcircuits.pipeline.config`)
are generated from these classes, so a new option is one field here and nothing else.

Metadata keys a field may carry (all but `help` optional):

- `help`: the sentence `--help` shows and `experiment.toml` documents.
- `min`, `max`, `choices`: limits checked in `__post_init__` (and by the config before
  anything runs).
- `flag`: the command-line name when it differs from the field name (`in_path` → `--data`).
- `aliases`: old spellings kept working but hidden from `--help` (`--dataset`, `--in`); a name
  without dashes (`STORE`) is a hidden positional argument.
- `list`: the item type of a list option (`int`, `float` or `str`): `--layers 4,8,14` and
  `--layers 4 --layers 8 --layers 14` mean the same, parsed by `split_list` (`"all"` → every).
- `all`: the list option also accepts "all" (kept as the string "all").
- `example`: the value `experiment.toml` shows, commented out, for an option unset by default.
- `short`: a one-letter flag besides the long one (`-c`).
- `toml`: False for a `run` option that is a command-line switch only (`--force`, `--config`).
- `fallback`: the value of a training option a `--recipe` may set (see `recipe_opt`).
"""

from __future__ import annotations

from opcircuits.options.attribute import AttributeOptions
from opcircuits.options.codi import (
    TRAIN_RECIPES,
    DemoBaseOptions,
    EvaluateOptions,
    NewBaseOptions,
    TrainOptions,
    recipe_opt,
)
from opcircuits.options.core import (
    DEFAULT_DATA,
    DEFAULT_MAX_NEW_TOKENS,
    DTYPES,
    MODES,
    SPLITS,
    STORE_DTYPES,
    Group,
    check_fields,
    opt,
    split_list,
)
from opcircuits.options.das import DasOptions
from opcircuits.options.data import (
    ClassifyOptions,
    DownloadOptions,
    PrototypeOptions,
    SynthOptions,
)
from opcircuits.options.doctor import DoctorOptions
from opcircuits.options.experiment import (
    AnalyzeOptions,
    AnalyzePaths,
    ExtractOptions,
    ImportLegacyOptions,
    RunOptions,
    StoreInfoOptions,
    StoreVerifyOptions,
)
from opcircuits.options.intervene import InterveneOptions, RunInterveneOptions
from opcircuits.options.lens import LensTrainOptions

__all__ = [
    "DEFAULT_DATA",
    "DEFAULT_MAX_NEW_TOKENS",
    "DTYPES",
    "MODES",
    "SPLITS",
    "STORE_DTYPES",
    "TRAIN_RECIPES",
    "AnalyzeOptions",
    "AnalyzePaths",
    "AttributeOptions",
    "ClassifyOptions",
    "DasOptions",
    "DemoBaseOptions",
    "DoctorOptions",
    "DownloadOptions",
    "EvaluateOptions",
    "ExtractOptions",
    "Group",
    "ImportLegacyOptions",
    "InterveneOptions",
    "LensTrainOptions",
    "NewBaseOptions",
    "PrototypeOptions",
    "RunInterveneOptions",
    "RunOptions",
    "StoreInfoOptions",
    "StoreVerifyOptions",
    "SynthOptions",
    "TrainOptions",
    "check_fields",
    "opt",
    "recipe_opt",
    "split_list",
]
