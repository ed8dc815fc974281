"""Crash-safe file writing, hashing and reading, shared by every stage and command.

Outputs are written to a temporary file (or folder) beside their destination and renamed into
place, so a crash, Ctrl-C or a full disk never leaves a half-written output where a later run
would trust it. A folder is replaced only when everything in it is ours: each folder written
through `atomic_dir` carries a list of the files written into it (`OWNED_LIST`), and any other
file in the way is an error naming it, with nothing removed. An output may not be one of the
command's inputs (`refuse_same_files`). Inputs are read as UTF-8, and a byte that is not is an
error naming the file and line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError
from opcircuits.scratch import owner_tag, remove_stale_scratch

# In every folder `atomic_dir` writes: the relative names of the files written into it.
OWNED_LIST = ".opcircuits-files.json"
# Files an operating system drops into folders it shows (caches, never anyone's work).
_OS_LITTER = {".DS_Store", "Thumbs.db", "desktop.ini"}

# OS errors that mean "this output cannot be written here", reported as one line.
_WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on the disk",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def write_error(
    exc: OSError, path: str | Path | None = None, needed: int | None = None
) -> OpcircuitsError | None:
    """A one-line user error for an OS error that stops writing `path` (disk full, no
    permission, read-only disk), or None for other errors (bugs keep their traceback)."""
    reason = _WRITE_ERRNOS.get(exc.errno) if exc.errno is not None else None
    if reason is None:
        return None
    named = exc.filename if isinstance(exc.filename, str) else path
    where = Path(named) if named is not None else None
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        parts = [f"needs {_size(needed)}"] if needed is not None else []
        near = (where, *where.parents) if where is not None else (Path.cwd(),)
        probe = next((p for p in near if p.exists()), None)
        if probe is not None:
            with contextlib.suppress(OSError):
                parts.append(f"{_size(shutil.disk_usage(probe).free)} free")
        if parts:
            reason += f" ({', '.join(parts)})"
    return OpcircuitsError(reason, path=where)


@contextlib.contextmanager
def writing(path: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn disk-full and permission errors raised while writing `path` into one-line errors."""
    try:
        yield
    except OSError as exc:
        user = write_error(exc, path, needed)
        if user is None:
            raise
        raise user from exc


# A temporary file of an interrupted atomic write: `.<name>.<random>.tmp` beside <name>.
_TMP_RE = re.compile(r"^(?P<dir>(?:[^/]+/)?)\.(?P<name>[^/]+)\.[A-Za-z0-9_]+\.tmp$")


def in_layout(name: str, own: re.Pattern[str]) -> bool:
    """Whether `name` (relative to a folder, POSIX) matches the folder layout `own`, or is the
    temporary file `atomic_path` left of such a file when a write was interrupted."""
    if own.match(name):
        return True
    tmp = _TMP_RE.match(name)
    return tmp is not None and in_layout(tmp["dir"] + tmp["name"], own)


@contextlib.contextmanager
def atomic_path(path: str | Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    tmp_path: Path | None = None
    try:
        with writing(path, needed):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmp_path = Path(tmp)
            yield tmp_path
            # mkstemp creates 0600 files; give outputs the usual umask-based mode.
            os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, path)
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_text_atomic(path: str | Path, text: str) -> None:
    data = text.encode("utf-8")
    with atomic_path(path, needed=len(data)) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Deterministic JSON (sorted keys, fixed indent) written atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | Path, records: list[dict[str, Any]]) -> None:
    """One JSON object per line, keys in insertion order, written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def manifest_path(path: str | Path) -> Path:
    """`data/x.jsonl` → `data/x.manifest.json` (the manifest that sits beside an output file)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.manifest.json")


# --- reading text -------------------------------------------------------------------------------


def _not_utf8(exc: UnicodeDecodeError, path: Path, data: bytes, line: int | None = None):
    if line is None:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    else:
        column = exc.start + 1
    byte = data[exc.start : exc.start + 1].hex()
    return OpcircuitsError(
        f"not UTF-8 text: byte 0x{byte} at column {column}", path=path, line=line
    )


