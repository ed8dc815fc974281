"""Benchmark result files: every benchmark writes one JSON under `benchmarks/results/`, and the
docs' tables are rendered from those files (docs/hooks.py), never pasted by hand.

A result file holds what re-measures it and what it was measured on:

    {"benchmark": "analyze", "name": "analyze-default-600", "command": "python benchmarks/...",
     "measured_at": "2026-12-03T10:00:00+00:00", "machine": {...}, "versions": {...},
     "figures": {...}, "notes": "..."}

`figures` is the benchmark's own flat dict of numbers and short strings; `notes` says what limits
the figures (a shared machine, a smaller shape than targeted, ...).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from opcircuits.files import write_json_atomic
from opcircuits.jsonable import jsonable
from opcircuits.versions import RUN_PACKAGES, package_versions

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU model and count, memory, load, accelerator."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        pass
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line() -> str:
    """The command that produced this process's figures, relative to the repository: an
    absolute path among the arguments (`--keep /tmp/x`, `--keep=/tmp/x`) is written relative to
    the repository when inside it, else as `<outside>/<its name>` (a machine's paths do not
    belong in a committed file; re-measure with a relative path such as `runs/bench`)."""
    root = RESULTS.parents[1]
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(root)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *(_portable(a, root) for a in sys.argv[1:])])


def _portable(arg: str, root: Path) -> str:
    head, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
    if not value.startswith("/"):
        return arg
    path = Path(value)
    try:
        value = str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        value = f"<outside>/{path.name}"
    return f"{head}{eq}{value}"


def write_result(
    name: str, benchmark: str, figures: dict[str, Any], *, notes: str = "", out: Path | None = None
) -> Path:
    """Write `benchmarks/results/<name>.json` (or `out`) atomically; return its path."""
    path = out if out is not None else RESULTS / f"{name}.json"
    record = {
        "benchmark": benchmark,
        "name": name,
        "command": command_line(),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": package_versions(RUN_PACKAGES, with_python=True),
        "figures": jsonable(figures),
        "notes": notes,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    return path
