"""Stale temporaries of our own: what an interrupted write left (`sweep_stale`: atomic_path's
files; `remove_stale_scratch`: atomic_dir's scratch folders, named by their owner's host and pid,
so a dead writer's are told from a running one's). Nothing of another name is touched."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import time
from pathlib import Path

# What an interrupted write of ours leaves beside its destination: `atomic_path`'s
# `.<name>.<8 random>.tmp` (tempfile's names) and older versions' `.<name>.<8 hex>.old`.
# `atomic_dir`'s scratch folders carry their owner's host and pid instead, so
# `remove_stale_scratch` can tell a dead writer's from a running one's.
_STALE_RE = re.compile(r"^\..+\.(?:[a-z0-9_]{8}\.tmp|[0-9a-f]{8}\.old)$")


def sweep_stale(folder: str | Path, *, older_than: float = 0.0, recursive: bool = False) -> int:
    """Delete the temporaries interrupted writes of ours left in `folder` (and its subfolders
    when `recursive`), those last modified more than `older_than` seconds ago: a folder another
    process may be writing into keeps the fresh ones. Returns how many went."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return 0
    now, swept = time.time(), 0
    for entry in sorted(folder.iterdir()):
        if _STALE_RE.match(entry.name) and not entry.is_symlink():
            with contextlib.suppress(OSError):
                if now - entry.lstat().st_mtime >= older_than:
                    if entry.is_dir():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
                    swept += 1
        elif recursive and entry.is_dir() and not entry.is_symlink():
            swept += sweep_stale(entry, older_than=older_than, recursive=True)
    return swept


def owner_tag(pid: int | None = None) -> str:
    """`<host hash>x<pid>`: which process on which machine a scratch folder belongs to."""
    host = hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:6]
    return f"{host}x{os.getpid() if pid is None else pid}"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def remove_stale_scratch(folder: str | Path) -> None:
    """Remove what `atomic_dir` left beside `folder` when its process died without cleaning up
    (SIGKILL, a power cut): its scratch folders `.<name>.<tag>_<random>.tmp` and its previous
    outputs `.<name>.<tag>_<random>.old` (only while `folder` exists), of processes of this
    machine that no longer run. Nothing else is touched: not another machine's, not a running
    process's, not a name of another pattern."""
    folder = Path(folder)
    if os.name != "posix" or not folder.parent.is_dir():
        return  # os.kill(pid, 0) is no liveness test elsewhere
    host = owner_tag().partition("x")[0]
    pattern = re.compile(
        rf"^\.{re.escape(folder.name)}\.(?P<host>[0-9a-f]{{6}})x(?P<pid>\d+)_[A-Za-z0-9_]+"
        rf"\.(?P<kind>tmp|old)$"
    )
    for entry in folder.parent.iterdir():
        m = pattern.match(entry.name)
        if m is None or m["host"] != host or _pid_running(int(m["pid"])):
            continue
        if not entry.is_dir() or entry.is_symlink() or (m["kind"] == "old" and not folder.exists()):
            continue
        shutil.rmtree(entry, ignore_errors=True)
