"""The `opcircuits` command line: thin wrappers that parse options and call library functions."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from opcircuits.errors import OpcircuitsError
from opcircuits.options import DEFAULT_MAX_NEW_TOKENS

app = typer.Typer(
    help="Do a CODI model's continuous thoughts encode which arithmetic operations a problem "
    "needs?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="GSM8K: download, label by operation, sample.", no_args_is_help=True)
store_app = typer.Typer(help="Thought stores: import, inspect, verify.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(store_app, name="store")


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


# --- data commands (issue 2) -------------------------------------------------


@data_app.command("download")
def data_download(
    source: str = typer.Option(
        "hf",
        "--source",
        help="'hf' for the Hugging Face hub (openai/gsm8k, main), or a folder with GSM8K's "
        "train.jsonl and test.jsonl or the hub's parquet files (e.g. ../shared/data/gsm8k).",
    ),
    out: Path = typer.Option(
        Path("data/gsm8k_full.jsonl"),
        "--out",
        help="Output JSONL: all 8,792 problems, test split then train, ids test_N / train_N.",
    ),
) -> None:
    """Write every GSM8K problem as one JSON record per line (with parsed steps and answer)."""
    from opcircuits.data.gsm8k import download

    path = download(source=source, out=out)
    typer.echo(f"wrote {path}")


def _print_distribution(manifest: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from opcircuits.data.annotations import CATEGORIES, UNCLASSIFIED, UNCLASSIFIED_REASONS

    dist = manifest["distribution"]
    table = Table(title=f"Operation categories over all {dist['total']:,} problems")
    table.add_column("category")
    table.add_column("problems", justify="right")
    table.add_column("share", justify="right")
    table.add_column("sampled", justify="right")
    for cat in (*CATEGORIES, UNCLASSIFIED):
        n = dist["categories"][cat]
        sampled = str(manifest["counts"].get(cat, "—"))
        table.add_row(cat, f"{n:,}", f"{n / max(dist['total'], 1):.1%}", sampled)
    for reason in UNCLASSIFIED_REASONS:
        table.add_row(
            f"  unclassified: {reason}", f"{dist['unclassified_reasons'][reason]:,}", "", ""
        )
    Console().print(table)


@data_app.command("classify")
def data_classify(
    in_path: Path = typer.Option(
        Path("data/gsm8k_full.jsonl"),
        "--in",
        help="Problems to label: JSONL from `data download`, or the earlier scripts' JSON.",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Output JSONL (default: data/operation_samples_N.jsonl, N = --per-category); "
        "a manifest <name>.manifest.json is written beside it.",
    ),
    per_category: int = typer.Option(
        200, "--per-category", help="Problems to sample per category."
    ),
    seed: int = typer.Option(42, "--seed", help="Sampling seed (same seed → identical output)."),
    match_steps: bool = typer.Option(
        False,
        "--match-steps",
        help="Give every category the same histogram of n_steps (number of annotations), "
        "so step count cannot stand in for the operation.",
    ),
    allow_fewer: bool = typer.Option(
        False,
        "--allow-fewer",
        help="Take what there is when a category has fewer than N.",
    ),
) -> None:
    """Label every problem by the operators its calculator annotations use; sample per category."""
    import json

    from opcircuits.data.sampling import classify
    from opcircuits.files import manifest_path
    from opcircuits.options import ClassifyOptions

    path = classify(
        ClassifyOptions(
            in_path=in_path,
            out=out,
            per_category=per_category,
            seed=seed,
            match_steps=match_steps,
            allow_fewer=allow_fewer,
        )
    )
    _print_distribution(json.loads(manifest_path(path).read_text(encoding="utf-8")))
    typer.echo(f"wrote {path}")


@data_app.command("prototype")
def data_prototype(
    in_path: Path = typer.Option(
        Path("data/operation_samples_200.jsonl"),
        "--in",
        help="A sampled set from `data classify` (or the earlier operation_samples_200.json).",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Output JSONL (default: data/operation_samples_prototype_3K.jsonl), with manifest.",
    ),
    per_category: int = typer.Option(20, "--per-category", help="Problems per category (K)."),
    seed: int = typer.Option(42, "--seed", help="Sampling seed."),
) -> None:
    """A small set nested in the sampled one, for quick iteration."""
    from opcircuits.data.sampling import prototype
    from opcircuits.options import PrototypeOptions

    path = prototype(
        PrototypeOptions(in_path=in_path, out=out, per_category=per_category, seed=seed)
    )
    typer.echo(f"wrote {path}")


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(
        Path("data/synth.jsonl"),
        "--out",
        help="Output JSONL; <name>.manifest.json (and <name>.pairs.jsonl) are written beside it.",
    ),
    n: int = typer.Option(600, "--n", help="Problems in all (a multiple of 3: n/3 per category)."),
    seed: int = typer.Option(0, "--seed", help="Seed (same seed and options → same bytes)."),
    split: str = typer.Option(
        "test",
        "--split",
        help="train: training frames and train computations only; test: also held-out frames.",
    ),
    steps: str = typer.Option(
        "2,3", "--steps", help="Step counts (2..6), the same histogram in every category."
    ),
    min_operand: int = typer.Option(2, "--min-operand", help="Smallest number in a question."),
    max_operand: int = typer.Option(20, "--max-operand", help="Largest number in a question."),
    max_result: int = typer.Option(
        100, "--max-result", help="Largest intermediate or final result (all are >= 1)."
    ),
    heldout_share: float = typer.Option(
        0.5, "--heldout-share", help="test split: share of problems with a held-out frame."
    ),
    pairs: bool = typer.Option(
        True, "--pairs/--no-pairs", help="Also write each problem's counterfactual partner."
    ),
) -> None:
    """Synthetic arithmetic word problems with known operations (GSM8K's record format)."""
    kwargs = dict(locals())
    from opcircuits.data.synth import SynthOptions, synth

    typer.echo(f"wrote {synth(SynthOptions(**kwargs))}")


# --- extract and store commands (issue 3) ------------------------------------

# extract (CODI helper)


@app.command("extract")
def extract_cmd(
    dataset: Path = typer.Option(..., "--dataset", help="Problem file (JSONL, or legacy JSON)."),
    out: Path = typer.Option(..., "--out", help="Store directory to write (or resume)."),
    model: str = typer.Option(
        "demo",
        "--model",
        help="Preset (demo, codi-gpt2, codi-llama3.2-1b), hub id or checkpoint dir.",
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="Local CODI checkpoint dir (model.safetensors or pytorch_model.bin); with a preset "
        "--model it replaces the preset's download and keeps its settings.",
    ),
    base: str | None = typer.Option(
        None, "--base", help="Base model hub id or local dir (config + tokenizer)."
    ),
    layers: str | None = typer.Option(
        None,
        "--layers",
        help="Layers to record, e.g. 4,8,14 or all (0 = embeddings, l = output of block l). "
        "Default: the model's analysis layers.",
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Problems per forward pass."),
    max_new_tokens: int = typer.Option(
        DEFAULT_MAX_NEW_TOKENS, "--max-new-tokens", help="Answer tokens at most."
    ),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    store_dtype: str = typer.Option(
        "float16", "--store-dtype", help="float16 or float32 for the stored arrays."
    ),
    shard_size: int = typer.Option(
        256, "--shard-size", help="Problems per shard (the unit of resuming)."
    ),
    merge: bool = typer.Option(
        True, "--merge/--no-merge", help="Merge LoRA into the base weights (faster)."
    ),
    top_k: int = typer.Option(5, "--top-k", help="Logit-lens tokens kept per position."),
) -> None:
    """Run a CODI model over problems; store its continuous thoughts, answers and logit lens."""
    from opcircuits.extract import extract
    from opcircuits.options import ExtractOptions

    path = extract(
        ExtractOptions(
            dataset=dataset,
            out=out,
            model=model,
            checkpoint=checkpoint,
            base=base,
            layers=layers,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            dtype=dtype,
            device=device,
            store_dtype=store_dtype,
            shard_size=shard_size,
            merge=merge,
            top_k=top_k,
        )
    )
    typer.echo(f"wrote {path}")


# end of extract

# store sub-commands (store helper): import-legacy, info


@store_app.command("import-legacy")
def store_import_legacy(
    file: Path = typer.Argument(
        ...,
        metavar="FILE.json",
        help="The earlier scripts' continuous_thoughts_*.json: a list of {id, question, answer, "
        "operation_type, thoughts: {early|middle|late: 6 x D}}.",
    ),
    out: Path = typer.Option(..., "--out", help="Store directory to create."),
    layers: str = typer.Option(
        "4,8,14",
        "--layers",
        help="HF hidden_states indices of the layers, in --layer-names order (not recorded in "
        "the legacy file; 4,8,14 were the earlier experiment's for CODI-LLaMA-3.2-1B).",
    ),
    layer_names: str = typer.Option(
        "early,middle,late",
        "--layer-names",
        help="The keys of each item's 'thoughts', comma-separated; kept as layer_names.",
    ),
    model: str = typer.Option(
        "codi-llama3.2-1b", "--model", help="Model name to record in the manifest."
    ),
    num_latent: int = typer.Option(
        6, "--num-latent", help="The model's number of latent steps K (manifest)."
    ),
    store_dtype: str = typer.Option(
        "float16", "--store-dtype", help="float16 (half the size) or float32."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing store at --out."
    ),
) -> None:
    """Convert a legacy thoughts JSON into a store (positions bot, latent_1..latent_5)."""
    from opcircuits.options import ImportLegacyOptions
    from opcircuits.store.legacy import import_legacy

    store = import_legacy(
        ImportLegacyOptions(
            file=file,
            out=out,
            layers=layers,
            layer_names=layer_names,
            model=model,
            num_latent=num_latent,
            store_dtype=store_dtype,
            overwrite=overwrite,
        )
    )
    typer.echo(
        f"wrote {store.path}: {len(store)} problems, positions {store.positions}, "
        f"layers {store.layers} ({', '.join(store.layer_names or [])})"
    )


@store_app.command("info")
def store_info(
    store: Path = typer.Argument(..., metavar="STORE", help="Store directory."),
    allow_incomplete: bool = typer.Option(
        False,
        "--allow-incomplete",
        help="Describe an unfinished store (the shards done so far).",
    ),
) -> None:
    """Print a store's manifest and array shapes as JSON."""
    import json

    from opcircuits.store import describe, open_store

    info = describe(open_store(store, allow_incomplete=allow_incomplete))
    typer.echo(json.dumps(info, indent=2, sort_keys=True))


@store_app.command("verify")
def store_verify(
    store: Path = typer.Option(None, "--store", help="Store directory.", show_default=False),
    store_arg: Path = typer.Argument(None, metavar="STORE", hidden=True),
) -> None:
    """Check every shard's sha256 (and everything opening checks) against the manifest."""
    from opcircuits.store import verify_store

    if (store is None) == (store_arg is None):
        raise OpcircuitsError("give the store once: --store STORE", field="store")
    checked = verify_store(store or store_arg)
    n_shards = len(checked.manifest["shards_sha256"])
    typer.echo(
        f"ok: {checked.path}: {len(checked)} problems; the sha256 of its {n_shards} shard(s) and "
        "of records.parquet match the manifest"
    )


# end of store sub-commands

# --- analyze (issue 4) -------------------------------------------------------


@app.command("analyze")
def analyze_cmd(
    store: Path = typer.Argument(..., help="Thought store directory (from extract or import)."),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Output directory: analysis_report.json, ANALYSIS_SUMMARY.md, report.html, PNGs.",
    ),
    positions: str | None = typer.Option(
        None,
        "--positions",
        help="Positions to analyse, e.g. bot,latent_1,latent_2 (default: all in the store). "
        "Keep bot for the pre-thought control.",
    ),
    layers: str | None = typer.Option(
        None, "--layers", help="Layers to analyse, e.g. 4,8,14 (default: all in the store)."
    ),
    folds: int = typer.Option(5, "--folds", help="Stratified cross-validation folds."),
    repeats: int = typer.Option(
        3, "--repeats", help="Times the k-fold split is repeated with new shuffles."
    ),
    permutations: int = typer.Option(
        200,
        "--permutations",
        help="Label permutations for the permutation tests (0 = no permutation tests).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for folds, permutations and every model."),
    jobs: int = typer.Option(
        -1, "--jobs", help="Worker processes (-1 = all cores); results do not depend on it."
    ),
) -> None:
    """Probe the thoughts with honest controls; write numbers, figures and the report."""
    from opcircuits.analysis.analyze import analyze
    from opcircuits.options import AnalyzeOptions

    analyze(
        store,
        out,
        AnalyzeOptions(
            positions=positions,
            layers=layers,
            folds=folds,
            repeats=repeats,
            permutations=permutations,
            seed=seed,
            jobs=jobs,
        ),
    )
    typer.echo(f"wrote {out / 'report.html'} and {out / 'ANALYSIS_SUMMARY.md'}")


# end of analyze

# --- run (issue 5) -----------------------------------------------------------

_RUN_DATA = "Data (prototype, full)"
_RUN_MODEL = "Model and extraction (prototype, full)"
_RUN_ANALYSIS = "Analysis"


@app.command("run")
def run_command(
    mode: str | None = typer.Option(
        None,
        "--mode",
        help="prototype: GSM8K → classify and sample → 60-problem subset → extract → analyze → "
        "report. full: the same on the 600 sampled problems. analysis_only: analyze --store "
        "(a store, or a legacy continuous_thoughts_*.json). Default: \\[run] mode, else prototype.",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="Experiment TOML with tables \\[run], \\[data], \\[extract], \\[analyze] (see "
        "experiment.toml). Flags given here override it.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Run directory (default runs/<mode>). Rerun into it to resume."
    ),
    store: Path | None = typer.Option(
        None,
        "--store",
        help="analysis_only: the store or legacy JSON to analyze. Otherwise: where to write the "
        "store (default <out>/store); an existing store there must come from the same model "
        "and data.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Recompute every stage, even up-to-date ones."
    ),
    source: str | None = typer.Option(
        None,
        "--source",
        rich_help_panel=_RUN_DATA,
        help="GSM8K source: 'hf' (the hub; default) or a folder with train.jsonl and test.jsonl.",
    ),
    per_category: int | None = typer.Option(
        None,
        "--per-category",
        rich_help_panel=_RUN_DATA,
        help="Problems sampled per category (default 200: the 600 of a full run).",
    ),
    prototype_per_category: int | None = typer.Option(
        None,
        "--prototype-per-category",
        rich_help_panel=_RUN_DATA,
        help="Problems per category in the prototype subset (default 20: 60 problems).",
    ),
    seed: int | None = typer.Option(
        None,
        "--seed",
        rich_help_panel=_RUN_DATA,
        help="Sets both the sampling seed (\\[data] seed, default 42) and the analysis seed "
        "(\\[analyze] seed, default 0).",
    ),
    match_steps: bool | None = typer.Option(
        None,
        "--match-steps/--no-match-steps",
        rich_help_panel=_RUN_DATA,
        help="Sample every category with the same distribution of solution steps.",
    ),
    allow_fewer: bool | None = typer.Option(
        None,
        "--allow-fewer/--no-allow-fewer",
        rich_help_panel=_RUN_DATA,
        help="Take all problems of a category that has fewer than --per-category.",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        rich_help_panel=_RUN_MODEL,
        help="Preset (demo, codi-gpt2, codi-llama3.2-1b), hub id or checkpoint folder. "
        "Default: demo.",
    ),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", rich_help_panel=_RUN_MODEL, help="Checkpoint folder or hub id."
    ),
    base: str | None = typer.Option(
        None, "--base", rich_help_panel=_RUN_MODEL, help="Base model folder or hub id."
    ),
    layers: str | None = typer.Option(
        None,
        "--layers",
        rich_help_panel=_RUN_MODEL,
        help="Layers to extract: '4,8,14' or 'all' (HF hidden_states index). Default: the model's.",
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", rich_help_panel=_RUN_MODEL, help="Problems per forward pass."
    ),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", rich_help_panel=_RUN_MODEL, help="Answer tokens decoded at most."
    ),
    dtype: str | None = typer.Option(
        None, "--dtype", rich_help_panel=_RUN_MODEL, help="float32, bfloat16 or float16."
    ),
    device: str | None = typer.Option(
        None, "--device", rich_help_panel=_RUN_MODEL, help="auto, cpu, cuda or mps."
    ),
    store_dtype: str | None = typer.Option(
        None, "--store-dtype", rich_help_panel=_RUN_MODEL, help="Dtype of stored hidden states."
    ),
    shard_size: int | None = typer.Option(
        None,
        "--shard-size",
        rich_help_panel=_RUN_MODEL,
        help="Problems per store shard (the unit of resumption).",
    ),
    merge: bool | None = typer.Option(
        None, "--merge/--no-merge", rich_help_panel=_RUN_MODEL, help="Merge LoRA into the base."
    ),
    top_k: int | None = typer.Option(
        None, "--top-k", rich_help_panel=_RUN_MODEL, help="Logit-lens tokens kept per position."
    ),
    positions: str | None = typer.Option(
        None,
        "--positions",
        rich_help_panel=_RUN_ANALYSIS,
        help="Positions to analyze, e.g. 'bot,latent_1' (default: all in the store).",
    ),
    analyze_layers: str | None = typer.Option(
        None,
        "--analyze-layers",
        rich_help_panel=_RUN_ANALYSIS,
        help="Layers to analyze (default: all in the store). \\[analyze] layers in the config.",
    ),
    folds: int | None = typer.Option(
        None, "--folds", rich_help_panel=_RUN_ANALYSIS, help="Cross-validation folds."
    ),
    repeats: int | None = typer.Option(
        None, "--repeats", rich_help_panel=_RUN_ANALYSIS, help="Repeats of the k-fold split."
    ),
    permutations: int | None = typer.Option(
        None, "--permutations", rich_help_panel=_RUN_ANALYSIS, help="Permutation-test shuffles."
    ),
    jobs: int | None = typer.Option(
        None, "--jobs", rich_help_panel=_RUN_ANALYSIS, help="Parallel analysis jobs."
    ),
) -> None:
    """Run the whole experiment, or resume it: stages whose inputs and options are unchanged are
    skipped. Writes config.resolved.toml, run.json (versions, seeds), run.log, data/, store/,
    analysis/ and stages/ (hash records) into the run directory."""
    from opcircuits.config import resolve
    from opcircuits.pipeline import run

    overrides = {
        "run": {"mode": mode, "out": out, "store": store},
        "data": {
            "source": source,
            "per_category": per_category,
            "prototype_per_category": prototype_per_category,
            "seed": seed,
            "match_steps": match_steps,
            "allow_fewer": allow_fewer,
        },
        "extract": {
            "model": model,
            "checkpoint": checkpoint,
            "base": base,
            "layers": layers,
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
            "dtype": dtype,
            "device": device,
            "store_dtype": store_dtype,
            "shard_size": shard_size,
            "merge": merge,
            "top_k": top_k,
        },
        "analyze": {
            "positions": positions,
            "layers": analyze_layers,
            "folds": folds,
            "repeats": repeats,
            "permutations": permutations,
            "seed": seed,
            "jobs": jobs,
        },
    }
    try:
        resolved = resolve(config, overrides)
        result = run(resolved, force=force, command=["opcircuits", *sys.argv[1:]])
    except KeyboardInterrupt:
        # Exit here: Typer turns a KeyboardInterrupt into a return value that main() ignores.
        message = "interrupted; rerun the same command to resume"
        typer.secho(message, fg=typer.colors.YELLOW, err=True)
        raise SystemExit(130) from None
    ran = ", ".join(name for name, outcome in result.stages if outcome == "ran")
    typer.echo(f"run directory: {result.run_dir}  (ran: {ran or 'nothing, all up to date'})")
    typer.echo(f"report: {result.report_html}")
    typer.echo(f"summary: {result.summary_md}")
    for line in result.headline:
        typer.echo(f"  {line}")


