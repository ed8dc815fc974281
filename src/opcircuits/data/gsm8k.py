"""GSM8K: read the original release (hub, local JSONL or the hub's parquet) into problem records."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from opcircuits.data.annotations import extract_steps
from opcircuits.data.numbers import read_number, remove_commas
from opcircuits.errors import OpcircuitsError
from opcircuits.files import (
    check_own_outputs,
    manifest_path,
    refuse_same_files,
    text_lines,
    write_json_atomic,
    write_jsonl_atomic,
)

log = logging.getLogger(__name__)

HUB_ID = "openai/gsm8k"
HUB_CONFIG = "main"
# Test first, then train: the order (and so the ids) the earlier scripts used.
SPLITS: tuple[str, ...] = ("test", "train")
DEFAULT_OUT = Path("data/gsm8k_full.jsonl")
LOCAL_HINT = (
    "point --source at a local copy: a folder with GSM8K's train.jsonl and test.jsonl "
    "or the hub's parquet files, e.g. --source ../shared/data/gsm8k"
)


def parse_final_answer(
    answer: str, *, path: str | Path | None = None, line: int | None = None
) -> tuple[str, int | float]:
    """The text after `####` (commas removed) and its value (`data.numbers`); OpcircuitsError if
    it is no number."""
    if "####" not in answer:
        raise OpcircuitsError(
            "no '####' final answer in the solution", path=path, line=line, field="answer"
        )
    text = remove_commas(answer.rsplit("####", 1)[1].strip())
    value = read_number(text)
    if value is None:
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise OpcircuitsError(
            f"final answer {shown!r} after '####' is not a number",
            path=path,
            line=line,
            field="answer",
        )
    return text, value


def make_record(
    raw: Mapping[str, Any],
    *,
    split: str,
    index: int,
    path: str | Path | None = None,
    line: int | None = None,
) -> dict[str, Any]:
    """A problem record (README, "Problem records") from one original GSM8K row
    `{question, answer}`."""
    for name in ("question", "answer"):
        if name not in raw:
            raise OpcircuitsError("missing field", path=path, line=line, field=name)
        if not isinstance(raw[name], str):
            raise OpcircuitsError(
                f"expected a string, got {type(raw[name]).__name__}",
                path=path,
                line=line,
                field=name,
            )
    answer = raw["answer"]
    final_answer, final_value = parse_final_answer(answer, path=path, line=line)
    return {
        "id": f"{split}_{index}",
        "split": split,
        "question": raw["question"],
        "answer": answer,
        "final_answer": final_answer,
        "final_value": final_value,
        "steps": extract_steps(answer),
    }


def read_jsonl_objects(
    path: Path, *, max_bytes: int | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; malformed lines (bad JSON, bytes that are
    not UTF-8, longer than `max_bytes`) name file and line."""
    for lineno, text in text_lines(path, max_bytes=max_bytes):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OpcircuitsError(
                f"malformed JSON: {exc.msg} (column {exc.colno})", path=path, line=lineno
            ) from exc
        except ValueError as exc:  # an integer of more digits than Python converts
            raise OpcircuitsError(
                "malformed JSON: a number with too many digits to read", path=path, line=lineno
            ) from exc
        if not isinstance(obj, dict):
            raise OpcircuitsError(
                f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno
            )
        yield lineno, obj


def _find_parquet(folder: Path, split: str) -> list[Path]:
    """The hub's parquet shards of one split (`main/test-00000-of-00001.parquet`, ...)."""
    found = sorted(folder.rglob(f"{split}-*.parquet"))
    main = [p for p in found if HUB_CONFIG in p.relative_to(folder).parts[:-1]]
    if main:
        return main
    configs = {p.parent for p in found}
    if len(configs) > 1:
        names = ", ".join(sorted(str(c) for c in configs))
        raise OpcircuitsError(
            f"parquet files of several configs ({names}); point --source at one", path=folder
        )
    return found


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) of one parquet file; errors name the file and the row."""
    import pyarrow.parquet as pq  # local: only this source needs it

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise OpcircuitsError(f"cannot read parquet: {exc}", path=path) from exc
    yield from enumerate(rows, start=1)


def load_local(folder: str | Path) -> list[dict[str, Any]]:
    """All problems from a local copy: `{train,test}.jsonl`, else the hub's parquet files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OpcircuitsError(f"not a folder; {LOCAL_HINT}", path=folder)
    records: list[dict[str, Any]] = []
    for split in SPLITS:
        jsonl = folder / f"{split}.jsonl"
        if jsonl.is_file():
            sources = [(jsonl, read_jsonl_objects(jsonl))]
        else:
            shards = _find_parquet(folder, split)
            if not shards:
                raise OpcircuitsError(
                    f"no {split}.jsonl and no {split}-*.parquet here; {LOCAL_HINT}", path=folder
                )
            sources = [(shard, _parquet_rows(shard)) for shard in shards]
        index = 0  # ids count across shards, in shard order
        for path, rows in sources:
            for lineno, raw in rows:
                records.append(make_record(raw, split=split, index=index, path=path, line=lineno))
                index += 1
        if index == 0:  # an empty split would give a smaller, silently different dataset
            names = ", ".join(str(path) for path, _ in sources)
            raise OpcircuitsError(f"no {split} problems in {names}", path=folder)
    return records


def load_hub() -> list[dict[str, Any]]:
    """All problems from the Hugging Face hub; offline → OpcircuitsError saying what to do."""
    try:
        import datasets

        dsd = datasets.load_dataset(HUB_ID, HUB_CONFIG)
    except Exception as exc:  # no network, no cache, hub errors: all mean "use a local copy"
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise OpcircuitsError(
            f"could not load {HUB_ID} from the hub ({reason}); {LOCAL_HINT}"
        ) from exc
    records: list[dict[str, Any]] = []
    for split in SPLITS:
        where = f"hf://{HUB_ID}/{HUB_CONFIG}/{split}"
        records += [
            make_record(row, split=split, index=i, path=where, line=i + 1)
            for i, row in enumerate(dsd[split])
        ]
    return records


def download(source: str = "hf", out: Path = DEFAULT_OUT) -> Path:
    """Write all GSM8K problems (test then train, original order) as JSONL records to `out`.

    `source` is "hf" for the hub or a folder holding a local copy. Nothing is written on error.
    """
    if source != "hf":
        folder = Path(source)
        inputs = sorted(folder.glob("*.jsonl")) + sorted(folder.rglob("*.parquet"))
        refuse_same_files({"out": out}, {"--data": [folder, *inputs]})
    # An existing file is replaced only when our manifest beside it says we wrote it.
    check_own_outputs([Path(out), manifest_path(out)], manifest_path(out))
    records = load_hub() if source == "hf" else load_local(source)
    counts = {s: sum(r["split"] == s for r in records) for s in SPLITS}
    log.info(
        "read %d problems (%s)", len(records), ", ".join(f"{s}: {n}" for s, n in counts.items())
    )
    out = Path(out)
    write_jsonl_atomic(out, records)
    write_json_atomic(manifest_path(out), {"stage": "download", "options": {"out": out.name}})
    log.info("wrote %s", out)
    return out
