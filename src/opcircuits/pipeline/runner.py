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

from opcircuits.files import write_json_atomic, write_text_atomic
from opcircuits.pipeline.config import ResolvedConfig
from opcircuits.pipeline.engine import (
    HASH_CACHE,
    Hasher,
    StageRunner,
    exclusive,
    log_to_file_only,
    prepare_run_dir,
    run_log,
    utc_now,
)
from opcircuits.pipeline.stages import build_stages
from opcircuits.report.render import headline
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
    run_dir = prepare_run_dir(Path(out) if out is not None else default_out(mode))
    with exclusive(run_dir), run_log(run_dir) as handler:
        argv = command if command is not None else sys.argv
        log.info("run %s in %s (%s)", mode, run_dir, " ".join(argv))
        write_text_atomic(run_dir / "config.resolved.toml", config.to_toml())
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
        write_json_atomic(run_dir / "run.json", info)

        hasher = Hasher(run_dir / HASH_CACHE)
        stages, _store, analysis_dir = build_stages(config, run_dir)
        runner = StageRunner(run_dir, hasher, force, handler)
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
                write_json_atomic(run_dir / "run.json", info)
            # The console gets the CLI's one-line error; the log file gets it too, with the time.
            log_to_file_only(handler, logging.ERROR, f"run stopped: {exc or type(exc).__name__}")
            raise
        finally:
            hasher.save()

        report_file = analysis_dir / "analysis_report.json"
        report = json.loads(report_file.read_text(encoding="utf-8"))
        lines = headline(report)
        info.update(status="complete", stages=runner.outcomes, finished=utc_now(), headline=lines)
        write_json_atomic(run_dir / "run.json", info)
        log.info("done: report at %s", analysis_dir / "report.html")
        for line in lines:
            log.info("%s", line)
        return RunResult(run_dir, mode, runner.outcomes, analysis_dir, report, lines)
