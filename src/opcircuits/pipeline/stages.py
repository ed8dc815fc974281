"""`opcircuits run`: this experiment's stages, for the caching engine of `engine.py`.

One small function per stage builds its `Stage` (what it reads, its options, what it writes);
`build_stages` chains them for a mode, and `runner.run` executes the chain in a locked run
directory (whose layout `runner.py` describes). A new stage is one more builder and one line in
`build_stages`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError
from opcircuits.files import check_replaceable, manifest_path
from opcircuits.pipeline.config import INTERVENE_SET, ResolvedConfig
from opcircuits.pipeline.engine import Stage, relative_to_run

log = logging.getLogger(__name__)

ANALYSIS_DIR = "analysis"
INTERVENE_DIR = "interventions"
STORE_DIR = "store"
DATA_DIR = "data"
# The folders a run writes besides its store (which may be elsewhere, or a new folder in it).
RUN_FOLDERS = (DATA_DIR, ANALYSIS_DIR, INTERVENE_DIR, "store_matched", "store_random")
# Options that change how fast a stage runs, never what it writes: not part of its key.
BATCH_ONLY = ("batch_size",)
# `[data] source` that generates synthetic problems (data/synth/) instead of reading GSM8K.
SYNTHETIC = "synthetic"
JOBS_ONLY = ("jobs",)


# --- building the stages -----------------------------------------------------------------------


def _make(cls: type, values: dict[str, Any]) -> Any:
    """Instantiate a stage's options dataclass from the values it declares."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def _local(value: Any) -> Path | None:
    if value is None:
        return None
    path = Path(str(value)).expanduser()
    return path if path.exists() else None


def model_inputs(extract: dict[str, Any]) -> dict[str, Path | str]:
    """What identifies the model's weights: local checkpoint/base folders are hashed (a retrained
    checkpoint in the same folder recomputes), hub ids are compared by name."""
    from opcircuits.codi.config import PRESETS

    model = extract.get("model")
    checkpoint = extract.get("checkpoint")
    base = extract.get("base")
    inputs: dict[str, Path | str] = {"model": str(model)}
    if checkpoint is None and model in PRESETS:
        checkpoint = PRESETS[model].checkpoint
    elif checkpoint is None:
        checkpoint = model
    inputs["checkpoint"] = _local(checkpoint) or f"hub:{checkpoint}"
    if base is not None:
        inputs["base"] = _local(base) or f"hub:{base}"
    return inputs


def _is_inside(path: Path, parent: Path) -> bool:
    return path.resolve().is_relative_to(parent.resolve())


def build_stages(config: ResolvedConfig, run_dir: Path) -> tuple[list[Stage], Path, Path]:
    """The stages of this mode, the store they read or write, and the analysis directory.

    Each stage is built by its own function from the options and the paths of the stages before
    it; adding a stage is one builder and one line here.
    """
    t = config.tables
    analysis_dir = run_dir / ANALYSIS_DIR
    if config.mode == "analysis_only":
        if t["intervene"]["enabled"] == "on":
            raise OpcircuitsError(
                "the intervene stage needs the run's problems and model; analysis_only has "
                "neither (run `opcircuits intervene` on the problem file instead)",
                field="intervene.enabled",
            )
        stages, store = _given_store(t["run"]["store"], run_dir)
    else:
        data_dir = run_dir / DATA_DIR
        if t["data"]["source"] == SYNTHETIC:
            download = _synth_stage(t["data"], data_dir)
        else:
            download = _download_stage(t["data"], data_dir)
        classify = _classify_stage(t["data"], download.outputs["problems"], data_dir)
        stages = [download, classify]
        dataset = classify.outputs["samples"]
        if config.mode == "prototype":
            stages.append(_prototype_stage(t["data"], dataset, data_dir))
            dataset = stages[-1].outputs["subset"]
        store_opt = t["run"]["store"]
        store = Path(store_opt) if store_opt is not None else run_dir / STORE_DIR
        stages.append(_extract_stage(t["extract"], dataset, store, run_dir))
    baselines: dict[str, Path] = {}
    if config.mode == "full":
        more, baselines = _baseline_stages(t, download.outputs["problems"], dataset, run_dir)
        stages += more
    if config.mode != "analysis_only" and intervene_enabled(config):
        pairs = download.optional_outputs.get("pairs")
        stages.append(_intervene_stage(t, dataset, pairs, run_dir))
        baselines["interventions"] = stages[-1].outputs["interventions"]
    stages.append(_analyze_stage(t["analyze"], store, analysis_dir, baselines))
    return stages, store, analysis_dir


