"""Worker processes that do not outlive the analysis: a kill -9 of the analyzing process ends
its joblib workers too (otherwise they live on, busy or idle, until loky's idle timeout).

Kept free of heavy imports: the initializer is unpickled, and so this module imported, before a
worker imports anything else, so it starts watching as early as it can.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

POLL_S = 0.5


def exit_with_parent(parent: int) -> None:
    """A worker's initializer: end this process as soon as process `parent` is gone.

    A daemon thread polls the parent id, which changes when the parent dies and the worker is
    re-parented (to init or a subreaper)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="opcircuits-exit-with-parent", daemon=True).start()


def worker_config() -> Any:
    """`joblib.parallel_config` for loky workers that exit with this process."""
    import joblib

    return joblib.parallel_config(
        backend="loky", initializer=exit_with_parent, initargs=(os.getpid(),)
    )
