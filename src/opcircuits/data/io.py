"""Reading problem files: our JSONL, and the earlier scripts' JSON (a list, or category → list).

Every record comes back in one shape (README, "Problem records"):
fields missing from legacy files are derived from `answer` (final answer, value, steps) and `id`
(split); a legacy category comes from the dict key, or a `category` / `operation_type` field.

`read_problem_rows` reads the raw rows of one split of any problem source (a file, a GSM8K
folder, the hub) for training and evaluation, which take the fields they need from them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from opcircuits.data.annotations import CATEGORIES, OPERATOR_SYMBOLS, UNCLASSIFIED, extract_steps
from opcircuits.data.gsm8k import HUB_CONFIG, HUB_ID, parse_final_answer, read_jsonl_objects
from opcircuits.errors import OpcircuitsError
from opcircuits.files import read_text, text_lines

log = logging.getLogger(__name__)

# Field order of a record as written by every stage of the data package.
RECORD_FIELDS: tuple[str, ...] = (
    "id",
    "split",
    "question",
    "answer",
    "final_answer",
    "final_value",
    "steps",
    "category",
    "n_steps",
    "operators",
)
_KNOWN_CATEGORIES = (*CATEGORIES, UNCLASSIFIED)
# Optional fields kept after RECORD_FIELDS: a synthetic problem's link to its counterfactual
# partner (same `pair_id`) and the step that differs, so sampled files can still be patched; and
# a partner's link to its problem (`partner_of`) with what a value partner changed
# (`changed_value`), which `das --variable result` pairs by.
PAIR_FIELDS: tuple[str, ...] = ("pair_id", "changed_step", "partner_of", "changed_value")
# The longest text a record's field may hold, in characters, checked as the record is read:
# before any tokenizer sees it (a 30 MB question would exhaust the memory there). GSM8K's longest
# question has under 1,000 characters and its longest answer under 1,300.
MAX_CHARS = {"question": 10_000, "answer": 20_000, "final_answer": 100}
# The longest line of a JSONL problem file, in bytes (a record within MAX_CHARS is far shorter):
# a longer line is refused before it is read into memory.
MAX_LINE_BYTES = 1 << 20


def check_text_length(
    text: str, field: str, *, path: str | Path | None = None, line: int | None = None,
    where: str = "",
) -> None:  # fmt: skip
    """Refuse a record's `field` (question, answer, final_answer) longer than `MAX_CHARS`
    allows, naming the file, line and field; every reader of problem text can call it."""
    limit = MAX_CHARS[field]
    if len(text) > limit:
        raise OpcircuitsError(
            f"{where}{len(text):,} characters, more than the {limit:,} a {field} may have",
            path=path,
            line=line,
            field=field,
        )


def read_problems(path: str | Path) -> list[dict[str, Any]]:
    """All problem records of a file, in file order.

    `.json` files are read whole (a list of problems, or a dict category → list of problems);
    anything else is JSONL, unless it starts with `[`. Bad input → OpcircuitsError naming the
    file, the line (JSONL) or item, and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise OpcircuitsError("no such file", path=path)
    if path.suffix == ".json" or _first_char(path) == "[":
        items = _legacy_items(path)
    else:
        items = _jsonl_items(path)
    records: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for where, line, category, raw in items:
        rec = normalize_record(raw, path=path, line=line, where=where, category=category)
        if rec["id"] in seen:
            raise OpcircuitsError(
                f"{where}duplicate id {rec['id']!r} (first at {seen[rec['id']]})",
                path=path,
                line=line,
                field="id",
            )
        seen[rec["id"]] = f"line {line}" if line else where.rstrip(": ")
        records.append(rec)
    if not records:
        raise OpcircuitsError("no problems in the file", path=path)
    return records


def _first_char(path: Path) -> str:
    for _, text in text_lines(path):
        if text.strip():
            return text.lstrip()[0]
    return ""


Item = tuple[str, "int | None", "str | None", Any]  # (where, line, category from key, object)


def _jsonl_items(path: Path) -> Iterator[Item]:
    for lineno, obj in read_jsonl_objects(path, max_bytes=MAX_LINE_BYTES):
        yield "", lineno, None, obj


