"""The one error type users see: a message that names the file, line and field at fault."""

from __future__ import annotations

from pathlib import Path


class OpcircuitsError(Exception):
    """An error caused by the user's input or environment (not a bug).

    The CLI prints it as one line, without a traceback, and exits non-zero: a message of several
    lines (a library's, or a value holding a newline) has its lines joined, and a line break in
    the path or field is shown as `\\n`.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = one_line(message)
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = _escape_breaks(self.path)
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        field = f"field '{_escape_breaks(self.field)}': " if self.field else ""
        return f"{where}{field}{one_line(self.message)}"


def one_line(text: str) -> str:
    """`text` with its lines joined by spaces (blank lines and indentation dropped)."""
    if "\n" not in text and "\r" not in text:
        return text
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _escape_breaks(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")