def read_text(path: str | Path) -> str:
    """A whole UTF-8 text file; a byte that is not UTF-8 is an error naming the file and line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(exc, path, data) from exc


def text_lines(path: str | Path, *, max_bytes: int | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, read a line at a time (memory stays flat); a line
    longer than `max_bytes` is an error naming it, raised before the line is read whole."""
    path = Path(path)
    limit = -1 if max_bytes is None else max_bytes + 1
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(iter(lambda: fh.readline(limit), b""), start=1):
            if max_bytes is not None and len(raw) > max_bytes:
                raise OpcircuitsError(
                    f"line longer than {max_bytes:,} bytes, more than a record may hold",
                    path=path,
                    line=lineno,
                )
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(exc, path, raw, lineno) from exc


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file holding one object (a manifest, a config); errors name the file and line."""
    path = Path(path)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise OpcircuitsError(f"not valid JSON: {exc.msg}", path=path, line=exc.lineno) from exc
    if not isinstance(data, dict):
        raise OpcircuitsError("must hold a JSON object", path=path)
    return data


# --- outputs that must not be inputs ------------------------------------------------------------


def _same_or_inside(output: Path, given: Path) -> bool:
    """`given` is `output` (by path, symlink or hard link) or lies inside the folder `output`."""
    out, inp = output.resolve(), given.resolve()
    if out == inp or inp.is_relative_to(out):
        return True
    with contextlib.suppress(OSError):
        return output.exists() and given.exists() and os.path.samefile(output, given)
    return False


PathArg = str | Path | None


def _paths(value: PathArg | list[PathArg]) -> list[Path]:
    values = value if isinstance(value, list) else [value]
    return [Path(v) for v in values if v is not None]


def refuse_same_files(
    outputs: dict[str, PathArg | list[PathArg]], inputs: dict[str, PathArg | list[PathArg]]
) -> None:
    """An output that is one of the inputs (by path, `./x`, symlink or hard link), or a folder
    holding one, would destroy it: an error naming both, before anything is read or written.
    Keys name the options (`--data`); a value may list several paths (an output and its
    manifest)."""
    for out_name, outs in outputs.items():
        for out in _paths(outs):
            for in_name, ins in inputs.items():
                for inp in _paths(ins):
                    if _same_or_inside(out, inp):
                        raise OpcircuitsError(
                            f"the output would overwrite the input {in_name} ({inp}); "
                            "choose another output path",
                            path=out,
                            field=out_name,
                        )


def refuse_inside_inputs(
    outputs: dict[str, PathArg | list[PathArg]], inputs: dict[str, PathArg | list[PathArg]]
) -> None:
    """An output that is, or lies inside, an input folder (a checkpoint, a data or store
    folder) would change that input: an error naming both, before anything is written."""
    for out_name, outs in outputs.items():
        for out in _paths(outs):
            for in_name, ins in inputs.items():
                for inp in _paths(ins):
                    if inp.is_dir() and _same_or_inside(inp, out):
                        raise OpcircuitsError(
                            f"the output would be written inside the input {in_name} ({inp}); "
                            "choose an output path outside it",
                            path=out,
                            field=out_name,
                        )


def refuse_blocked_parent(path: str | Path, *, field: str | None = None) -> None:
    """An output whose folder cannot be made because a file stands where a folder of its path
    must be (`--out notes.txt/x.jsonl`): an error naming that file, before any work (writing
    would fail only at the end, with a traceback)."""
    for parent in Path(path).parents:
        if parent.exists():
            if not parent.is_dir():
                raise OpcircuitsError(
                    "is a file, so the output cannot be written inside it; choose another path",
                    path=parent,
                    field=field,
                )
            return


def _recorded_names(manifest: Path) -> set[str]:
    """The file names an opcircuits manifest says its command wrote beside it (its output, the
    manifest itself, its partners files), or nothing when `manifest` is not one of ours."""
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(record, dict) or not isinstance(record.get("stage"), str):
        return set()
    options = record.get("options")
    written = [
        options.get("out") if isinstance(options, dict) else None,
        record.get("pairs"),
        record.get("value_pairs"),  # data synth's second partners file
    ]
    return {manifest.name} | {Path(w).name for w in written if isinstance(w, str) and w}


def check_own_outputs(files: list[Path], manifest: Path, *, field: str = "out") -> None:
    """The files a command is about to (re)write beside its manifest (its output, the manifest,
    sibling files) may be replaced only where they do not exist yet, or where the manifest already
    there (opcircuits' record of an earlier output) names them. Otherwise an error naming the
    first file in the way, before anything is computed or written."""
    names: set[str] | None = None
    for path in files:
        refuse_blocked_parent(path, field=field)
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_dir():
            raise OpcircuitsError(
                "exists and is a folder; choose a file path", path=path, field=field
            )
        names = _recorded_names(manifest) if names is None else names
        if path.name not in names:
            why = (
                "is not an opcircuits manifest"
                if path.name == manifest.name
                else f"no opcircuits manifest beside it ({manifest.name}) says opcircuits wrote it"
            )
            raise OpcircuitsError(
                f"exists and {why}: nothing was changed; move it away or choose another output "
                "path",
                path=path,
                field=field,
            )


# --- folders: ownership and atomic replacement --------------------------------------------------


def _all_files(folder: Path) -> list[str]:
    """Every file (and link) under `folder`, as sorted relative POSIX names."""
    names = []
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        names += [(base / n).relative_to(folder).as_posix() for n in files]
        names += [
            (base / d).relative_to(folder).as_posix() for d in dirs if (base / d).is_symlink()
        ]
    return sorted(names)


def owned_files(folder: str | Path) -> set[str]:
    """The files `folder`'s own list says opcircuits wrote into it (empty when it has none)."""
    listing = Path(folder) / OWNED_LIST
    try:
        names = json.loads(listing.read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {n for n in names if isinstance(n, str)} | {OWNED_LIST}


def foreign_files(folder: str | Path, ours: Callable[[str], bool] | None = None) -> list[str]:
    """Files in `folder` that opcircuits did not write: neither on its list nor, when given,
    accepted by `ours` (a layout such as a store's, whose manifest is its record)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    listed = owned_files(folder)
    return [
        n
        for n in _all_files(folder)
        if n not in listed and n.rpartition("/")[2] not in _OS_LITTER and not (ours and ours(n))
    ]


def check_replaceable(
    folder: str | Path, ours: Callable[[str], bool] | None = None, *, field: str | None = None
) -> None:
    """`folder` may be (re)written: it does not exist, or it is a folder holding only files
    opcircuits wrote there. Otherwise an error naming the first file in the way."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OpcircuitsError(
            "exists and is not a folder; choose a folder path", path=folder, field=field
        )
    refuse_blocked_parent(folder, field=field)
    foreign = foreign_files(folder, ours)
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise OpcircuitsError(
            f"not written by opcircuits{more}: it is in the way of this output and nothing was "
            "changed; move it away or choose another output folder",
            path=folder / foreign[0],
            field=field,
        )


def remove_owned(
    folder: str | Path, ours: Callable[[str], bool] | None = None, *, field: str | None = None
) -> None:
    """Delete `folder` if every file in it is ours; otherwise an error and nothing removed."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    check_replaceable(folder, ours, field=field)
    shutil.rmtree(folder)


@contextlib.contextmanager
def atomic_dir(
    folder: str | Path, ours: Callable[[str], bool] | None = None, *, field: str | None = None
) -> Iterator[Path]:
    """Yield an empty temporary folder beside `folder`; when the block succeeds, list its files
    in it and swap it in for `folder`. On any failure `folder` is left as it was and the
    temporary folder is removed. An existing `folder` must hold only files opcircuits wrote."""
    folder = Path(folder)
    if folder.is_symlink():  # replace the real folder, keep the link
        folder = folder.resolve()
    check_replaceable(folder, ours, field=field)
    remove_stale_scratch(folder)
    tmp: Path | None = None
    tag = owner_tag()  # names the scratch's owner, so a later run can tell it is stale
    try:
        with writing(folder):
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(
                tempfile.mkdtemp(prefix=f".{folder.name}.{tag}_", suffix=".tmp", dir=folder.parent)
            )
            yield tmp
            write_json_atomic(tmp / OWNED_LIST, {"files": _all_files(tmp)})
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
            check_replaceable(folder, ours, field=field)  # again: the block may have taken hours
            old = folder.with_name(f".{folder.name}.{tag}_{uuid.uuid4().hex[:8]}.old")
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
            tmp = None
            shutil.rmtree(old, ignore_errors=True)
    except OpcircuitsError as exc:
        # Name the file the user asked for, not its place in the scratch folder (gone by now).
        if tmp is not None and exc.path is not None and Path(exc.path).is_relative_to(tmp):
            exc.path = str(folder / Path(exc.path).relative_to(tmp))
            exc.args = (str(exc),)
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
