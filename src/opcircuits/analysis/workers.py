"""Worker processes that do not outlive the analysis: a kill -9 of the analyzing process ends
its joblib workers too (otherwise they live on, busy or idle, until loky's idle timeout); and
the one BLAS thread every fit runs with (`one_blas_thread`).

Kept free of heavy imports: the initializer is unpickled, and so this module imported, before a
worker imports anything else, so it starts watching as early as it can.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

POLL_S = 0.5
# this process's threadpoolctl controller and how many modules were imported when it was made
_controller: list[Any] = []


def one_blas_thread() -> Any:
    """A context limiting BLAS and OpenMP to one thread, as `threadpool_limits(1)` does but
    without its scan of the process's loaded libraries on every call (7 ms each: 5 of the
    default analysis's 80 CPU-seconds went to 750 scans). The controller is made again
    whenever a module was imported since (a new module may have loaded a library, e.g. torch
    in `opcircuits run`), so every loaded library is limited as threadpool_limits would."""
    imported = len(sys.modules)
    if not _controller or _controller[1] != imported:
        from threadpoolctl import ThreadpoolController

        _controller[:] = [ThreadpoolController(), len(sys.modules)]
    return _controller[0].limit(limits=1)


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
