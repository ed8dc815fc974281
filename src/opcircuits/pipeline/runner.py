"""`opcircuits run`: execute the stages `stages.build_stages` chains, in a locked run directory.

Run directory layout (see README "One command: opcircuits run"):

    config.resolved.toml   every option, re-usable as --config
    run.json               command, versions, seeds, status and per-stage outcome
    run.log                timestamped log of every invocation (appended)
    data/                  gsm8k_full.jsonl (or synth_N.jsonl), operation_samples_*.jsonl
                           (+ manifests)
    store/                 the thought store (unless --store puts it elsewhere)
    interventions/         the causal tests (full mode, or [intervene] enabled = "on")
    analysis/              analysis_report.json, ANALYSIS_SUMMARY.md, report.html, figures
    stages/                one record per completed stage
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError
from opcircuits.files import write_json_atomic, write_text_atomic
from opcircuits.pipeline.config import ResolvedConfig
from opcircuits.pipeline.engine import (
    HASH_CACHE,
    STAGES_DIR,
    Hasher,
    StageRunner,
    exclusive,
    log_to_file_only,
    prepare_run_dir,
    run_log,
    utc_now,
)
from opcircuits.pipeline.preflight import RESOLVED, RUN_RECORD, check_paths, check_run_dir
from opcircuits.pipeline.stages import DATA_DIR, RUN_FOLDERS, build_stages
from opcircuits.report.render import headline
from opcircuits.scratch import sweep_stale
from opcircuits.versions import RUN_PACKAGES, package_versions

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    mode: str
    stages: list[tuple[str, str]]  # (name, "ran" | "skipped")
    analysis_dir: Path
    report: dict[str, Any]
    headline: list[str]

    @property
    def report_html(self) -> Path:
        return self.analysis_dir / "report.html"

    @property
    def summary_md(self) -> Path:
        return self.analysis_dir / "ANALYSIS_SUMMARY.md"


def default_out(mode: str) -> Path:
    return Path("runs") / mode


# --- the run -----------------------------------------------------------------------------------


def run(
    config: ResolvedConfig, *, force: bool = False, command: list[str] | None = None
) -> RunResult:
    """Run (or resume) the experiment `config` describes; see the module docstring."""
    mode = config.mode
    out = config.tables["run"]["out"]
    run_dir = Path(out) if out is not None else default_out(mode)
    # Every check before the first write, so that a refusal leaves everything as it was.
    try:
        stages, store, analysis_dir = build_stages(config, run_dir)
    except OpcircuitsError as exc:  # a path the config names: its file and line
        raise config.located(exc) from exc
    check_run_dir(run_dir)
    check_paths(stages, run_dir, None if mode == "analysis_only" else store, RUN_FOLDERS)
    hasher = Hasher(run_dir / HASH_CACHE)
    runner = StageRunner(run_dir, hasher, force, None)
    runner.preflight(stages)
    prepare_run_dir(run_dir)
    with exclusive(run_dir):
        argv = command if command is not None else sys.argv
        info: dict[str, Any] = {
            "mode": mode,
            "command": list(argv),
            "cwd": str(Path.cwd()),
            "force": force,
            "config_file": str(config.source) if config.source else None,
            "seeds": {
                "data": config.tables["data"].get("seed"),
                "analyze": config.tables["analyze"].get("seed"),
            },
            "versions": package_versions(RUN_PACKAGES, with_python=True),
            "started": utc_now(),
            "status": "running",
        }
        # run.json first: the record that makes the folder's other files ours.
        write_json_atomic(run_dir / RUN_RECORD, info)
        with run_log(run_dir) as handler:
            runner.file_handler = handler
            log.info("run %s in %s (%s)", mode, run_dir, " ".join(argv))
            _sweep(run_dir, stages)
            write_text_atomic(run_dir / RESOLVED, config.to_toml())
            return _run_stages(runner, stages, info, analysis_dir)


def _sweep(run_dir: Path, stages: list[Any]) -> None:
    """The temporaries an interrupted (killed) run left in the run directory's own folders go:
    the directory is locked, so none of them is being written."""
    top = run_dir.resolve()
    folders = [run_dir / STAGES_DIR, run_dir / DATA_DIR] + [
        path
        for stage in stages
        for path in stage.outputs.values()
        if path.resolve().is_relative_to(top) and path.resolve() != top
    ]
    swept = sweep_stale(run_dir) + sum(sweep_stale(f, recursive=True) for f in folders)
    if swept:
        log.info("removed %d temporary file(s) an interrupted run left", swept)


def _run_stages(
    runner: StageRunner, stages: list[Any], info: dict[str, Any], analysis_dir: Path
) -> RunResult:
    """Every stage in turn; run.json records how the run ended (and, when complete, its
    headline)."""
    run_dir, hasher, handler = runner.run_dir, runner.hasher, runner.file_handler
    assert handler is not None
    try:
        for i, stage in enumerate(stages, start=1):
            runner.run(stage, i, len(stages))
    except BaseException as exc:
        info.update(
            status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
            error=str(exc),
            stages=runner.outcomes,
            finished=utc_now(),
        )
        with contextlib.suppress(OSError):
            write_json_atomic(run_dir / RUN_RECORD, info)
        # The console gets the CLI's one-line error; the log file gets it too, with the time.
        log_to_file_only(handler, logging.ERROR, f"run stopped: {exc or type(exc).__name__}")
        raise
    finally:
        hasher.save()

    report_file = analysis_dir / "analysis_report.json"
    report = json.loads(report_file.read_text(encoding="utf-8"))
    lines = headline(report)
    info.update(status="complete", stages=runner.outcomes, finished=utc_now(), headline=lines)
    write_json_atomic(run_dir / RUN_RECORD, info)
    log.info("done: report at %s", analysis_dir / "report.html")
    for line in lines:
        log.info("%s", line)
    return RunResult(run_dir, info["mode"], runner.outcomes, analysis_dir, report, lines)
