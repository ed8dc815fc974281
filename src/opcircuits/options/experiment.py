"""Options of the experiment's stages: `extract`, `store import-legacy|info|verify`, `analyze`,
`intervene` and `run` (whose config tables reuse the data, extract and analyze classes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opcircuits.errors import OpcircuitsError
from opcircuits.options.core import (
    DEFAULT_MAX_NEW_TOKENS,
    DTYPES,
    HELP_DEVICE,
    HELP_DTYPE,
    HELP_MODEL,
    MAX_BATCH,
    MAX_LATENT,
    MAX_LAYER,
    MAX_NEW_TOKENS,
    MAX_SHARD,
    MODES,
    SEED_MAX,
    STORE_DTYPES,
    check_fields,
    opt,
)

# Upper bounds of the counts below, checked before anything is allocated: beyond them a value
# would exhaust the memory or the machine (a bootstrap's resamples are held as matrices over the
# whole sweep, permutations as label arrays) long before it changed a result.
MAX_PERMUTATIONS = 10_000
MAX_FOLDS = 100
MAX_REPEATS = 100
MAX_JOBS = 1024

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
    model: str = opt("demo", help=HELP_MODEL + " The default, demo, ships with the package.")
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
    num_latent: int | None = opt(
        None,
        min=1,
        max=MAX_LATENT,
        help="K continuous thoughts. Default: the checkpoint's codi_config.json or preset; "
        "required for any other checkpoint.",
    )
    remove_eos: bool | None = opt(
        None,
        help="Whether the model was trained without EOS between the question and the "
        "thoughts (--no-remove-eos: with it, as the official code's default). Default: the "
        "checkpoint's codi_config.json or preset; required for any other checkpoint.",
    )
    lora_alpha: int | None = opt(
        None,
        min=1,
        max=10_000,
        help="LoRA alpha the checkpoint was trained with (scales its adapters). Default: the "
        "checkpoint's codi_config.json or preset; required for any other checkpoint with LoRA.",
    )
    layers: str | list[int] | None = opt(
        None,
        list=int,
        all=True,
        max=MAX_LAYER,
        example=[4, 8, 14],
        help="Layers to record, e.g. 4,8,14 or all (HF hidden_states index: 0 = embeddings, "
        "l = output of block l). Default: the model's analysis layers.",
    )
    batch_size: int = opt(
        32, min=1, max=MAX_BATCH, help="Problems per forward pass (results do not change)."
    )
    max_new_tokens: int = opt(
        DEFAULT_MAX_NEW_TOKENS,
        min=1,
        max=MAX_NEW_TOKENS,
        help="Answer tokens decoded at most (stops at EOS).",
    )
    dtype: str = opt("float32", choices=DTYPES, help=HELP_DTYPE)
    device: str = opt("auto", help=HELP_DEVICE)
    store_dtype: str = opt(
        "float16",
        choices=STORE_DTYPES,
        help="Dtype of the stored hidden states: float16 (half the size) or float32.",
    )
    shard_size: int = opt(
        256,
        min=1,
        max=MAX_SHARD,
        help="Problems per store shard: the unit in which extraction resumes.",
    )
    merge: bool = opt(True, help="Merge the LoRA adapters into the base (same results, faster).")
    top_k: int = opt(5, min=1, max=1000, help="Logit-lens tokens kept per position.")
    reinit: int | None = opt(
        None,
        min=0,
        max=SEED_MAX,
        help="Re-initialize every weight of the model with this seed before extracting: the "
        "random-model baseline (what the architecture and the input give without training).",
    )

    def __post_init__(self) -> None:
        check_fields(self)


# --- analysis ----------------------------------------------------------------------------------

# analysis.features.MAIN_VIEWS (options, the lowest layer, cannot import it; a test compares them)
MAIN_VIEWS = ("mean", "first", "last", "concat")


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
        max=MAX_LAYER,
        example=[4, 8, 14],
        help="Layers to analyze, e.g. 4,8,14 (default: all in the store).",
    )
    folds: int = opt(5, min=2, max=MAX_FOLDS, help="Stratified cross-validation folds.")
    repeats: int = opt(
        3, min=1, max=MAX_REPEATS, help="Times the k-fold split is repeated with new shuffles."
    )
    permutations: int = opt(
        200,
        min=0,
        max=MAX_PERMUTATIONS,
        help="Label permutations of the permutation tests (0 = no tests).",
    )
    seed: int = opt(0, min=0, max=SEED_MAX, help="Seed of the folds, permutations and every model.")
    jobs: int = opt(
        -1, max=MAX_JOBS, help="Worker processes (-1 = all cores); results do not depend on it."
    )
    permute_all_probes: bool = opt(
        False,
        help="Refit the random forest and MLP on every permutation too, so they join the "
        "family-wise test (about 10x the analysis time; default: logistic regression only).",
    )
    nonlinear_views: str | list[str] = opt(
        "mean",
        list=str,
        all=True,
        help="Main views the random forest and the MLP (each with its control task) are fitted "
        "on: mean, first, last, concat, or all (the earlier default, about 1.6x the analysis "
        "time). Logistic regression runs on every view.",
    )
    primary: str | None = opt(
        None,
        help="Pre-register one probe as probe:view (e.g. logreg:mean): its permutation test "
        "alone decides the headline, uncorrected (default: the family-wise test over all).",
    )
    matched_store: Path | None = opt(
        None,
        help="Store of a step-matched sample from the same model (every category with the same "
        "n_steps histogram): analyzed too, for the report's step-matched section.",
    )
    random_store: Path | None = opt(
        None,
        help="Store of the same problems from the same architecture with re-initialized "
        "weights (extract --reinit): analyzed too and compared probe by probe.",
    )
    interventions: Path | None = opt(
        None,
        example="runs/full/interventions",
        help="Output folder of `opcircuits intervene` (or its interventions.json), ideally on "
        "the store's problems and model: the report's Causal tests section and figures.",
    )
    attribution: Path | None = opt(
        None,
        example="runs/full/attribution",
        help="Output folder of `opcircuits attribute` (or its attribution.json): its check "
        "against exact patching and the confirmed components, in the Causal tests section.",
    )
    tuned_lens: Path | None = opt(
        None,
        example="runs/full/tuned-lens",
        help="Output folder of `opcircuits lens train` on this store (or its tuned-lens.json): "
        "the report's tuned-lens section (held-out KL per layer against the logit lens).",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        views = self.nonlinear_views
        if views != "all" and not set(views) <= set(MAIN_VIEWS):
            raise OpcircuitsError(
                f"must be main views ({', '.join(MAIN_VIEWS)}) or all, got {views!r}",
                field="nonlinear_views",
            )
        if self.primary is not None and ":" not in str(self.primary):
            raise OpcircuitsError(
                f"give probe:view, e.g. logreg:mean, got {self.primary!r}", field="primary"
            )
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
        max=MAX_LAYER,
        help="HF hidden_states indices of the layers, in --layer-names order (not recorded in "
        "the legacy file; 4,8,14 were the earlier experiment's for CODI-LLaMA-3.2-1B).",
    )
    layer_names: list[str] = opt(
        ["early", "middle", "late"],
        list=str,
        help="The keys of each item's 'thoughts', comma-separated; kept as layer_names.",
    )
    model: str = opt("codi-llama3.2-1b", help="Model name to record in the manifest.")
    num_latent: int = opt(
        6, min=1, max=MAX_LATENT, help="The model's number of latent steps K (manifest)."
    )
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
