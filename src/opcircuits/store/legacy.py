"""Import the earlier scripts' `continuous_thoughts_*.json` into a thought store.

Those files are one JSON list of ``{"id", "question", "answer", "operation_type", "thoughts":
{"early": [6 × D], "middle": [6 × D], "late": [6 × D]}}``: the gold solution text, the operation
category and, for three layers, the hidden states at positions bot, latent_1 … latent_5. The
layer numbers were not recorded; by default they are taken to be 4, 8, 14 (the earlier
experiment's layers for CODI-LLaMA-3.2-1B) and the labels are kept as `layer_names`. Model
outputs (answer text, prediction, logit lens) were not recorded either: those columns are null.

The file is read into memory once (a ~690 MB file needs about that much for the text) and
decoded one item at a time, each converted to a float32 array right away, so the Python float
objects of only one item are alive at a time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from opcircuits.data.annotations import step_operators, step_results
from opcircuits.data.gsm8k import parse_final_answer
from opcircuits.errors import OpcircuitsError
from opcircuits.files import (
    atomic_dir,
    check_replaceable,
    read_text,
    refuse_same_files,
    sha256_file,
)
from opcircuits.options import ImportLegacyOptions
from opcircuits.store.reader import Store, open_store
from opcircuits.store.schema import MANIFEST, is_store_file
from opcircuits.store.writer import write_store

log = logging.getLogger(__name__)


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def iter_json_array(text: str, path: Path) -> Iterator[tuple[int, int, int, Any]]:
    """Yield (index, line, offset, item) for each element of the top-level JSON array in `text`.

    Items are decoded one at a time; line numbers are counted incrementally (linear time)."""
    decoder = json.JSONDecoder()
    ws = " \t\r\n"
    pos = 0
    n = len(text)
    while pos < n and text[pos] in ws:
        pos += 1
    if pos >= n or text[pos] != "[":
        raise OpcircuitsError(
            "expected a JSON list of thought records", path=path, line=_line_of(text, pos)
        )
    pos += 1
    index = 0
    counted, line = 0, 1  # newlines counted in text[:counted]
    while True:
        while pos < n and text[pos] in ws:
            pos += 1
        if pos < n and text[pos] == "]" and index == 0:
            pos += 1
            break
        start = pos
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise OpcircuitsError(
                f"item {index}: not valid JSON ({exc.msg})", path=path, line=exc.lineno
            ) from exc
        line += text.count("\n", counted, start)
        counted = start
        yield index, line, start, item
        index += 1
        while pos < n and text[pos] in ws:
            pos += 1
        if pos < n and text[pos] == ",":
            pos += 1
            continue
        if pos < n and text[pos] == "]":
            pos += 1
            break
        raise OpcircuitsError(
            f"after item {index - 1}: expected ',' or ']'", path=path, line=_line_of(text, pos)
        )
    while pos < n and text[pos] in ws:
        pos += 1
    if pos != n:
        raise OpcircuitsError("extra data after the JSON list", path=path, line=_line_of(text, pos))


def parse_gold(answer: str, *, path: Path | None = None, line: int | None = None) -> float | None:
    """The number after `####` (commas removed; the data stage's rule), None without `####`;
    OpcircuitsError when what follows `####` is not a number."""
    if "####" not in answer:
        return None
    return float(parse_final_answer(answer, path=path, line=line)[1])


def _solution_labels(answer: str) -> tuple[int | None, list[str] | None]:
    """n_steps and ops_used from the solution's calculator annotations (the data stage's rules);
    None for both when the annotations cannot be trusted."""
    from opcircuits.data.annotations import (
        OPERATOR_SYMBOLS,
        UNPARSEABLE,
        extract_steps,
        label_record,
    )

    label = label_record({"answer": answer})
    if label.reason == UNPARSEABLE:
        return None, None
    return len(extract_steps(answer)), [s for s in OPERATOR_SYMBOLS if label.operators.get(s)]


def _item(
    item: Any, index: int, line: int, path: Path, names: list[str], shape: list[int] | None
) -> tuple[dict[str, Any], np.ndarray]:
    def bad(msg: str, field: str) -> OpcircuitsError:
        return OpcircuitsError(f"item {index}: {msg}", path=path, line=line, field=field)

    if not isinstance(item, dict):
        raise bad(f"expected an object, got {type(item).__name__}", "item")
    for key, kind in (
        ("id", (str, int)),
        ("question", str),
        ("answer", str),
        ("operation_type", str),
        ("thoughts", dict),
    ):
        if key not in item:
            raise bad("missing", key)
        if isinstance(item[key], bool) or not isinstance(item[key], kind):
            raise bad(f"has type {type(item[key]).__name__}", key)
    thoughts = item["thoughts"]
    missing = [k for k in names if k not in thoughts]
    extra = [k for k in thoughts if k not in names]
    if missing or extra:
        raise bad(
            f"layers {sorted(thoughts)} do not match the layer names {names} (use --layer-names)",
            "thoughts",
        )
    per_layer = []
    for name in names:
        try:
            arr = np.asarray(thoughts[name], dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise bad(
                f"not a list of equal-length number lists ({exc})", f"thoughts.{name}"
            ) from exc
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise bad(
                f"expected positions × hidden size, got shape {list(arr.shape)}", f"thoughts.{name}"
            )
        if shape is not None and list(arr.shape) != shape:
            raise bad(
                f"shape {list(arr.shape)} differs from the first item's {shape}", f"thoughts.{name}"
            )
        if not np.isfinite(arr).all():
            raise bad("holds NaN or infinite values", f"thoughts.{name}")
        shape = list(arr.shape)
        per_layer.append(arr)
    hidden = np.stack(per_layer, axis=1)  # [P, L, D]
    answer = item["answer"]
    n_steps, ops = _solution_labels(answer)
    try:
        gold = parse_gold(answer)
    except OpcircuitsError as exc:
        raise bad(exc.message, "answer") from exc
    record = {
        "id": str(item["id"]),
        "category": item["operation_type"],
        "question": item["question"],
        "gold": gold,
        "n_steps": n_steps,
        "ops_used": ops,
        "step_ops": None if ops is None else step_operators({"answer": answer}),
        # the value probes can run on imports (the lens's Table 3 metric cannot: no lens)
        "step_results": None if ops is None else step_results({"answer": answer}),
    }
    return record, hidden


def import_legacy(options: ImportLegacyOptions) -> Store:
    """Convert one legacy thoughts JSON file into a store at `options.out`."""
    path = Path(options.file)
    if not path.is_file():
        raise OpcircuitsError("no such file", path=path)
    layers, names = list(options.layers), list(options.layer_names)
    if len(names) != len(layers):
        raise OpcircuitsError(
            f"{len(names)} layer names {names} for {len(layers)} layers {layers}", field="layers"
        )
    out = Path(options.out)
    refuse_same_files({"out": out}, {"--store": path})
    if (out / MANIFEST).is_file() and not options.overwrite:
        raise OpcircuitsError(
            "a store already exists here; pass --overwrite or choose another --out", path=out
        )
    check_replaceable(out, is_store_file)  # before the (long) read
    text = read_text(path)
    records: list[dict[str, Any]] = []
    hidden: list[np.ndarray] = []
    shape: list[int] | None = None
    with Progress(
        TextColumn("importing {task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task(path.name, total=len(text))
        for index, line, start, item in iter_json_array(text, path):
            rec, h = _item(item, index, line, path, names, shape)
            shape = [h.shape[0], h.shape[2]]
            records.append(rec)
            hidden.append(h)
            progress.update(task, completed=start)
    del text
    if not records:
        raise OpcircuitsError("the list holds no items", path=path)
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise OpcircuitsError(f"ids repeat: {dup}", path=path, field="id")
    n_pos = shape[0] if shape else 0
    positions = ["bot"] + [f"latent_{k}" for k in range(1, n_pos)]
    log.info(
        "read %d legacy items (%d positions, %d layers, hidden size %s)",
        len(records),
        n_pos,
        len(layers),
        shape[1] if shape else None,
    )
    with atomic_dir(out, is_store_file) as scratch:  # the old store stays until the new is whole
        write_store(
            scratch,
            np.stack(hidden),
            records,
            layers,
            positions,
            None,
            model=options.model,
            num_latent=options.num_latent,
            layer_names=names,
            store_dtype=options.store_dtype,
            dataset=str(path),
            dataset_sha256=sha256_file(path),
            source="legacy",
            note=(
                "imported from the earlier scripts' thoughts JSON: layer numbers assumed "
                f"({','.join(map(str, layers))}), positions bot, latent_1 … latent_{n_pos - 1} "
                "as recorded; no model outputs, logit lens or latent inputs"
            ),
        )
    return open_store(out)