# --- train (issue 6) ---------------------------------------------------------


@app.command("train")
def train_cmd(
    out: Path = typer.Option(
        ...,
        "--out",
        help="Output dir: OUT/last/ (resumable checkpoint), "
        "OUT/ (final model, released layout), OUT/train_log.jsonl.",
    ),
    base: str = typer.Option(
        ..., "--base", help="Base model: hub id or local dir (config + tokenizer [+ weights])."
    ),
    data: str = typer.Option(
        "data/gsm8k/train.jsonl",
        "--data",
        help="GSM8K train JSONL (original release or problem records), a "
        "folder holding train.jsonl, or 'hf' for the hub.",
    ),
    from_scratch: bool = typer.Option(
        False,
        "--from-scratch",
        help="Initialise the base randomly from its config "
        "(checkpoint becomes self-contained, base '.').",
    ),
    num_latent: int = typer.Option(6, "--num-latent", help="K continuous thoughts."),
    prj_dim: int = typer.Option(2048, "--prj-dim", help="Hidden width of the projection."),
    prj_dropout: float = typer.Option(0.0, "--prj-dropout", help="Projection dropout."),
    prj_no_ln: bool = typer.Option(False, "--prj-no-ln", help="No LayerNorm in the projection."),
    lora_r: int = typer.Option(128, "--lora-r", help="LoRA rank; 0 trains the whole base."),
    lora_alpha: int = typer.Option(32, "--lora-alpha", help="LoRA alpha."),
    remove_eos: bool = typer.Option(
        True, "--remove-eos/--keep-eos", help="No EOS between question and thoughts (released)."
    ),
    include_last_cot: bool = typer.Option(
        False,
        "--include-last-cot",
        help="Keep the last chain-of-thought step in the teacher sequence.",
    ),
    layers: str | None = typer.Option(
        None, "--layers", help="Default analysis layers saved in codi_config.json, e.g. 2,4,6."
    ),
    max_tokens: int = typer.Option(
        256, "--max-tokens", help="Drop examples whose teacher sequence is longer."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Use only the first N problems."),
    batch_size: int = typer.Option(32, "--batch-size", help="Examples per process per micro-step."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-steps per optimizer step."),
    epochs: float = typer.Option(3.0, "--epochs", help="Epochs (ignored with --max-steps)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Optimizer steps in total."),
    lr: float = typer.Option(8e-4, "--lr", help="Peak learning rate (AdamW)."),
    weight_decay: float = typer.Option(0.01, "--weight-decay", help="AdamW weight decay."),
    warmup_ratio: float = typer.Option(
        0.03, "--warmup-ratio", help="Linear warm-up share before the cosine decay."
    ),
    max_grad_norm: float = typer.Option(2.0, "--max-grad-norm", help="Gradient clipping."),
    distill_loss: str = typer.Option("smooth_l1", "--distill-loss", help="smooth_l1 or l2."),
    distill_factor: float = typer.Option(
        20.0, "--distill-factor", help="Multiplier of the distillation loss."
    ),
    teacher_factor: float = typer.Option(
        1.0, "--teacher-factor", help="Multiplier of the teacher cross-entropy."
    ),
    teacher_only_steps: int = typer.Option(
        0, "--teacher-only-steps", help="First N steps train the teacher task only."
    ),
    save_every: int = typer.Option(100, "--save-every", help="Checkpoint every N steps."),
    stop_after: int | None = typer.Option(
        None,
        "--stop-after",
        help="Stop (checkpointed) after N steps of this invocation; rerun to continue.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation and data order."),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no, fp16 or bf16."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads."),
) -> None:
    """Train a CODI model (teacher CE + student CE + distillation); rerun to resume."""
    kwargs = dict(locals())
    from opcircuits.codi.train import train
    from opcircuits.options import TrainOptions

    typer.echo(str(train(TrainOptions(**kwargs))))


@app.command("new-base")
def new_base_cmd(
    out: Path = typer.Option(..., "--out", help="Dir for config.json + tokenizer (no weights)."),
    data: str = typer.Option(
        "data/gsm8k/train.jsonl",
        "--data",
        help="GSM8K train JSONL the tokenizer is trained on, or 'hf'.",
    ),
    vocab_size: int = typer.Option(2048, "--vocab-size", help="BPE vocabulary size."),
    hidden_size: int = typer.Option(256, "--hidden-size", help="Model width."),
    num_layers: int = typer.Option(6, "--num-layers", help="Transformer blocks."),
    num_heads: int = typer.Option(4, "--num-heads", help="Attention heads."),
    intermediate_size: int = typer.Option(688, "--intermediate-size", help="MLP width."),
    max_positions: int = typer.Option(512, "--max-positions", help="Longest sequence."),
) -> None:
    """Build a small LLaMA-architecture base (BPE tokenizer trained on GSM8K, digits split) for
    `opcircuits train --from-scratch` — how the demo model's base was made."""
    kwargs = dict(locals())
    from opcircuits.codi.demo import build_demo_base
    from opcircuits.options import NewBaseOptions

    typer.echo(str(build_demo_base(NewBaseOptions(**kwargs))))


@app.command("evaluate")
def evaluate_cmd(
    model: str = typer.Option("demo", "--model", help="Preset, hub id or checkpoint dir."),
    data: str = typer.Option(
        "data/gsm8k/test.jsonl",
        "--data",
        help="GSM8K test JSONL (original release or problem records).",
    ),
    out: Path | None = typer.Option(None, "--out", help="Write accuracies and answers (JSON)."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N problems."),
    num_latent: str = typer.Option(
        "6,0", "--num-latent", help="Student settings: comma-separated K values."
    ),
    teacher: bool = typer.Option(
        True, "--teacher/--no-teacher", help="Also measure the teacher (explicit CoT, greedy)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="Problems per batch."),
    max_new_tokens: int = typer.Option(
        DEFAULT_MAX_NEW_TOKENS, "--max-new-tokens", help="Student answer tokens."
    ),
    max_cot_tokens: int = typer.Option(
        160, "--max-cot-tokens", help="Teacher tokens (chain of thought + answer)."
    ),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads."),
) -> None:
    """Accuracy of a CODI model: teacher (explicit CoT) and student with K thoughts."""
    kwargs = dict(locals())
    from opcircuits.codi.demo import evaluate
    from opcircuits.options import EvaluateOptions

    result = evaluate(EvaluateOptions(**kwargs))
    for name, acc in result["accuracy"].items():
        typer.echo(
            f"{name}: {acc:.4f} ({result['n_problems']} problems, {result['seconds'][name]}s)"
        )


def _interrupted() -> None:
    typer.secho("interrupted; rerun the same command to resume", fg=typer.colors.YELLOW, err=True)
    sys.exit(130)


def main() -> None:
    """Console entry point: user errors become one red line and exit code 2.

    Typer runs without standalone mode so that our own errors are not wrapped; its usage errors
    (TyperException) and its Ctrl-C return code are therefore handled here as standalone mode
    would.
    """
    try:
        rc = app(standalone_mode=False)
    except OpcircuitsError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except typer.Abort:
        _interrupted()
    except typer.TyperException as exc:  # usage errors: bad option, bad value
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    if rc == 130:
        _interrupted()
    if isinstance(rc, int) and rc:
        sys.exit(rc)