def _legacy_items(path: Path) -> Iterator[Item]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise OpcircuitsError(
            f"malformed JSON: {exc.msg} (column {exc.colno})", path=path, line=exc.lineno
        ) from exc
    if isinstance(data, list):
        for i, obj in enumerate(data):
            yield f"item {i}: ", None, None, obj
    elif isinstance(data, dict):
        for key, items in data.items():
            if key not in _KNOWN_CATEGORIES:
                raise OpcircuitsError(
                    f"unknown category key {key!r} (expected one of {', '.join(CATEGORIES)})",
                    path=path,
                    field="category",
                )
            if not isinstance(items, list):
                raise OpcircuitsError(
                    f"category {key!r}: expected a list of problems", path=path, field="category"
                )
            for i, obj in enumerate(items):
                yield f"{key}[{i}]: ", None, key, obj
    else:
        raise OpcircuitsError(
            "expected a JSON list of problems or a dict category → list", path=path
        )


def _fail(msg: str, path: Path, line: int | None, where: str, field: str) -> OpcircuitsError:
    return OpcircuitsError(f"{where}{msg}", path=path, line=line, field=field)


def normalize_record(
    raw: Any,
    *,
    path: Path,
    line: int | None = None,
    where: str = "",
    category: str | None = None,
) -> dict[str, Any]:
    """One record in the contract's shape; missing derived fields are rebuilt from `answer`."""
    if not isinstance(raw, Mapping):
        raise _fail(f"expected a JSON object, got {type(raw).__name__}", path, line, where, "")
    for name in ("id", "question", "answer"):
        if name not in raw:
            raise _fail("missing field", path, line, where, name)
        if not isinstance(raw[name], str):
            raise _fail(
                f"expected a string, got {type(raw[name]).__name__}", path, line, where, name
            )
        if name != "id":
            check_text_length(raw[name], name, path=path, line=line, where=where)
    rec: dict[str, Any] = {"id": raw["id"]}
    split = raw.get("split")
    if split is None:
        prefix = raw["id"].rpartition("_")[0]
        if prefix not in ("test", "train"):
            raise _fail(
                "missing, and the id does not say it (test_N / train_N)", path, line, where, "split"
            )
        split = prefix
    rec["split"] = split
    rec["question"] = raw["question"]
    rec["answer"] = raw["answer"]
    if "final_answer" in raw and "final_value" in raw:
        value = raw["final_value"]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise _fail(f"expected a number, got {value!r}", path, line, where, "final_value")
        rec["final_answer"], rec["final_value"] = str(raw["final_answer"]), value
        check_text_length(rec["final_answer"], "final_answer", path=path, line=line, where=where)
    else:
        try:
            rec["final_answer"], rec["final_value"] = parse_final_answer(raw["answer"])
        except OpcircuitsError as exc:
            raise _fail(exc.message, path, line, where, "answer") from exc
    rec["steps"] = _steps(raw, path, line, where)
    category = category or raw.get("category") or raw.get("operation_type")
    if category is not None:
        if category not in _KNOWN_CATEGORIES:
            raise _fail(f"unknown category {category!r}", path, line, where, "category")
        rec["category"] = category
    if "n_steps" in raw:
        if not isinstance(raw["n_steps"], int) or isinstance(raw["n_steps"], bool):
            raise _fail(
                f"expected an integer, got {raw['n_steps']!r}", path, line, where, "n_steps"
            )
        rec["n_steps"] = raw["n_steps"]
    if "operators" in raw:
        ops = raw["operators"]
        if not isinstance(ops, Mapping) or any(
            not isinstance(n, int) or isinstance(n, bool) for n in ops.values()
        ):
            raise _fail("expected a dict operator → count", path, line, where, "operators")
        rec["operators"] = {s: ops.get(s, 0) for s in OPERATOR_SYMBOLS}
    for name in PAIR_FIELDS:  # a synthetic problem's counterfactual link (data/synth/)
        value = raw.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise _fail(f"expected a string or integer, got {value!r}", path, line, where, name)
        rec[name] = value
    return rec


