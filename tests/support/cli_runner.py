"""`opcircuits ARGS` run inside the test process (so a test can monkeypatch what it calls)."""

from __future__ import annotations

import contextlib
import io
import sys
from unittest import mock

from opcircuits.cli import main


def run_cli(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `opcircuits ARGS`, as the console entry point ends it."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with (
        mock.patch.object(sys, "argv", ["opcircuits", *args]),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()
