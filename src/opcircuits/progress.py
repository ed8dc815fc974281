"""The progress bar of the long stages (training, extraction): label, bar, done/total, elapsed
time and time remaining, optionally followed by a live status text (the task's description)."""

from __future__ import annotations

from typing import Any


def stage_progress(label: str, *, enabled: bool = True, status: bool = False) -> Any:
    """A `rich.progress.Progress`, not started; `enabled=False` gives one that draws nothing.

    `status` adds a column showing the task's description, updated as the stage runs."""
    # rich is imported here so that importing a stage's module stays cheap
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    if status:
        columns.append(TextColumn("{task.description}"))
    return Progress(*columns, disable=not enabled, transient=False)
