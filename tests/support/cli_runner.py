"""`opcircuits ARGS` run inside the test process (so a test can monkeypatch what it calls)."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
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


def one_error_line(err: str) -> str:
    """The one `error: …` line a refused command prints (asserting it is only that)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: to show a refused command changed nothing."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
