"""The one error type users see: a message that names the file, line and field at fault."""

from __future__ import annotations

from pathlib import Path


class OpcircuitsError(Exception):
    """An error caused by the user's input or environment (not a bug).

    The CLI prints it as one line, without a traceback, and exits non-zero.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        field = f"field '{self.field}': " if self.field else ""
        return f"{where}{field}{self.message}"
