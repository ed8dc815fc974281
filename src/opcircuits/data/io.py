"""Reading problem files: our JSONL, and the earlier scripts' JSON (a list, or category → list).

Every record comes back in one shape (README, "Problem records"):
fields missing from legacy files are derived from `answer` (final answer, value, steps) and `id`
(split); a legacy category comes from the dict key, or a `category` / `operation_type` field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from opcircuits.data.annotations import CATEGORIES, OPERATOR_SYMBOLS, UNCLASSIFIED, extract_steps
from opcircuits.data.gsm8k import parse_final_answer, read_jsonl_objects
from opcircuits.errors import OpcircuitsError
from opcircuits.files import read_text, text_lines

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
# partner (same `pair_id`) and the step that differs, so sampled files can still be patched.
PAIR_FIELDS: tuple[str, ...] = ("pair_id", "changed_step")


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
    for lineno, obj in read_jsonl_objects(path):
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
    for name in PAIR_FIELDS:  # a synthetic problem's counterfactual link (data/synth.py)
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