def _baseline_stages(
    t: dict[str, dict[str, Any]], problems: Path, dataset: Path, run_dir: Path
) -> tuple[list[Stage], dict[str, Path]]:
    """full: what the analysis compares the thoughts with — a step-matched sample (unless the
    main sample is matched already) and the same problems through the same architecture with
    re-initialized weights (seeded by the analysis seed), each extracted into its own store."""
    stages: list[Stage] = []
    stores: dict[str, Path] = {}
    if not t["data"].get("match_steps"):
        matched = _classify_stage(t["data"], problems, run_dir / DATA_DIR, matched=True)
        stores["matched_store"] = run_dir / "store_matched"
        stages += [
            matched,
            _extract_stage(
                t["extract"],
                matched.outputs["samples"],
                stores["matched_store"],
                run_dir,
                name="extract_matched",
            ),
        ]
    stores["random_store"] = run_dir / "store_random"
    reinit = {**t["extract"], "reinit": t["analyze"].get("seed", 0)}
    stages.append(
        _extract_stage(reinit, dataset, stores["random_store"], run_dir, name="extract_random")
    )
    return stages, stores


def intervene_enabled(config: ResolvedConfig) -> bool:
    """The causal tests run in full mode, and in prototype mode when asked (`[intervene]
    enabled = "on"`): a sweep re-runs the model many times per problem."""
    switch = config.tables["intervene"]["enabled"]
    if config.mode == "analysis_only" or switch == "off":
        return False
    return switch == "on" or config.mode == "full"


def _given_store(store_opt: Any, run_dir: Path) -> tuple[list[Stage], Path]:
    """analysis_only: the store to analyze, imported first when it is a legacy JSON file."""
    if store_opt is None:
        raise OpcircuitsError(
            "analysis_only needs --store: a store directory or a legacy continuous_thoughts_*.json",
            field="run.store",
        )
    given = Path(store_opt)
    if given.is_file():
        store = run_dir / STORE_DIR
        return [_import_stage(given, store)], store
    if (given / "manifest.json").is_file():
        return [], given
    if given.is_dir():
        raise OpcircuitsError(
            "not a thought store (no manifest.json)", path=given, field="run.store"
        )
    raise OpcircuitsError("store not found", path=given, field="run.store")


def _download_stage(data: dict[str, Any], data_dir: Path) -> Stage:
    from opcircuits.data import gsm8k

    full = data_dir / "gsm8k_full.jsonl"
    source = str(data["source"])
    src_dir = None if source == "hf" else Path(source).expanduser()
    if src_dir is not None and not src_dir.is_dir():
        raise OpcircuitsError(
            "--source must be 'hf' or a folder holding GSM8K's train.jsonl and test.jsonl",
            path=src_dir,
            field="data.source",
        )
    return Stage(
        name="download",
        action=lambda: gsm8k.download(source=source if src_dir is None else str(src_dir), out=full),
        inputs={"source": src_dir if src_dir is not None else "hf"},
        options={},
        outputs={"problems": full},
        optional_outputs={"manifest": manifest_path(full)},
        guard=lambda: _guard_files(full, manifest_path(full)),
        # "hf" means the canonical GSM8K: download only if missing, so a run first made from a
        # local copy is not sent to the (maybe unreachable) hub on its next invocation. A local
        # folder is hashed: changed files there recompute.
        reuse_any=src_dir is None,
    )


