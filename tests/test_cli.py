"""The console entry point: how user errors, usage errors and interrupts end a command."""

from __future__ import annotations

import subprocess
import sys


def _opcircuits(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opcircuits", *args], capture_output=True, text=True, timeout=120
    )


def test_unknown_option_is_a_usage_error_without_traceback():
    res = _opcircuits("extract", "--bogus")
    assert res.returncode == 2
    assert "No such option: --bogus" in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_option_value_names_the_option():
    res = _opcircuits("data", "classify", "--per-category", "x")
    assert res.returncode == 2
    assert "--per-category" in res.stderr
    assert "Traceback" not in res.stderr


def test_user_error_is_one_line_naming_the_field():
    res = _opcircuits("run", "--mode", "nope")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: field 'mode': unknown mode 'nope'; choose one of prototype, full, analysis_only"
    ]
