"""What `opcircuits run` checks before its first write, so that a refusal changes nothing.

- The run directory is new, empty, or one of ours: its `run.json` is a run record opcircuits
  wrote. A `run.json` that is not, or a `config.resolved.toml`, `run.log` or hash cache with
  no run record beside it, belongs to someone else: refused, nothing touched.
- No output is an input or lies inside one (the GSM8K folder, a checkpoint, a store given to
  analysis_only), and the store written does not overlap the run directory's own folders.
- Each stage's own checks (`StageRunner.preflight`): records, files in the way, inputs readable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError
from opcircuits.files import (
    read_json_object,
    refuse_blocked_parent,
    refuse_inside_inputs,
    refuse_same_files,
)
from opcircuits.options import MODES
from opcircuits.pipeline.engine import HASH_CACHE, STAGES_DIR, Stage, external_inputs

RUN_RECORD = "run.json"
RESOLVED = "config.resolved.toml"
RUN_LOG = "run.log"
# Written by `runner.run` beside run.json (which is written first): ours only with it.
RUN_FILES = (RESOLVED, RUN_LOG, HASH_CACHE)
RUN_STATUSES = ("running", "interrupted", "failed", "complete")
# The options that name each kind of stage input, for the error messages.
INPUT_FIELDS = {
    "source": "data.source",
    "checkpoint": "extract.checkpoint",
    "base": "extract.base",
    "legacy": "run.store",
    "store": "run.store",
    "patch_map": "intervene.patch_map",
}


def is_run_record(data: Any) -> bool:
    """Whether `data` (a parsed run.json) is a record `runner.run` wrote."""
    return (
        isinstance(data, dict)
        and data.get("mode") in MODES
        and data.get("status") in RUN_STATUSES
        and isinstance(data.get("command"), list)
        and isinstance(data.get("versions"), dict)
        and "opcircuits" in data["versions"]
        and isinstance(data.get("started"), str)
    )


def check_run_dir(run_dir: Path) -> None:
    """The run directory may be written: it does not exist, or it holds no run files, or its
    run.json is ours. Otherwise an error naming the file, and nothing is written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise OpcircuitsError("exists and is not a folder; choose another --out", path=run_dir)
    refuse_blocked_parent(run_dir, field="out")  # a file where a folder of its path must be
    record = run_dir / RUN_RECORD
    if record.exists() or record.is_symlink():
        try:
            ours = is_run_record(read_json_object(record))
        except (OpcircuitsError, OSError):
            ours = False
        if ours:
            return
        raise OpcircuitsError(
            "not a run record of opcircuits, so this folder is not a run directory of ours and "
            "nothing was changed; move it away or choose another --out",
            path=record,
            field="run.out",
        )
    for name in RUN_FILES:
        path = run_dir / name
        if path.exists() or path.is_symlink():
            raise OpcircuitsError(
                f"not written by opcircuits (there is no {RUN_RECORD} of a run beside it), so it "
                "will not be overwritten and nothing was changed; move it away or choose "
                "another --out",
                path=path,
                field="run.out",
            )


def check_paths(
    stages: list[Stage], run_dir: Path, store: Path | None, reserved: tuple[str, ...]
) -> None:
    """No output of the run is one of its inputs, holds one, or lies inside an input folder;
    the store it writes (`store`, None when it only reads one) is not the run directory, does
    not hold it and is none of its `reserved` folders."""
    produced = [p for s in stages for p in (*s.outputs.values(), *s.optional_outputs.values())]
    inputs: dict[str, list[Path | None]] = {}
    for stage in stages:
        for name, path in external_inputs(stage, produced).items():
            inputs.setdefault(INPUT_FIELDS.get(name, f"{stage.name}.{name}"), []).append(path)
    outside = store is not None and not store.resolve().is_relative_to(run_dir.resolve())
    outputs: dict[str, Any] = {
        "run.out": [run_dir / n for n in (RUN_RECORD, *RUN_FILES, STAGES_DIR)]
        + [p for p in produced if not (outside and p == store)],
        "run.store": store if outside else None,
    }
    refuse_same_files(outputs, inputs)
    refuse_inside_inputs({"run.out": run_dir, "run.store": store}, inputs)
    if store is None or store.resolve() == (run_dir / "store").resolve():
        return
    mine, top = store.resolve(), run_dir.resolve()
    overlap = "the run directory" if mine == top or top.is_relative_to(mine) else None
    for name in reserved:
        theirs = (run_dir / name).resolve()
        if overlap is None and (mine == theirs or mine.is_relative_to(theirs)):
            overlap = f"the run directory's own {name} folder"
    if overlap is not None:
        raise OpcircuitsError(
            f"the store would overlap {overlap}; choose a --store outside the run directory, "
            "or a new folder in it",
            path=store,
            field="run.store",
        )
