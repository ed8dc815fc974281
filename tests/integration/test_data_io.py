"""Reading problem files: our JSONL and the earlier scripts' two JSON formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opcircuits.data.annotations import CATEGORIES
from opcircuits.data.gsm8k import load_local
from opcircuits.data.io import read_problems
from opcircuits.data.sampling import ClassifyOptions, PrototypeOptions, classify, prototype
from opcircuits.errors import OpcircuitsError
from opcircuits.files import write_jsonl_atomic


@pytest.fixture(scope="module")
def records(gsm8k_dir: Path) -> list[dict]:
    return load_local(gsm8k_dir)


@pytest.fixture(scope="module")
def legacy_list(records: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`gsm8k_full.json` as the earlier download script wrote it: a list of id/question/answer."""
    path = tmp_path_factory.mktemp("legacy") / "gsm8k_full.json"
    legacy = [{k: r[k] for k in ("id", "question", "answer", "split")} for r in records]
    path.write_text(json.dumps(legacy, indent=2), encoding="utf-8")
    return path


def test_jsonl_round_trip(records: list[dict], tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    write_jsonl_atomic(path, records)
    assert read_problems(path) == records


def test_legacy_list(legacy_list: Path, records: list[dict], tmp_path: Path) -> None:
    # Missing fields are derived from the answer; the result equals a fresh download.
    assert read_problems(legacy_list) == records
    # And classification of the legacy file gives the same bytes as of our JSONL.
    jsonl = tmp_path / "g.jsonl"
    write_jsonl_atomic(jsonl, records)
    a = classify(ClassifyOptions(in_path=legacy_list, out=tmp_path / "a.jsonl", per_category=30))
    b = classify(ClassifyOptions(in_path=jsonl, out=tmp_path / "b.jsonl", per_category=30))
    assert a.read_bytes() == b.read_bytes()


def test_legacy_category_dict(records: list[dict], tmp_path: Path) -> None:
    """`operation_samples_200.json`: category → list; category comes from the key."""
    by_id = {r["id"]: r for r in records}
    picks = {
        "pure_addition": ["test_1", "test_489", "train_2453"],
        "pure_multiplication": ["train_7390", "test_15", "test_20"],
        "mixed": ["test_0", "test_434", "test_589"],
    }
    legacy = {
        c: [
            {
                "id": i,
                "question": by_id[i]["question"],
                "answer": by_id[i]["answer"],
                "operation_type": "mixed",
            }
            for i in ids
        ]
        for c, ids in picks.items()
    }
    path = tmp_path / "operation_samples_200.json"
    path.write_text(json.dumps(legacy, indent=2), encoding="utf-8")
    got = read_problems(path)
    assert [(r["id"], r["category"]) for r in got] == [
        (i, c) for c, ids in picks.items() for i in ids
    ]
    assert [r["split"] for r in got][:2] == ["test", "test"]
    assert got[1]["steps"] == by_id["test_489"]["steps"]
    out = prototype(PrototypeOptions(in_path=path, out=tmp_path / "p.jsonl", per_category=2))
    with open(out, encoding="utf-8") as fh:
        proto = [json.loads(line) for line in fh]
    assert [r["category"] for r in proto] == [c for c in CATEGORIES for _ in range(2)]
    for r in proto:
        assert r["id"] in picks[r["category"]]
        assert r["n_steps"] == len(by_id[r["id"]]["steps"])


@pytest.mark.parametrize(
    ("content", "suffix", "line", "field", "words"),
    [
        (
            '{"id": "test_0", "question": "Q", "answer": "#### 1"}\n{"id": ',
            ".jsonl",
            2,
            None,
            "malformed JSON",
        ),
        ('{"id": "test_0", "answer": "#### 1"}\n', ".jsonl", 1, "question", "missing field"),
        ('{"question": "Q", "answer": "#### 1"}\n', ".jsonl", 1, "id", "missing field"),
        (
            '{"id": "test_0", "question": "Q", "answer": "no final"}\n',
            ".jsonl",
            1,
            "answer",
            "'####'",
        ),
        (
            '{"id": "test_0", "question": "Q", "answer": "#### 1"}\n'
            '{"id": "test_0", "question": "Q", "answer": "#### 2"}\n',
            ".jsonl",
            2,
            "id",
            "duplicate id",
        ),
        ('{"id": "x", "question": "Q", "answer": "#### 1"}\n', ".jsonl", 1, "split", "missing"),
        (
            '{"id": "test_0", "question": "Q", "answer": "#### 1", "category": "sums"}\n',
            ".jsonl",
            1,
            "category",
            "unknown category",
        ),
        (
            '{"id": "test_0", "question": "Q", "answer": "#### 1", "steps": "2+3"}\n',
            ".jsonl",
            1,
            "steps",
            "expected a list",
        ),
        (
            '[{"id": "test_0", "question": "Q", "answer": "#### x"}]',
            ".json",
            None,
            "answer",
            "item 0: ",
        ),
        ('{"additions": []}', ".json", None, "category", "unknown category key"),
        ('{"mixed": [{"id": "test_0", "question": "Q"}]}', ".json", None, "answer", "mixed[0]: "),
        ('[{"id": "test_0",\n "question": ]', ".json", 2, None, "malformed JSON"),
        ("", ".jsonl", None, None, "no problems"),
    ],
)
def test_bad_problem_files(
    tmp_path: Path, content: str, suffix: str, line: int | None, field: str | None, words: str
) -> None:
    path = tmp_path / f"problems{suffix}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(OpcircuitsError) as err:
        read_problems(path)
    exc = err.value
    assert exc.path == str(path) and exc.line == line and exc.field == field
    assert words in str(exc)
    # Classify on it fails the same way and leaves nothing behind.
    out = tmp_path / "out" / "s.jsonl"
    with pytest.raises(OpcircuitsError):
        classify(ClassifyOptions(in_path=path, out=out))
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(OpcircuitsError, match="no such file"):
        read_problems(tmp_path / "nope.jsonl")