def _synth_stage(data: dict[str, Any], data_dir: Path) -> Stage:
    """Synthetic problems instead of GSM8K: the test split (held-out frames included), exactly
    `per_category` per category, drawn with the run's data seed."""
    from opcircuits.data.synth import pairs_path, synth
    from opcircuits.options import SynthOptions

    values = {k[len("synth_") :]: v for k, v in data.items() if k.startswith("synth_")}
    values.update(n=3 * int(data["per_category"]), seed=data["seed"], split="test")
    problems = data_dir / f"synth_{values['n']}.jsonl"
    opts = _make(SynthOptions, {**values, "out": problems})
    return Stage(
        name="synth",
        action=lambda: synth(opts),
        inputs={},
        options=values,
        outputs={"problems": problems},
        optional_outputs={"manifest": manifest_path(problems), "pairs": pairs_path(problems)},
        guard=lambda: _guard_files(problems, manifest_path(problems), pairs_path(problems)),
    )


def _classify_stage(
    data: dict[str, Any], problems: Path, data_dir: Path, *, matched: bool = False
) -> Stage:
    from opcircuits.data.sampling import classify
    from opcircuits.options import ClassifyOptions

    values = {
        k: v
        for k, v in data.items()
        if not k.startswith(("prototype_", "synth_")) and k != "source"
    }
    tag = "matched_" if matched else ""
    if matched:  # every category with the same n_steps histogram, as many as the data allow
        values = {**values, "match_steps": True, "allow_fewer": True}
    samples = data_dir / f"operation_samples_{tag}{values.get('per_category', 200)}.jsonl"
    opts = _make(ClassifyOptions, {**values, "in_path": problems, "out": samples})
    return Stage(
        name="classify_matched" if matched else "classify",
        action=lambda: classify(opts),
        inputs={"problems": problems},
        options=values,
        outputs={"samples": samples},
        optional_outputs={"manifest": manifest_path(samples)},
        guard=lambda: _guard_files(samples, manifest_path(samples)),
    )


def _prototype_stage(data: dict[str, Any], samples: Path, data_dir: Path) -> Stage:
    from opcircuits.data.sampling import CATEGORIES, prototype
    from opcircuits.options import PrototypeOptions

    values = {k[len("prototype_") :]: v for k, v in data.items() if k.startswith("prototype_")}
    values["seed"] = data.get("seed")
    n_subset = len(CATEGORIES) * int(values.get("per_category", 20))
    subset = data_dir / f"operation_samples_prototype_{n_subset}.jsonl"
    opts = _make(PrototypeOptions, {**values, "in_path": samples, "out": subset})
    return Stage(
        name="prototype",
        action=lambda: prototype(opts),
        inputs={"samples": samples},
        options=values,
        outputs={"subset": subset},
        optional_outputs={"manifest": manifest_path(subset)},
        guard=lambda: _guard_files(subset, manifest_path(subset)),
    )


def _extract_stage(
    values: dict[str, Any], dataset: Path, store: Path, run_dir: Path, *, name: str = "extract"
) -> Stage:
    from opcircuits.extract import extract
    from opcircuits.options import ExtractOptions

    opts = _make(ExtractOptions, {**values, "dataset": dataset, "out": store})
    # Results do not depend on the batch size (batch invariance is tested by extraction), so a
    # rerun with another batch size resumes the same store instead of recomputing it.
    settings = {k: v for k, v in values.items() if k in BATCH_ONLY}
    inside = _is_inside(store, run_dir)

    def clear(forced: bool) -> None:
        # Only the store's own files go, and only if nothing else is in the folder. A store kept
        # outside the run dir is cleared by --force alone; otherwise it is never touched (a
        # mismatch is an error instead).
        from opcircuits.store import MANIFEST, remove_store

        if (inside or forced) and (store / MANIFEST).is_file():
            log.info("removing the store files in %s", store)
            remove_store(store)

    return Stage(
        name=name,
        action=lambda: extract(opts),
        inputs={"dataset": dataset, **model_inputs(values)},
        options={
            **{k: v for k, v in values.items() if k not in BATCH_ONLY},
            "store": relative_to_run(store, run_dir),
        },
        outputs={"store": store},
        settings=settings,
        clear=clear,
        guard=lambda: _guard_store(store),
    )