def _steps(raw: Mapping[str, Any], path: Path, line: int | None, where: str) -> list[dict]:
    steps = raw.get("steps")
    if steps is None:
        return extract_steps(raw["answer"])
    ok = isinstance(steps, list) and all(
        isinstance(s, Mapping)
        and isinstance(s.get("expr"), str)
        and isinstance(s.get("result"), str)
        for s in steps
    )
    if not ok:
        raise _fail("expected a list of {expr, result} strings", path, line, where, "steps")
    return [{"expr": s["expr"], "result": s["result"]} for s in steps]


# --- raw rows of a problem source (training and evaluation data) ---------------------------------

Row = tuple[str, "int | None", dict[str, Any]]  # (file or hub address, line/row number, row)


def read_problem_rows(source: str | Path, split: str) -> tuple[list[Row], int]:
    """The raw rows of one split of a problem source, each with where it came from (for error
    messages), and the number of rows of other splits skipped.

    Sources: "hf" (GSM8K on the hub); a hub dataset id such as `zen-E/GSM8k-Aug` (through
    `datasets`); a folder holding `<split>.jsonl` or `<split>-*.parquet` (GSM8K's release); a
    JSONL, JSON (a list of objects) or parquet file. Rows that carry a `split` field (the problem
    records `opcircuits data download` writes hold test and train) are kept only for `split`.
    """
    text = str(source)
    path = Path(source)
    if text == "hf" or (not path.exists() and _is_hub_id(text)):
        hub = (HUB_ID, HUB_CONFIG) if text == "hf" else (text, None)
        rows = _hub_rows(*hub, split=split)
    elif path.is_dir():
        files = [path / f"{split}.jsonl"] if (path / f"{split}.jsonl").is_file() else []
        files = files or sorted(path.rglob(f"{split}-*.parquet"))
        if not files:
            raise OpcircuitsError(f"no {split}.jsonl or {split}-*.parquet in the folder", path=path)
        rows = [row for f in files for row in _file_rows(f)]
    elif path.is_file():
        rows = _file_rows(path)
    else:
        raise OpcircuitsError(
            "training data not found: a JSONL/JSON/parquet file, a GSM8K folder, 'hf' or a hub "
            "dataset id",
            path=path,
        )
    kept = [r for r in rows if r[2].get("split", split) == split]
    other = len(rows) - len(kept)
    if other:
        log.info(
            "%s: kept the %d rows of split %r, skipped %d of other splits",
            text,
            len(kept),
            split,
            other,
        )
    if not kept:
        raise OpcircuitsError(f"no rows of split {split!r}", path=text)
    return kept, other


def _is_hub_id(text: str) -> bool:
    """`owner/name` with no file suffix: how a hub dataset id differs from a missing path."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not Path(text).suffix and not text.startswith(".")


def _hub_rows(name: str, config: str | None, split: str) -> list[Row]:
    try:
        import datasets  # only on the hub path; local files need no network

        rows = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # offline, no such dataset or split: all mean "use a local copy"
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise OpcircuitsError(
            f"{name} is no local file or folder, and split {split!r} of it could not be loaded "
            f"from the hub ({reason}); give a local file"
        ) from exc
    return [(f"hf://{name}/{split}", i + 1, dict(r)) for i, r in enumerate(rows)]


def _file_rows(path: Path) -> list[Row]:
    """Rows of a JSONL, JSON (list of objects, or JSON lines) or parquet file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # local: only this source needs it

        try:
            table = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise OpcircuitsError(f"cannot read parquet: {exc}", path=path) from exc
        return [(str(path), i + 1, r) for i, r in enumerate(table)]
    if path.suffix == ".json" and _leading_char(path) == "[":
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise OpcircuitsError(f"not valid JSON: {exc.msg}", path=path, line=exc.lineno) from exc
        if not isinstance(items, list):
            raise OpcircuitsError("must hold a list of objects", path=path)
        bad = next((i for i, r in enumerate(items) if not isinstance(r, dict)), None)
        if bad is not None:
            raise OpcircuitsError(f"item {bad} is not a JSON object", path=path)
        return [(str(path), None, r) for r in items]
    return [(str(path), line, r) for line, r in read_jsonl_objects(path)]


def _leading_char(path: Path) -> str:
    """The first non-blank character of a file's first 4,096 (is it a JSON list?)."""
    with open(path, encoding="utf-8") as fh:
        return fh.read(4096).lstrip()[:1]
