"""What every options class is built from: `opt` (a field with its help and limits), `Group` (a
class as part of a command or of the run config) and the constants several commands share. The
checks `__post_init__` runs (`check_fields`) and the one list parser (`split_list`) are
`checks.py`'s, importable from here too."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opcircuits.options.checks import check_fields, split_list

# One generous default for every command that decodes answers (extract, evaluate): a well-trained
# model stops at EOS long before, and a short limit silently truncates long answers.
DEFAULT_MAX_NEW_TOKENS = 256

# What `data download` writes: the default problem file of every command that reads GSM8K.
DEFAULT_DATA = "data/gsm8k_full.jsonl"
MODES = ("prototype", "full", "analysis_only")
# Bounds every command's counts share (`opt(..., max=...)`), checked before anything is allocated:
# far beyond any real use, short of what would exhaust a machine.
MAX_BATCH = 4096  # problems per forward pass
MAX_NEW_TOKENS = 4096  # answer tokens (the KV cache is preallocated for them)
MAX_SHARD = 100_000  # problems per store shard or saved part
MAX_LAYER = 1024  # a layer index (hidden_states); the model's depth is checked once it is loaded
MAX_LATENT = 100  # continuous thoughts K
MAX_PROBLEMS = 10_000  # problems sampled per category
SEED_MAX = 2**32 - 1  # numpy's and scikit-learn's seeds are 0 .. 2**32 - 1
# The model dtypes every command offers, by torch name (`codi.checkpoint.DTYPES` maps them).
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


__all__ = [
    "DEFAULT_DATA",
    "DEFAULT_MAX_NEW_TOKENS",
    "DTYPES",
    "MODES",
    "SPLITS",
    "STORE_DTYPES",
    "Group",
    "check_fields",
    "opt",
    "split_list",
]