def _guard_files(*paths: Path) -> None:
    """The stage writes these as files: a folder (or anything else) in the way is refused."""
    for path in paths:
        if path.exists() and not path.is_file():
            raise OpcircuitsError(
                "is a folder where the run writes a file; move it away or choose another --out",
                path=path,
            )


def _guard_store(store: Path) -> None:
    from opcircuits.store import is_store_file

    check_replaceable(store, is_store_file)


def _intervene_stage(
    t: dict[str, dict[str, Any]], dataset: Path, pairs: Path | None, run_dir: Path
) -> Stage:
    """The causal tests on the run's problems with the extracted model ([extract]'s model,
    precision and decoding); the counterfactual partners of synthetic problems are patched in."""
    from opcircuits.intervene import MANIFEST, remove_interventions
    from opcircuits.intervene import intervene as run_sweep
    from opcircuits.options import InterveneOptions

    out = run_dir / INTERVENE_DIR
    values = {k: v for k, v in t["intervene"].items() if k != "enabled"}
    model = {k: v for k, v in t["extract"].items() if k in INTERVENE_SET}
    opts = _make(InterveneOptions, {**values, **model, "data": dataset, "out": out, "pairs": pairs})
    # intervene.SPEED_ONLY: results do not depend on them
    speed = ("batch_size", "group_size", "device")
    inputs: dict[str, Path | str] = {"dataset": dataset, **model_inputs(t["extract"])}
    if pairs is not None:
        inputs["pairs"] = pairs
    if values.get("patch_map") is not None:
        inputs["patch_map"] = Path(values["patch_map"])

    def clear(forced: bool) -> None:
        # A sweep with other options must not resume into the old parts: only the folder's own
        # files go (anything else in it stops the stage, nothing removed).
        if (out / MANIFEST).is_file():
            log.info("removing the intervention files in %s", out)
            remove_interventions(out)

    return Stage(
        name="intervene",
        action=lambda: run_sweep(opts),
        inputs=inputs,
        options={k: v for k, v in {**values, **model}.items() if k not in speed},
        outputs={"interventions": out},
        settings={k: v for k, v in {**values, **model}.items() if k in speed},
        clear=clear,
        guard=lambda: _guard_interventions(out),
    )


def _guard_interventions(out: Path) -> None:
    from opcircuits.intervene import is_intervene_file

    check_replaceable(out, is_intervene_file)


def _import_stage(legacy: Path, store: Path) -> Stage:
    from opcircuits.options import ImportLegacyOptions
    from opcircuits.store.legacy import import_legacy

    # An import is quick: always from scratch, swapped in whole for the previous one.
    opts = ImportLegacyOptions(file=legacy, out=store, overwrite=True)
    return Stage(
        name="import",
        action=lambda: import_legacy(opts),
        inputs={"legacy": legacy},
        options={},
        outputs={"store": store},
        guard=lambda: _guard_store(store),
    )


def _analyze_stage(
    values: dict[str, Any],
    store: Path,
    analysis_dir: Path,
    baselines: dict[str, Path] | None = None,
) -> Stage:
    from opcircuits.options import AnalyzeOptions
    from opcircuits.report.analyze import analyze

    baselines = baselines or {}
    opts = _make(AnalyzeOptions, {**values, **baselines})
    return Stage(
        name="analyze",
        # analyze() writes a scratch folder and swaps it in whole: never a half report, and it
        # refuses to replace a folder holding files it did not write.
        action=lambda: analyze(store, analysis_dir, opts),
        inputs={"store": store, **baselines},
        options={k: v for k, v in values.items() if k not in JOBS_ONLY},
        outputs={"analysis": analysis_dir},
        settings={k: v for k, v in values.items() if k in JOBS_ONLY},
        guard=lambda: check_replaceable(analysis_dir),
    )
