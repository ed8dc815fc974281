"""The training run's folder and inputs, checked before the first write: `--out` is new or
written by train (its file list), its log reads back, no input lies inside it or holds it, and
the layers named exist."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from opcircuits.codi.config import CONFIG_NAME
from opcircuits.codi.model import WEIGHTS_NAME, CodiModel
from opcircuits.errors import OpcircuitsError
from opcircuits.files import write_json_atomic, write_text_atomic
from opcircuits.options import TrainOptions

log = logging.getLogger(__name__)
LOG_NAME = "train_log.jsonl"
LOSSES = ("loss", "student_ce", "distill", "teacher_ce", "step_ce")
DATA_SUMMARY_NAME = "train_data.json"

# What a run writes into --out: the final model in the released layout (with the base's config
# and tokenizer files when it is self-contained), the log, the data summary, the checkpoints.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
WRITTEN = (
    WEIGHTS_NAME,
    CONFIG_NAME,
    "config.json",
    "generation_config.json",
    *_TOKENIZER_FILES,
    LOG_NAME,
    DATA_SUMMARY_NAME,
)
_CHECKPOINT_DIRS = ("last", "last.tmp", "last.old")
_LAYOUT = re.compile(
    rf"^(?:(?:{'|'.join(map(re.escape, _CHECKPOINT_DIRS))})/[^/]+|"
    rf"{'|'.join(map(re.escape, WRITTEN))})$"
)


def _read_log(log_path: Path, start: int) -> tuple[list[str], float]:
    """The log rows of steps 1..`start` (what the checkpoint resumed from holds) and the last kept
    row's elapsed seconds, read before anything is written. Rows after it were logged by a run
    killed before its next checkpoint; the resumed run redoes those steps, so keeping them would
    log each step twice. A last line cut short by a kill mid-write is left out; any other row
    that is not a step record is an error naming the file and line."""
    if not log_path.exists():
        return [], 0.0
    from opcircuits.files import text_lines

    rows = [(n, raw) for n, raw in text_lines(log_path) if raw.strip()]
    kept: list[tuple[str, float]] = []
    for i, (lineno, raw) in enumerate(rows):
        line = raw.strip()
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(rows) - 1 and not raw.endswith("\n"):
                break  # the write a kill interrupted (no newline yet): its step is redone
            raise OpcircuitsError(
                f"not a training log row: {exc.msg}; move the file away or train into "
                "another --out",
                path=log_path,
                line=lineno,
            ) from exc
        step = row.get("step") if isinstance(row, dict) else None
        elapsed = row.get("elapsed_s") if isinstance(row, dict) else None
        if not _is_number(step, int) or not _is_number(elapsed, float):
            raise OpcircuitsError(
                "not a training log row (an object with step and elapsed_s); move the file "
                "away or train into another --out",
                path=log_path,
                line=lineno,
            )
        if step <= start:
            kept.append((line, float(elapsed)))
    return [line for line, _ in kept], (kept[-1][1] if kept else 0.0)


def _is_number(value: Any, kind: type) -> bool:
    kinds = (int,) if kind is int else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def _trim_log(log_path: Path, kept: list[str]) -> None:
    """Rewrite the log with the rows `_read_log` kept (nothing to do for a new run)."""
    if log_path.exists():
        write_text_atomic(log_path, "".join(line + "\n" for line in kept))


def _is_train_folder(out: Path) -> bool:
    """Whether `out` was written by `train`: its list of files names the training log, or (a run
    from before the list) it holds a resumable checkpoint."""
    from opcircuits.codi.training.state import STATE_NAME
    from opcircuits.files import owned_files

    return LOG_NAME in owned_files(out) or any(
        (out / d / STATE_NAME).is_file() for d in ("last", "last.old")
    )


def _check_out(out: Path) -> None:
    """--out is a new folder or one an earlier run of `train` wrote: checked before anything is
    written, so a folder holding anyone's own config.json or train_log.jsonl is refused as it
    is (`new-base`'s rule: `files.check_replaceable`)."""
    from opcircuits.files import check_replaceable, in_layout

    train_folder = out.is_dir() and _is_train_folder(out)
    check_replaceable(out, lambda name: train_folder and in_layout(name, _LAYOUT), field="out")


def _record(out: Path) -> None:
    """Add the files of the run's layout now in `out` to its list of files (`files.OWNED_LIST`),
    the record a rerun checks ownership against (main process)."""
    from opcircuits.files import OWNED_LIST, owned_files

    folders = [out, *(out / d for d in _CHECKPOINT_DIRS if (out / d).is_dir())]
    present = {p.relative_to(out).as_posix() for f in folders for p in f.iterdir() if p.is_file()}
    names = owned_files(out) | {LOG_NAME, DATA_SUMMARY_NAME}
    names |= {n for n in present if _LAYOUT.match(n)}
    write_json_atomic(out / OWNED_LIST, {"files": sorted(names - {OWNED_LIST})})


def _refuse_inputs_as_outputs(options: TrainOptions) -> None:
    """--out may not hold the base or the training data (it would overwrite them), nor lie inside
    either's folder (it would add to what the next run reads)."""
    from opcircuits.files import refuse_inside_inputs, refuse_same_files

    base = Path(str(options.base)).expanduser()
    data = Path(str(options.data)).expanduser()
    inputs = {
        "--base": base if base.exists() else None,
        "--data": data if data.exists() else None,
    }
    refuse_same_files({"--out": Path(options.out)}, inputs)
    refuse_inside_inputs({"--out": Path(options.out)}, inputs)


def _check_layers(options: TrainOptions, model: CodiModel) -> None:
    """The analysis layers saved in codi_config.json exist in the model (HF `hidden_states`
    indices: 0 = embeddings .. the number of blocks), checked before anything is written."""
    if options.layers:
        bad = [x for x in options.layers if x > model.num_layers]
        if bad:
            raise OpcircuitsError(
                f"layers {bad} out of range: this base has {model.num_layers} blocks, so layers "
                f"are 0 (embeddings) .. {model.num_layers}",
                field="layers",
            )
