"""The caching engine behind `opcircuits run`: stages that are skipped, recomputed or resumed.

Each stage declares its inputs (files or directories, hashed; or plain identity strings), its
options and its outputs. After a stage succeeds, the runner writes `stages/<name>.json`
(atomically, last): the inputs' and outputs' sha256 and the options. On the next run a stage is
skipped when that record exists, its inputs and options are unchanged and its outputs still hash
to the recorded values; otherwise it recomputes. Before a stage runs, `stages/<name>.started.json`
records what it is about to compute, so after a crash or kill the next run knows whether a
partial output (a half-extracted store) belongs to the same computation and may be resumed, or to
an older one and must be cleared.

Nothing here knows about this experiment: `pipeline.py` builds its stages and runs them here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError
from opcircuits.files import sha256_file, write_json_atomic
from opcircuits.jsonable import jsonable

log = logging.getLogger(__name__)

STAGE_RECORD_VERSION = 1
STAGES_DIR = "stages"
HASH_CACHE = ".hashcache.json"


class StageError(OpcircuitsError):
    """A stage failed; the message names the stage and the cause."""

    def __init__(self, stage: str, cause: BaseException, log_file: Path | None = None) -> None:
        self.stage = stage
        if isinstance(cause, OpcircuitsError):
            why = str(cause)
        else:  # a bug: its first line here, the whole message and traceback in run.log
            lines = str(cause).strip().splitlines() or [""]
            why = f"{type(cause).__name__}: {lines[0]}" + (" …" if len(lines) > 1 else "")
            if log_file is not None:
                why += f" (traceback in {log_file})"
        super().__init__(f"stage '{stage}' failed: {why}")


# --- hashing -----------------------------------------------------------------------------------


class Hasher:
    """sha256 of files and directory trees, cached by (path, size, mtime) across invocations.

    Re-hashing a multi-GB local checkpoint on every run would cost seconds; a file whose size and
    modification time are unchanged is taken to be unchanged (as make and rsync do).
    """

    def __init__(self, cache_file: Path | None = None) -> None:
        self.cache_file = cache_file
        self.cache: dict[str, list[Any]] = {}
        if cache_file is not None and cache_file.is_file():
            with contextlib.suppress(ValueError, OSError):
                loaded = json.loads(cache_file.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    self.cache = loaded
        self._dirty = False

    def file(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        hit = self.cache.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = sha256_file(path)
        self.cache[key] = [st.st_size, st.st_mtime_ns, digest]
        self._dirty = True
        return digest

    def tree(self, path: Path) -> str:
        """One digest over a directory's files (relative names + contents); dotfiles (temporary
        files of an interrupted write) are ignored. A link to nothing is an error naming it."""
        h = hashlib.sha256()
        for f in sorted(_tree_files(path)):
            if f.is_symlink() and not f.exists():
                raise OpcircuitsError(
                    f"a symbolic link to nothing ({os.readlink(f)}) in an input folder; "
                    "remove or fix it",
                    path=f,
                )
            h.update(f.relative_to(path).as_posix().encode())
            h.update(b"\0")
            h.update(self.file(f).encode())
            h.update(b"\n")
        return h.hexdigest()

    def any(self, path: Path) -> str:
        if path.is_dir():
            return self.tree(path)
        if path.is_file():
            return self.file(path)
        raise FileNotFoundError(path)

    def save(self) -> None:
        if self.cache_file is not None and self._dirty:
            with contextlib.suppress(OSError):
                write_json_atomic(self.cache_file, self.cache)
            self._dirty = False


def _tree_files(path: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith("."):
                yield Path(root) / name


# --- stages ------------------------------------------------------------------------------------


@dataclass
class Stage:
    """One step of the run. `inputs` values are paths (hashed) or identity strings (compared as is).

    Output files are ours only once a record of this stage lists them: an existing output file
    that no record lists is someone else's, and the stage refuses to run rather than overwrite
    it. Output folders are guarded by their writers (`files.atomic_dir`, the store's layout).
    """

    name: str
    action: Callable[[], Any]
    inputs: dict[str, Path | str]
    options: dict[str, Any]
    outputs: dict[str, Path]
    optional_outputs: dict[str, Path] = field(default_factory=dict)  # hashed when present
    # Recorded, not compared: options the results do not depend on.
    settings: dict[str, Any] = field(default_factory=dict)
    reuse_any: bool = False  # skip whenever the recorded outputs are intact, whatever the key
    # Called before the stage recomputes from scratch: clear(False) when its key changed since an
    # earlier attempt (a stale partial output must not be resumed), clear(True) for --force. It
    # deletes only files the stage wrote and raises an OpcircuitsError naming any other file in
    # the way, with nothing removed.
    clear: Callable[[bool], None] | None = None
    # Checked before the run writes anything: raises an OpcircuitsError naming a file in the way
    # of an output folder (one opcircuits did not write), so a refusal changes nothing.
    guard: Callable[[], None] | None = None


def relative_to_run(path: Path, run_dir: Path) -> str:
    """Paths inside the run directory are recorded relative to it, so the directory can move."""
    try:
        return path.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


class StageRunner:
    def __init__(
        self, run_dir: Path, hasher: Hasher, force: bool, file_handler: logging.Handler | None
    ):
        self.run_dir = run_dir
        self.records = run_dir / STAGES_DIR
        self.hasher = hasher
        self.force = force
        self.file_handler = file_handler
        self.outcomes: list[tuple[str, str]] = []

    def _input_digests(self, stage: Stage) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in stage.inputs.items():
            if isinstance(value, Path):
                if not value.exists():
                    raise StageError(stage.name, OpcircuitsError("input not found", path=value))
                out[name] = {
                    "path": relative_to_run(value, self.run_dir),
                    "sha256": self.hasher.any(value),
                }
            else:
                out[name] = {"id": value}
        return out

    def _output_digests(self, stage: Stage) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, path in stage.outputs.items():
            if not path.exists():
                raise StageError(
                    stage.name, OpcircuitsError("stage finished without its output", path=path)
                )
            out[name] = {
                "path": relative_to_run(path, self.run_dir),
                "sha256": self.hasher.any(path),
            }
        for name, path in stage.optional_outputs.items():
            if path.exists():
                out[name] = {
                    "path": relative_to_run(path, self.run_dir),
                    "sha256": self.hasher.any(path),
                }
        return out

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _up_to_date(
        self, record: dict[str, Any] | None, key: dict[str, Any], any_key: bool = False
    ) -> bool:
        if record is None or (record.get("key") != key and not any_key):
            return False
        for entry in record.get("outputs", {}).values():
            path = Path(entry["path"])
            path = path if path.is_absolute() else self.run_dir / path
            if not path.exists() or self.hasher.any(path) != entry["sha256"]:
                return False
        return True

    def run(self, stage: Stage, index: int, total: int) -> None:
        done_file = self.records / f"{stage.name}.json"
        started_file = self.records / f"{stage.name}.started.json"
        key = {
            "version": STAGE_RECORD_VERSION,
            "inputs": self._input_digests(stage),
            "options": jsonable(stage.options),
        }
        done = self._read(done_file)
        if not self.force and self._up_to_date(done, key, stage.reuse_any):
            log.info("[%d/%d] %s: up to date, skipped", index, total, stage.name)
            self.outcomes.append((stage.name, "skipped"))
            return

        started = self._read(started_file)
        written = self._refuse_foreign_outputs(stage, done, started)
        stale = self.force or (started is not None and started.get("key") != key)
        stale = stale or (done is not None and done.get("key") != key)
        if stale and stage.clear is not None:
            self._guarded(stage.name, lambda: stage.clear(self.force))  # type: ignore[misc]
        elif started is not None:
            log.info("[%d/%d] %s: resuming an interrupted run", index, total, stage.name)
        done_file.unlink(missing_ok=True)
        # Before the first byte is written: which paths this stage owns from now on.
        started = {"stage": stage.name, "key": key, "started": utc_now(), "written": written}
        write_json_atomic(started_file, started)

        log.info("[%d/%d] %s ...", index, total, stage.name)
        self._guarded(stage.name, stage.action)
        record = {
            "stage": stage.name,
            "key": key,
            "settings": jsonable(stage.settings),
            "outputs": self._output_digests(stage),
            "written": written,
            "finished": utc_now(),
        }
        write_json_atomic(done_file, record)  # last: only now may a later run trust the outputs
        started_file.unlink(missing_ok=True)
        self.hasher.save()
        self.outcomes.append((stage.name, "ran"))

    def _guarded(self, name: str, step: Callable[[], Any]) -> None:
        """Run `step`; a failure becomes a StageError naming the stage (a bug's trace: run.log)."""
        try:
            step()
        except (KeyboardInterrupt, StageError):
            raise
        except OpcircuitsError as exc:
            raise StageError(name, exc) from exc
        except Exception as exc:
            self._trace(name, exc)
            raise StageError(name, exc, self.run_dir / "run.log") from exc

    def _refuse_foreign_outputs(self, stage: Stage, *records: dict[str, Any] | None) -> list[str]:
        """The paths this stage has ever been recorded writing, with its outputs added; an
        existing output file none of its records lists is not ours: error, nothing touched."""
        written: set[str] = set()
        for record in records:
            if record is not None:
                written.update(str(p) for p in record.get("written", []))
                written.update(str(o.get("path")) for o in record.get("outputs", {}).values())
        for path in [*stage.outputs.values(), *stage.optional_outputs.values()]:
            name = relative_to_run(path, self.run_dir)
            if (path.is_file() or path.is_symlink()) and name not in written:
                raise StageError(
                    stage.name,
                    OpcircuitsError(
                        "not written by this run, so it will not be overwritten and nothing was "
                        "changed; move it away or choose another --out",
                        path=path,
                    ),
                )
            written.add(name)
        return sorted(written)

    def preflight(self, stages: list[Stage]) -> None:
        """Before the run's first write, every stage's checks: its records are ours, no output
        is in the way (a file no record lists, a folder holding files opcircuits did not
        write), and its inputs from outside the run exist and can be read (hashed: a link to
        nothing is named). A refusal here leaves everything as it was."""
        produced = [p for s in stages for p in (*s.outputs.values(), *s.optional_outputs.values())]
        for stage in stages:
            try:
                records = [self._own_record(stage, suffix) for suffix in ("", ".started")]
                self._refuse_foreign_outputs(stage, *records)
                if stage.guard is not None:
                    stage.guard()
                for path in external_inputs(stage, produced).values():
                    if not path.exists():
                        raise OpcircuitsError("input not found", path=path)
                    self.hasher.any(path)
            except StageError:
                raise
            except OpcircuitsError as exc:
                raise StageError(stage.name, exc) from exc

    def _own_record(self, stage: Stage, suffix: str) -> dict[str, Any] | None:
        """stages/<name><suffix>.json, which must be this stage's record when it exists."""
        path = self.records / f"{stage.name}{suffix}.json"
        if not path.exists() and not path.is_symlink():
            return None
        record = self._read(path)
        if record is None or record.get("stage") != stage.name or "key" not in record:
            raise OpcircuitsError(
                "not a stage record of opcircuits, so it will not be overwritten and nothing "
                "was changed; move it away or choose another --out",
                path=path,
            )
        return record

    def _trace(self, stage: str, exc: BaseException) -> None:
        """An unexpected failure's traceback goes to run.log only; the console gets one line."""
        if self.file_handler is not None:
            trace = "".join(traceback.format_exception(exc))
            log_to_file_only(self.file_handler, logging.ERROR, f"stage '{stage}' crashed:\n{trace}")


def external_inputs(stage: Stage, produced: list[Path]) -> dict[str, Path]:
    """The stage's input paths that no stage of the run writes (data, checkpoints, stores the
    user gave): they exist before the run and are never written by it."""
    resolved = [p.resolve() for p in produced]
    return {
        name: value
        for name, value in stage.inputs.items()
        if isinstance(value, Path)
        and not any(value.resolve().is_relative_to(out) for out in resolved)
    }


def log_to_file_only(handler: logging.Handler, level: int, message: str) -> None:
    handler.handle(log.makeRecord(log.name, level, __file__, 0, message, (), None))


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --- the run directory -------------------------------------------------------------------------


def prepare_run_dir(path: Path) -> Path:
    """Create the run directory and prove it is writable, or fail with a clear message."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OpcircuitsError(
            f"cannot write the run directory ({reason}); pass --out with a writable folder",
            path=path,
        ) from exc
    return path


@contextlib.contextmanager
def exclusive(run_dir: Path) -> Iterator[None]:
    """One run per directory at a time. The OS drops the lock when the process dies (even -9)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; run unguarded
        yield
        return
    with open(run_dir / ".lock", "a") as fh:  # "a": never truncates a file that is in the way
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OpcircuitsError(
                "another `opcircuits run` is using this run directory; "
                "wait for it or pick another --out",
                path=run_dir,
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[logging.Handler]:
    """Everything the package logs during the run also goes, timestamped, to run.log."""
    handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    pkg = logging.getLogger("opcircuits")
    old_level = pkg.level
    if pkg.getEffectiveLevel() > logging.INFO:
        pkg.setLevel(logging.INFO)
    pkg.addHandler(handler)
    try:
        yield handler
    finally:
        pkg.removeHandler(handler)
        pkg.setLevel(old_level)
        handler.close()
