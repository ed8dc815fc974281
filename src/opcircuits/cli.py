"""The `opcircuits` command line: thin wrappers that call library functions.

Every option is a field of a dataclass in `opcircuits.options`; `opcircuits.cli_options` turns
those fields into Typer options (names, help, defaults, `--x/--no-x`, comma lists, hidden old
spellings), so a command here is a function taking its options and a line registering it.
Flags mean the same everywhere: `--data` problem data in, `--store` a thought store in,
`--model` preset / hub id / folder (with `--device`, `--dtype` on every command that runs one),
`--out` what the command writes.

How to add a command (`opcircuits store verify` below was added so):

1. In `options/` (data.py, experiment.py or codi.py), declare its options once, each with its
   help, and add the class to `options/__init__.py`'s imports:
       @dataclass
       class StoreVerifyOptions:
           store: Path = opt(aliases=("STORE",), help="Thought store directory.")
           def __post_init__(self) -> None:
               check_fields(self)
2. Here, a function taking them (import the library inside it, so `--help` stays fast):
       def store_verify(options: StoreVerifyOptions) -> None:
           \"\"\"Check every shard against the manifest.\"\"\"   # the command's help
           from opcircuits.store import verify_store
           typer.echo(verify_store(options.store).path)
3. Register it: `add_command(store_app, "verify", store_verify, Group(StoreVerifyOptions))`.
   A command combining several classes passes one Group per class and receives one instance
   of each (see `analyze`); tests/e2e/test_cli.py checks that flags stay consistent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys

import typer

from opcircuits.cli_options import add_command
from opcircuits.errors import OpcircuitsError
from opcircuits.options import (
    AnalyzeOptions,
    AnalyzePaths,
    AttributeOptions,
    ClassifyOptions,
    DasOptions,
    DoctorOptions,
    DownloadOptions,
    EvaluateOptions,
    ExtractOptions,
    Group,
    ImportLegacyOptions,
    InterveneOptions,
    LensTrainOptions,
    NewBaseOptions,
    PrototypeOptions,
    StoreInfoOptions,
    StoreVerifyOptions,
    SynthOptions,
    TrainOptions,
)
from opcircuits.pipeline.config import RUN_GROUPS

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
lens_app = typer.Typer(help="The tuned lens: translators fitted on a store.", no_args_is_help=True)
app.add_typer(store_app, name="store")
app.add_typer(lens_app, name="lens")


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


# --- data ----------------------------------------------------------------------------------------


def data_download(options: DownloadOptions) -> None:
    """Write every GSM8K problem as one JSON record per line (with parsed steps and answer)."""
    from opcircuits.data.gsm8k import download

    typer.echo(f"wrote {download(source=options.source, out=options.out)}")


def _print_distribution(manifest: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from opcircuits.data.annotations import CATEGORIES, UNCLASSIFIED, UNCLASSIFIED_REASONS

    dist = manifest["distribution"]
    table = Table(title=f"Operation categories over all {dist['total']:,} problems")
    for name in ("category", "problems", "share", "sampled"):
        table.add_column(name, justify="left" if name == "category" else "right")
    for cat in (*CATEGORIES, UNCLASSIFIED):
        n = dist["categories"][cat]
        sampled = str(manifest["counts"].get(cat, "—"))
        table.add_row(cat, f"{n:,}", f"{n / max(dist['total'], 1):.1%}", sampled)
    for reason in UNCLASSIFIED_REASONS:
        n = dist["unclassified_reasons"][reason]
        table.add_row(f"  unclassified: {reason}", f"{n:,}", "", "")
    Console().print(table)


def data_classify(options: ClassifyOptions) -> None:
    """Label every problem by the operators its calculator annotations use; sample per category."""
    from opcircuits.data.sampling import classify
    from opcircuits.files import manifest_path

    path = classify(options)
    _print_distribution(json.loads(manifest_path(path).read_text(encoding="utf-8")))
    typer.echo(f"wrote {path}")


def data_prototype(options: PrototypeOptions) -> None:
    """A small set nested in the sampled one, for quick iteration."""
    from opcircuits.data.sampling import prototype

    typer.echo(f"wrote {prototype(options)}")


add_command(data_app, "download", data_download, Group(DownloadOptions))
add_command(data_app, "classify", data_classify, Group(ClassifyOptions))


def data_synth(options: SynthOptions) -> None:
    """Synthetic arithmetic word problems with known operations (GSM8K's record format)."""
    from opcircuits.data.synth import synth

    typer.echo(f"wrote {synth(options)}")


add_command(data_app, "prototype", data_prototype, Group(PrototypeOptions))
add_command(data_app, "synth", data_synth, Group(SynthOptions))


# --- extract, stores, analyze --------------------------------------------------------------------


def extract_cmd(options: ExtractOptions) -> None:
    """Run a CODI model over problems; store its continuous thoughts, answers and logit lens."""
    from opcircuits.extract import extract

    typer.echo(f"wrote {extract(options)}")


def store_import_legacy(options: ImportLegacyOptions) -> None:
    """Convert a legacy thoughts JSON into a store (positions bot, latent_1..latent_5)."""
    from opcircuits.store.legacy import import_legacy

    store = import_legacy(options)
    typer.echo(
        f"wrote {store.path}: {len(store)} problems, positions {store.positions}, "
        f"layers {store.layers} ({', '.join(store.layer_names or [])})"
    )


def store_info(options: StoreInfoOptions) -> None:
    """Print a store's manifest and array shapes as JSON."""
    from opcircuits.store import describe, open_store

    info = describe(open_store(options.store, allow_incomplete=options.allow_incomplete))
    typer.echo(json.dumps(info, indent=2, sort_keys=True))


def analyze_cmd(paths: AnalyzePaths, options: AnalyzeOptions) -> None:
    """Probe the thoughts with honest controls; write numbers, figures and the report."""
    from opcircuits.report.analyze import analyze

    analyze(paths.store, paths.out, options)
    typer.echo(f"wrote {paths.out / 'report.html'} and {paths.out / 'ANALYSIS_SUMMARY.md'}")


def store_verify(options: StoreVerifyOptions) -> None:
    """Check every shard's sha256 (and everything opening checks) against the manifest."""
    from opcircuits.store import verify_store

    checked = verify_store(options.store)
    n_shards = len(checked.manifest["shards_sha256"])
    typer.echo(
        f"ok: {checked.path}: {len(checked)} problems; the sha256 of its {n_shards} shard(s) and "
        "of records.parquet match the manifest"
    )


add_command(app, "extract", extract_cmd, Group(ExtractOptions))
add_command(store_app, "import-legacy", store_import_legacy, Group(ImportLegacyOptions))
add_command(store_app, "info", store_info, Group(StoreInfoOptions))
add_command(store_app, "verify", store_verify, Group(StoreVerifyOptions))
add_command(app, "analyze", analyze_cmd, Group(AnalyzePaths), Group(AnalyzeOptions))


def intervene_cmd(options: InterveneOptions) -> None:
    """Causal tests: ablate, resample, patch and steer the thoughts, or think less; measure the
    answers. Writes interventions.parquet, interventions.json and figures into --out."""
    from opcircuits.intervene import intervene

    path = intervene(options)
    result = json.loads(path.read_text(encoding="utf-8"))
    for sentence in result["findings"]["sentences"]:
        typer.echo(sentence)
    typer.echo(f"wrote {path}")


add_command(app, "intervene", intervene_cmd, Group(InterveneOptions))


def attribute_cmd(options: AttributeOptions) -> None:
    """Attribution patching: a first-order estimate of patching every head, MLP and residual
    position of every step from a counterfactual partner, the top ones patched exactly. Writes
    attribution.parquet, attribution.json and attribution.png into --out."""
    from opcircuits.intervene.attribute import attribute

    path = attribute(options)
    for sentence in json.loads(path.read_text(encoding="utf-8"))["sentences"]:
        typer.echo(sentence)
    typer.echo(f"wrote {path}")


def das_cmd(options: DasOptions) -> None:
    """Distributed alignment search: train a rotated subspace per site and dimension so that
    swapping it in from a counterfactual partner gives the partner's answer, for the operation
    of step j or (--variable result) the intermediate result r_j; IIA on held-out pairs against
    a random subspace, the complement, the wrong step (operations only) and the re-initialized
    model. Writes das.json and das.safetensors into --out."""
    from opcircuits.intervene.das import das

    path = das(options)
    for sentence in json.loads(path.read_text(encoding="utf-8"))["findings"]:
        typer.echo(sentence)
    typer.echo(f"wrote {path}")


add_command(app, "attribute", attribute_cmd, Group(AttributeOptions))
add_command(app, "das", das_cmd, Group(DasOptions))


def lens_train_cmd(options: LensTrainOptions) -> None:
    """Fit a tuned lens (one affine translator per layer, Belrose et al. 2023) on a store's states
    to predict its final layer; writes tuned-lens.safetensors and tuned-lens.json (held-out KL
    per layer of the tuned and the logit lens) into --out."""
    from opcircuits.codi.lens_train import train_tuned_lens

    typer.echo(f"wrote {train_tuned_lens(options)}")


add_command(lens_app, "train", lens_train_cmd, Group(LensTrainOptions))


# --- run -----------------------------------------------------------------------------------------


def run_cmd(*given: dict) -> None:
    """Run the whole experiment, or resume it: stages whose inputs and options are unchanged are
    skipped. Writes config.resolved.toml, run.json (versions, seeds), run.log, data/, store/,
    analysis/ and stages/ (hash records) into the run directory."""
    from opcircuits.pipeline.config import resolve
    from opcircuits.pipeline.runner import run

    overrides: dict[str, dict] = {}
    for group, values in zip(RUN_GROUPS, given, strict=True):
        table = overrides.setdefault(group.table or "run", {})
        table.update({group.prefix + k: v for k, v in values.items()})
    run_switches = overrides["run"]
    force, config = run_switches.pop("force", False), run_switches.pop("config", None)
    if "seed" in overrides["data"]:  # one --seed for sampling and analysis
        overrides["analyze"]["seed"] = overrides["data"]["seed"]
    resolved = resolve(config, overrides)
    result = run(resolved, force=force, command=["opcircuits", *sys.argv[1:]])
    ran = ", ".join(name for name, outcome in result.stages if outcome == "ran")
    typer.echo(f"run directory: {result.run_dir}  (ran: {ran or 'nothing, all up to date'})")
    typer.echo(f"report: {result.report_html}")
    typer.echo(f"summary: {result.summary_md}")
    for line in result.headline:
        typer.echo(f"  {line}")


add_command(app, "run", run_cmd, *RUN_GROUPS, overrides=True)


# --- training and evaluating CODI models ---------------------------------------------------------


def train_cmd(options: TrainOptions) -> None:
    """Train a CODI model (teacher CE + student CE + distillation); rerun to resume."""
    from opcircuits.codi.training.loop import train

    typer.echo(str(train(options)))


def new_base_cmd(options: NewBaseOptions) -> None:
    """Build a small LLaMA-architecture base (BPE tokenizer trained on GSM8K, digits split) for
    `opcircuits train --from-scratch`: how the demo model's base was made."""
    from opcircuits.codi.training.base import build_demo_base

    typer.echo(str(build_demo_base(options)))


def evaluate_cmd(options: EvaluateOptions) -> None:
    """Accuracy of a CODI model: teacher (explicit CoT) and student with K thoughts."""
    from opcircuits.codi.evaluate import evaluate
    from opcircuits.codi.reproduce import result_line

    result = evaluate(options)
    for name in result["accuracy"]:
        typer.echo(result_line(name, result))


add_command(app, "train", train_cmd, Group(TrainOptions))
add_command(app, "new-base", new_base_cmd, Group(NewBaseOptions))
add_command(app, "evaluate", evaluate_cmd, Group(EvaluateOptions))


def doctor_cmd(options: DoctorOptions) -> None:
    """What loading a model reads from where (files, sha256, keys, config, versions) and what
    looks wrong. Exit code 0: nothing suspicious; 1: something is (listed last)."""
    from opcircuits.codi.doctor import check_json_out, diagnose
    from opcircuits.codi.doctor_view import render
    from opcircuits.files import write_json_atomic

    if options.json is not None:
        check_json_out(options)
    report = diagnose(options)
    if options.json is not None:
        write_json_atomic(options.json, report)
    render(report)
    if options.json is not None:
        typer.echo(f"wrote {options.json}")
    if report["suspicious"]:
        raise typer.Exit(1)


add_command(app, "doctor", doctor_cmd, Group(DoctorOptions))


# --- entry point ---------------------------------------------------------------------------------


_terminated: list[bool] = []  # set by SIGTERM (Typer turns the interrupt into a return code)


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler's or `kill`'s stop) raises where Ctrl-C's KeyboardInterrupt does, so
    every command cleans up the same way: temporaries removed, finished parts kept."""
    _terminated.append(True)
    raise KeyboardInterrupt


def _interrupted() -> None:
    typer.secho("interrupted; rerun the same command to resume", fg=typer.colors.YELLOW, err=True)
    sys.exit(128 + signal.SIGTERM if _terminated else 130)


def main() -> None:
    """Console entry point: user errors become one red line and exit code 2.

    Typer runs without standalone mode so that our own errors are not wrapped; its usage errors
    and its Ctrl-C (an `Abort`, or the return code 130) are handled here as standalone mode would.
    SIGTERM raises KeyboardInterrupt as Ctrl-C does (exit code 143).
    """
    _terminated.clear()
    installed, previous = False, None
    with contextlib.suppress(ValueError):  # not the main thread: leave the handler alone
        previous, installed = signal.signal(signal.SIGTERM, _on_sigterm), True
    try:
        _main()
    finally:
        if installed:  # the caller's own again (a test calling main in-process)
            signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)


def _main() -> None:
    try:
        rc = app(standalone_mode=False)
    except OpcircuitsError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except OSError as exc:  # a full disk or no permission anywhere: one line, not a traceback
        from opcircuits.files import write_error

        user = write_error(exc)
        if user is None:
            raise
        typer.secho(f"error: {user}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        _interrupted()
    except typer.TyperException as exc:  # usage errors (click's, vendored by Typer)
        exc.show()
        sys.exit(exc.exit_code)
    if rc == 130:
        _interrupted()
    if isinstance(rc, int) and rc:
        sys.exit(rc)
