"""The `analyze` command: compute the report (`opcircuits.analysis`, numbers only), then draw its
figures and write `analysis_report.json`, `ANALYSIS_SUMMARY.md` and `report.html` (this package).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from opcircuits.analysis.compute import JSON_NAME, compute
from opcircuits.files import (
    atomic_dir,
    check_replaceable,
    refuse_inside_inputs,
    refuse_same_files,
    write_json_atomic,
)
from opcircuits.options import AnalyzeOptions
from opcircuits.report import figures
from opcircuits.report.render import write_reports

log = logging.getLogger(__name__)


def analyze(
    store_path: str | Path, out_dir: str | Path, options: AnalyzeOptions | None = None
) -> dict:
    """Analyze the store at `store_path`; write all outputs into `out_dir`; return the report."""
    # Before any computing: the output must not be the store, nor a folder of someone else's.
    options = options or AnalyzeOptions()
    inputs = {"--store": store_path}
    for name in ("matched_store", "random_store", "interventions", "attribution", "tuned_lens"):
        if getattr(options, name) is not None:
            inputs["--" + name.replace("_", "-")] = getattr(options, name)
    refuse_same_files({"out": out_dir}, inputs)
    # A store's or sweep's folder holds only its own files: output inside it blocks its resume.
    refuse_inside_inputs({"out": out_dir}, inputs)
    check_replaceable(out_dir)
    started = time.perf_counter()
    computed = compute(store_path, options)
    report = computed.report
    # Written into a scratch folder swapped in whole: a crash or a full disk leaves the previous
    # report as it was, never a mix of old and new files.
    with atomic_dir(out_dir) as scratch:
        report["figures"] = figures.draw_all(report, computed.pca_coords, computed.y, scratch)
        if report.get("causal_tests"):
            report["figures"] += figures.draw_causal(report["causal_tests"], scratch)
        if report.get("tuned_lens"):
            report["figures"].append(figures.tuned_lens_kl(report["tuned_lens"], scratch))
        write_json_atomic(scratch / JSON_NAME, report)
        write_reports(report, scratch)
    log.info("analysis written to %s in %.1f s", out_dir, time.perf_counter() - started)
    return report
