"""Every option of every command, declared once (torch-free and cheap to import).

Each option is a dataclass field: its default, its help text (`metadata["help"]`) and its limits
(`metadata["min"]`, `metadata["choices"]`) live here, and `__post_init__` checks them, raising
`OpcircuitsError(..., field=name)`. The command line (`opcircuits.cli_options`) and the TOML schema
of `opcircuits run` (`opcircuits.config`) are generated from these classes, so a new option is one
field here and nothing else.

Metadata keys a field may carry (all but `help` optional):

- `help`: the sentence `--help` shows and `experiment.toml` documents.
- `min`, `choices`: limits checked in `__post_init__` (and by the config before anything runs).
- `flag`: the command-line name when it differs from the field name (`in_path` → `--data`).
- `aliases`: old spellings kept working but hidden from `--help` (`--dataset`, `--in`); a name
  without dashes (`STORE`) is a hidden positional argument.
- `list`: the item type of a list option (`int` or `str`): `--layers 4,8,14` and
  `--layers 4 --layers 8 --layers 14` mean the same, parsed by `split_list` (`"all"` → every).
- `cli`: False for a field the command line does not offer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError

# One generous default for every command that decodes answers (extract, evaluate): a well-trained
# model stops at EOS long before, and a short limit silently truncates long answers.
DEFAULT_MAX_NEW_TOKENS = 256

# What `data download` writes: the default problem file of every command that reads GSM8K.
DEFAULT_DATA = "data/gsm8k_full.jsonl"
MODES = ("prototype", "full", "analysis_only")
DTYPES = ("float32", "bfloat16", "float16")
STORE_DTYPES = ("float16", "float32")
SPLITS = ("train", "test")

_HELP_MODEL = "Preset (demo, codi-gpt2, codi-llama3.2-1b), hub id or checkpoint folder."
_HELP_DEVICE = "auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps."
_HELP_DTYPE = "Model weights' dtype: float32, bfloat16 or float16."


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


def split_list(
    value: str | Sequence[Any] | None, *, item: type = int, field: str | None = None
) -> list[Any] | None:
    """The one parser of list options: "4,8,14", ["4,8", "14"] (repeated flags) or [4, 8, 14]
    → [4, 8, 14]; None, "" and "all" → None (every one). Items are `item` (int or str)."""
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
            if item is int:
                if isinstance(piece, bool) or isinstance(piece, float):
                    piece = str(piece)  # 1.5 or True is not a layer number
                try:
                    piece = int(piece)
                except ValueError:
                    raise OpcircuitsError(
                        f"expected comma-separated integers or 'all', got {value!r}", field=field
                    ) from None
            elif not isinstance(piece, str):
                raise OpcircuitsError(f"expected names, got {value!r}", field=field)
            out.append(piece)
    return out


def check_fields(options: Any) -> None:
    """Check every field's `min` and `choices`, and turn list options into lists."""
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        meta = f.metadata
        if "list" in meta and value is not None:
            if not (value == "all" and meta.get("all")):
                value = split_list(value, item=meta["list"], field=f.name)
                if value is None and not meta.get("all"):
                    raise OpcircuitsError("needs at least one value", field=f.name)
                setattr(options, f.name, value)
        low = meta.get("min")
        if low is not None and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
                raise OpcircuitsError(f"must be at least {low}, got {value!r}", field=f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise OpcircuitsError(f"must be a finite number, got {value}", field=f.name)
        choices = meta.get("choices")
        if choices is not None and value is not None and value not in choices:
            raise OpcircuitsError(
                f"must be one of {', '.join(map(str, choices))}, got {value!r}", field=f.name
            )
        if value is not None and f.type in ("Path", "Path | None") and not isinstance(value, Path):
            setattr(options, f.name, Path(value))


# --- data --------------------------------------------------------------------------------------


@dataclass
class DownloadOptions:
    """`opcircuits data download`."""

    source: str = opt(
        "hf",
        flag="data",
        aliases=("--source",),
        help="Where GSM8K comes from: 'hf' for the Hugging Face hub (openai/gsm8k, main; needs "
        "network), or a folder with GSM8K's train.jsonl and test.jsonl or the hub's parquet "
        "files (e.g. ../shared/data/gsm8k). In `opcircuits run`, 'synthetic' uses generated "
        "problems with known operations instead (`data synth`, test split, [data] synth_*).",
    )
    out: Path = opt(
        Path(DEFAULT_DATA),
        help="Output JSONL: all 8,792 problems, test split then train, ids test_N / train_N.",
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class ClassifyOptions:
    """`opcircuits data classify`."""

    in_path: Path = opt(
        Path(DEFAULT_DATA),
        flag="data",
        aliases=("--in",),
        help="Problems to label: the JSONL `data download` writes, or the earlier scripts' JSON.",
    )
    out: Path | None = opt(
        None,
        help="Output JSONL (default data/operation_samples_N.jsonl, N = --per-category); a "
        "manifest <name>.manifest.json is written beside it.",
    )
    per_category: int = opt(200, min=1, help="Problems sampled per category (3 × 200 = 600).")
    seed: int = opt(42, help="Sampling seed: the same seed gives byte-identical output.")
    match_steps: bool = opt(
        False,
        help="Give every category the same histogram of n_steps (the number of calculator "
        "annotations), so step count cannot stand in for the operation.",
    )
    allow_fewer: bool = opt(
        False, help="Take every problem of a category that has fewer than --per-category."
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class PrototypeOptions:
    """`opcircuits data prototype`."""

    in_path: Path = opt(
        Path("data/operation_samples_200.jsonl"),
        flag="data",
        aliases=("--in",),
        help="A sampled set from `data classify` (or the earlier operation_samples_200.json).",
    )
    out: Path | None = opt(
        None,
        help="Output JSONL (default data/operation_samples_prototype_3K.jsonl), with manifest.",
    )
    per_category: int = opt(
        20, min=1, help="Problems per category (K) in the subset (3 × 20 = 60)."
    )
    seed: int = opt(42, help="Sampling seed: the same seed gives byte-identical output.")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class SynthOptions:
    """`opcircuits data synth`."""

    out: Path = opt(
        Path("data/synth.jsonl"),
        help="Output JSONL; a manifest <name>.manifest.json (and <name>.pairs.jsonl) are "
        "written beside it.",
    )
    n: int = opt(600, help="Problems in all (a multiple of 3: n/3 per category).")
    seed: int = opt(0, help="Seed (same seed and options → same bytes).")
    split: str = opt(
        "test",
        choices=SPLITS,
        help="train: only training frames and train computations; test: also the held-out "
        "frames, and only test computations.",
    )
    # `str` too: `opcircuits run --synth-steps 2,3` passes the text, check_fields parses it
    steps: list[int] | str = opt(
        [2, 3],
        list=int,
        help="Step counts (each 2..6); every category gets the same number of problems of each.",
    )
    min_operand: int = opt(2, help="Smallest number in a question.")
    max_operand: int = opt(10, help="Largest number in a question.")
    max_result: int = opt(50, help="Largest intermediate or final result (all are ≥ 1).")
    heldout_share: float = opt(
        0.5, help="test split: share of problems written with a held-out frame."
    )
    pairs: bool = opt(
        True,
        help="Also write <name>.pairs.jsonl: each problem's counterfactual partner (one step's "
        "operation changed).",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.n < 3 or self.n % 3:  # the three categories get n/3 each
            raise OpcircuitsError(f"must be a positive multiple of 3, got {self.n}", field="n")
        if any(not 2 <= c <= 6 for c in self.steps):
            raise OpcircuitsError(
                f"step counts must be 2..6 (mixed needs two steps), got {self.steps!r}",
                field="steps",
            )
        if not 1 <= self.min_operand <= self.max_operand:
            raise OpcircuitsError(
                f"need 1 <= min_operand <= max_operand, got {self.min_operand}..{self.max_operand}",
                field="min_operand",
            )
        if self.max_operand < 2:
            raise OpcircuitsError("must be at least 2", field="max_operand")
        if self.max_result < self.max_operand * 2:
            raise OpcircuitsError(
                f"must be at least 2 × max_operand ({2 * self.max_operand})", field="max_result"
            )
        if not 0.0 <= self.heldout_share <= 1.0:
            raise OpcircuitsError("must be between 0 and 1", field="heldout_share")

    def step_counts(self) -> list[int]:
        return sorted(set(self.steps))


# --- extraction --------------------------------------------------------------------------------


@dataclass
class ExtractOptions:
    """`opcircuits extract` (and the [extract] table of `opcircuits run`)."""

    dataset: Path = opt(
        flag="data",
        aliases=("--dataset",),
        help="Problem file: JSONL from the data commands, or the earlier scripts' JSON.",
    )
    out: Path = opt(help="Store directory to write; rerunning the same command resumes it.")
    model: str = opt("demo", help=_HELP_MODEL + " The default, demo, ships with the package.")
    checkpoint: Path | None = opt(
        None,
        example="path/to/codi-checkpoint",
        help="Local CODI checkpoint folder (model.safetensors or pytorch_model.bin); with a "
        "preset --model it replaces the preset's download and keeps its settings.",
    )
    base: str | None = opt(
        None,
        example="meta-llama/Llama-3.2-1B-Instruct",
        help="Base model: hub id or local folder (config + tokenizer [+ weights]).",
    )
    layers: str | list[int] | None = opt(
        None,
        list=int,
        all=True,
        example=[4, 8, 14],
        help="Layers to record, e.g. 4,8,14 or all (HF hidden_states index: 0 = embeddings, "
        "l = output of block l). Default: the model's analysis layers.",
    )
    batch_size: int = opt(32, min=1, help="Problems per forward pass (results do not change).")
    max_new_tokens: int = opt(
        DEFAULT_MAX_NEW_TOKENS, min=1, help="Answer tokens decoded at most (stops at EOS)."
    )
    dtype: str = opt("float32", choices=DTYPES, help=_HELP_DTYPE)
    device: str = opt("auto", help=_HELP_DEVICE)
    store_dtype: str = opt(
        "float16",
        choices=STORE_DTYPES,
        help="Dtype of the stored hidden states: float16 (half the size) or float32.",
    )
    shard_size: int = opt(
        256, min=1, help="Problems per store shard: the unit in which extraction resumes."
    )
    merge: bool = opt(True, help="Merge the LoRA adapters into the base (same results, faster).")
    top_k: int = opt(5, min=1, help="Logit-lens tokens kept per position.")

    def __post_init__(self) -> None:
        check_fields(self)


# --- analysis ----------------------------------------------------------------------------------


@dataclass
class AnalyzeOptions:
    """`opcircuits analyze` (and the [analyze] table of `opcircuits run`)."""

    positions: str | list[str] | None = opt(
        None,
        list=str,
        example=["bot", "latent_1", "latent_2", "latent_3", "latent_4", "latent_5", "latent_6"],
        help="Positions to analyze, e.g. bot,latent_1,latent_2 (default: all in the store). "
        "Keep bot for the pre-thought control.",
    )
    layers: str | list[int] | None = opt(
        None,
        list=int,
        example=[4, 8, 14],
        help="Layers to analyze, e.g. 4,8,14 (default: all in the store).",
    )
    folds: int = opt(5, min=2, help="Stratified cross-validation folds.")
    repeats: int = opt(3, min=1, help="Times the k-fold split is repeated with new shuffles.")
    permutations: int = opt(
        200, min=0, help="Label permutations of the permutation tests (0 = no tests)."
    )
    seed: int = opt(0, help="Seed of the folds, permutations and every model.")
    jobs: int = opt(-1, help="Worker processes (-1 = all cores); results do not depend on it.")

    def __post_init__(self) -> None:
        check_fields(self)
        jobs = self.jobs
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs == 0 or jobs < -1:
            raise OpcircuitsError(f"must be ≥ 1 or -1 (all cores), got {jobs!r}", field="jobs")


@dataclass
class AnalyzePaths:
    """The input and output of `opcircuits analyze` (the run sets them itself)."""

    store: Path = opt(
        aliases=("STORE",), help="Thought store directory (from extract or store import-legacy)."
    )
    out: Path = opt(
        help="Output directory: analysis_report.json, ANALYSIS_SUMMARY.md, report.html, PNGs."
    )

    def __post_init__(self) -> None:
        check_fields(self)


# --- stores ------------------------------------------------------------------------------------


@dataclass
class ImportLegacyOptions:
    """`opcircuits store import-legacy`."""

    file: Path = opt(
        flag="store",
        aliases=("FILE",),
        help="The earlier scripts' continuous_thoughts_*.json: a list of {id, question, answer, "
        "operation_type, thoughts: {early|middle|late: 6 x D}}.",
    )
    out: Path = opt(help="Store directory to create.")
    layers: list[int] = opt(
        [4, 8, 14],
        list=int,
        help="HF hidden_states indices of the layers, in --layer-names order (not recorded in "
        "the legacy file; 4,8,14 were the earlier experiment's for CODI-LLaMA-3.2-1B).",
    )
    layer_names: list[str] = opt(
        ["early", "middle", "late"],
        list=str,
        help="The keys of each item's 'thoughts', comma-separated; kept as layer_names.",
    )
    model: str = opt("codi-llama3.2-1b", help="Model name to record in the manifest.")
    num_latent: int = opt(6, min=1, help="The model's number of latent steps K (manifest).")
    store_dtype: str = opt(
        "float16", choices=STORE_DTYPES, help="float16 (half the size) or float32."
    )
    overwrite: bool = opt(False, help="Replace an existing store at --out.")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class StoreInfoOptions:
    """`opcircuits store info`."""

    store: Path = opt(aliases=("STORE",), help="Thought store directory.")
    allow_incomplete: bool = opt(
        False, help="Describe an unfinished store (the shards done so far)."
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class StoreVerifyOptions:
    """`opcircuits store verify`."""

    store: Path = opt(aliases=("STORE",), help="Thought store directory.")

    def __post_init__(self) -> None:
        check_fields(self)


# --- the whole experiment ----------------------------------------------------------------------


@dataclass
class RunOptions:
    """`opcircuits run`: the [run] table (mode, out, store) plus command-line-only switches."""

    mode: str = opt(
        "prototype",
        choices=MODES,
        help="prototype: GSM8K → classify and sample → 60-problem subset → extract → analyze → "
        "report. full: the same on the 600 sampled problems. analysis_only: analyze --store "
        "(a store, or a legacy continuous_thoughts_*.json).",
    )
    out: Path | None = opt(
        None,
        example="runs/prototype",
        help="Run directory (default runs/<mode>). Rerun into it to resume.",
    )
    store: Path | None = opt(
        None,
        example="runs/prototype/store",
        help="analysis_only: the store or legacy JSON to analyze. Otherwise: where to write the "
        "store (default <out>/store); an existing store there must come from the same model "
        "and data.",
    )
    force: bool = opt(False, toml=False, help="Recompute every stage, even up-to-date ones.")
    config: Path | None = opt(
        None,
        toml=False,
        short="-c",
        help="Experiment TOML with tables [run], [data], [extract], [analyze] (see "
        "experiment.toml). Flags given here override it.",
    )

    def __post_init__(self) -> None:
        check_fields(self)


# --- training and evaluating CODI models --------------------------------------------------------


# The official CODI training settings of the two released models (zhenyi4/codi,
# scripts/train_gpt2_gsm8k-aug.sh and scripts/train_llama1b_gsm8k-aug.sh; values the scripts leave
# unset are the defaults of the official train.py / src/model.py). Effective batch 128 =
# per-device batch × gradient accumulation on one process. Official LoRA dropout is 0.1, as
# CodiConfig's default; the official run holds the whole model in bf16, here bf16 is autocast
# over fp32 weights.
_OFFICIAL_COMMON: dict[str, Any] = {
    "data": "zen-E/GSM8k-Aug",
    "seed": 11,
    "mixed_precision": "bf16",
    "max_grad_norm": 2.0,
    "lora_r": 128,
    "lora_alpha": 32,
    "weight_decay": 0.1,
    "warmup_ratio": 0.03,
    "num_latent": 6,
    "prj_dropout": 0.0,
    "prj_no_ln": False,
    "remove_eos": True,
    "include_last_cot": False,
    "distill_loss": "smooth_l1",
    "teacher_factor": 1.0,  # ref_loss_factor's default
}
TRAIN_RECIPES: dict[str, dict[str, Any]] = {
    "codi-gpt2": {
        **_OFFICIAL_COMMON,
        "base": "gpt2",
        "batch_size": 64,
        "grad_accum": 2,
        "epochs": 40.0,
        "lr": 3e-3,
        "prj_dim": 768,
        "distill_factor": 1.0,  # not set by the script: distill_loss_factor's default
        "max_tokens": 1000,  # not set by the script: max_token_num's default
    },
    "codi-llama3.2-1b": {
        **_OFFICIAL_COMMON,
        "base": "meta-llama/Llama-3.2-1B-Instruct",
        "batch_size": 32,
        "grad_accum": 4,
        "epochs": 10.0,
        "lr": 8e-4,
        "prj_dim": 2048,
        "distill_factor": 20.0,
        "max_tokens": 200,
    },
}


def recipe_opt(fallback: Any, *, help: str, **meta: Any) -> Any:
    """A training option a `--recipe` may set. Its field default is None, meaning "not given":
    `TrainOptions` fills it from the recipe, else from `fallback`, so an explicit value (even one
    equal to the fallback) always wins over the recipe."""
    shown = "none" if fallback is None else str(fallback)
    return opt(None, help=f"{help} (default {shown}, or the recipe's)", fallback=fallback, **meta)


@dataclass
class TrainOptions:
    """`opcircuits train`. Fields declared with `recipe_opt` are None until `__post_init__`
    resolves them: the given value, else the recipe's, else the field's fallback."""

    out: Path = opt(
        help="Output folder: OUT/last/ (resumable checkpoint), OUT/ (final model, released "
        "layout), OUT/train_log.jsonl, OUT/train_data.json (what was read and left out)."
    )
    recipe: str | None = opt(
        None,
        choices=tuple(TRAIN_RECIPES),
        help="Official CODI settings of a released model (learning rate, epochs, batch, LoRA, "
        "projection, distillation factor, bf16, seed, base, GSM8k-Aug data); options given "
        "explicitly override them.",
    )
    base: str | None = recipe_opt(
        None, help="Base model: hub id or local folder (config + tokenizer [+ weights])."
    )
    data: str | None = recipe_opt(
        DEFAULT_DATA,
        help="Training problems: GSM8K or GSM8k-Aug rows in a JSONL/JSON/parquet file (of "
        "problem records, such as the one `data download` writes, only the split=train rows), "
        "a folder holding train.jsonl, 'hf' (GSM8K on the hub) or a hub dataset id "
        "(zen-E/GSM8k-Aug).",
    )
    from_scratch: bool = opt(
        False,
        help="Initialize the base randomly from its config (the checkpoint becomes "
        "self-contained, base '.').",
    )
    num_latent: int | None = recipe_opt(6, min=1, help="K continuous thoughts.")
    prj_dim: int | None = recipe_opt(2048, min=1, help="Hidden width of the projection.")
    prj_dropout: float | None = recipe_opt(0.0, min=0, help="Projection dropout.")
    prj_no_ln: bool | None = recipe_opt(False, help="No LayerNorm in the projection.")
    lora_r: int | None = recipe_opt(128, min=0, help="LoRA rank; 0 trains the whole base.")
    lora_alpha: int | None = recipe_opt(32, help="LoRA alpha.")
    remove_eos: bool | None = recipe_opt(
        True, help="No EOS between the question and the thoughts (as released)."
    )
    include_last_cot: bool | None = recipe_opt(
        False,
        help="Keep the last chain-of-thought step in the teacher sequence (the official CODI "
        "training drops it, so the teacher computes the final result at the distillation "
        "token instead of copying it).",
    )
    layers: str | list[int] | None = opt(
        None, list=int, help="Default analysis layers saved in codi_config.json, e.g. 2,4,6."
    )
    max_tokens: int | None = recipe_opt(
        256, min=1, help="Leave out (and count) examples whose teacher sequence is longer."
    )
    limit: int | None = opt(None, min=1, help="Use only the first N problems.")
    batch_size: int | None = recipe_opt(32, min=1, help="Examples per process per micro-step.")
    grad_accum: int | None = recipe_opt(1, min=1, help="Micro-steps per optimizer step.")
    epochs: float | None = recipe_opt(3.0, help="Epochs (ignored with --max-steps).")
    max_steps: int | None = opt(None, min=1, help="Optimizer steps in total.")
    lr: float | None = recipe_opt(8e-4, help="Peak learning rate (AdamW).")
    weight_decay: float | None = recipe_opt(0.01, help="AdamW weight decay.")
    warmup_ratio: float | None = recipe_opt(
        0.03, help="Linear warm-up share before the cosine decay."
    )
    max_grad_norm: float | None = recipe_opt(2.0, help="Gradient clipping.")
    distill_loss: str | None = recipe_opt(
        "smooth_l1", choices=("smooth_l1", "l2"), help="smooth_l1 or l2."
    )
    distill_factor: float | None = recipe_opt(20.0, help="Multiplier of the distillation loss.")
    teacher_factor: float | None = recipe_opt(1.0, help="Multiplier of the teacher cross-entropy.")
    teacher_only_steps: int = opt(0, min=0, help="First N steps train the teacher task only.")
    save_every: int = opt(100, min=1, help="Checkpoint every N steps.")
    stop_after: int | None = opt(
        None, help="Stop (checkpointed) after N steps of this invocation; rerun to continue."
    )
    seed: int | None = recipe_opt(0, help="Seed of initialization and data order.")
    mixed_precision: str | None = recipe_opt(
        "no", choices=("no", "fp16", "bf16"), help="no, fp16 or bf16."
    )
    threads: int | None = opt(None, min=1, help="torch CPU threads.")

    def __post_init__(self) -> None:
        if self.recipe is not None and self.recipe not in TRAIN_RECIPES:
            raise OpcircuitsError(
                f"must be one of {', '.join(TRAIN_RECIPES)}, got {self.recipe!r}", field="recipe"
            )
        recipe = TRAIN_RECIPES[self.recipe] if self.recipe else {}
        for f in dataclasses.fields(self):
            if "fallback" in f.metadata and getattr(self, f.name) is None:
                setattr(self, f.name, recipe.get(f.name, f.metadata["fallback"]))
        check_fields(self)
        if self.base is None:
            raise OpcircuitsError("give a base model (or a --recipe that names one)", field="base")
        if self.max_steps is None and self.epochs <= 0:
            raise OpcircuitsError("must be > 0 (or give max_steps)", field="epochs")

    def fingerprint(self) -> dict[str, Any]:
        """The options a resumed run must share with the run that wrote the checkpoint (the
        resolved values: a recipe and the same values given one by one are the same run)."""
        skip = {"out", "stop_after", "save_every", "threads", "data", "recipe"}
        out = {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in dataclasses.asdict(self).items()
            if k not in skip
        }
        # Layers as the comma string checkpoints written before they became a list recorded.
        if self.layers is not None:
            out["layers"] = ",".join(map(str, self.layers))
        return out


@dataclass
class NewBaseOptions:
    """`opcircuits new-base`."""

    out: Path = opt(help="Folder for config.json + tokenizer (no weights).")
    data: str = opt(
        DEFAULT_DATA,
        help="GSM8K train problems the tokenizer is trained on (as for `train --data`), or 'hf'.",
    )
    vocab_size: int = opt(2048, min=1, help="BPE vocabulary size.")
    hidden_size: int = opt(256, min=1, help="Model width.")
    num_layers: int = opt(6, min=1, help="Transformer blocks.")
    num_heads: int = opt(4, min=1, help="Attention heads.")
    intermediate_size: int = opt(688, min=1, help="MLP width.")
    max_positions: int = opt(512, min=1, help="Longest sequence.")
    split_digits: bool = opt(
        True,
        help="Split numbers into single digits (the demo); --no-split-digits lets frequent "
        "numbers become one token each (demo-arith).",
    )

    def __post_init__(self) -> None:
        check_fields(self)


DemoBaseOptions = NewBaseOptions  # the earlier name


@dataclass
class EvaluateOptions:
    """`opcircuits evaluate`."""

    model: str = opt("demo", help=_HELP_MODEL)
    data: str = opt(
        DEFAULT_DATA,
        help="GSM8K test problems: the JSONL `data download` writes (its split=test rows), "
        "GSM8K's original test.jsonl, or a folder holding it.",
    )
    device: str = opt("auto", help=_HELP_DEVICE)
    dtype: str = opt("float32", choices=DTYPES, help=_HELP_DTYPE)
    out: Path | None = opt(None, help="Write the accuracies and every answer here (JSON).")
    limit: int | None = opt(None, min=1, help="Only the first N problems.")
    num_latent: list[int] = opt(
        [6, 0], list=int, help="Student settings: the K values to measure, e.g. 6,0."
    )
    teacher: bool = opt(True, help="Also measure the teacher (explicit CoT, greedy).")
    batch_size: int = opt(64, min=1, help="Problems per batch.")
    max_new_tokens: int = opt(
        DEFAULT_MAX_NEW_TOKENS, min=1, help="Student answer tokens decoded at most."
    )
    max_cot_tokens: int = opt(
        DEFAULT_MAX_NEW_TOKENS,
        min=1,
        help="Teacher tokens decoded at most (chain of thought + answer; stops at EOS).",
    )
    threads: int | None = opt(None, min=1, help="torch CPU threads.")

    def __post_init__(self) -> None:
        check_fields(self)
        if any(k < 0 for k in self.num_latent):
            raise OpcircuitsError(f"must be ≥ 0, got {self.num_latent}", field="num_latent")


__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "AnalyzeOptions",
    "AnalyzePaths",
    "ClassifyOptions",
    "DemoBaseOptions",
    "DownloadOptions",
    "Group",
    "EvaluateOptions",
    "ExtractOptions",
    "ImportLegacyOptions",
    "NewBaseOptions",
    "PrototypeOptions",
    "RunOptions",
    "StoreInfoOptions",
    "StoreVerifyOptions",
    "SynthOptions",
    "TRAIN_RECIPES",
    "TrainOptions",
    "check_fields",
    "split_list",
]
