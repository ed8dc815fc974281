"""Size limits of `run` and `extract` (issue 25 item 2): every count an option holds has a
maximum, and a problem's text a length limit, checked before anything is loaded, tokenized or
allocated; each refusal is one line naming the option (and the file and line it came from)."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
from cli_runner import one_error_line, run_cli

from opcircuits.data.io import MAX_CHARS, MAX_LINE_BYTES, read_problems
from opcircuits.errors import OpcircuitsError
from opcircuits.options import ExtractOptions, ImportLegacyOptions
from opcircuits.pipeline.config import RUN_GROUPS


def _is_int(annotation) -> bool:
    return annotation is int or (
        typing.get_origin(annotation) in (typing.Union, __import__("types").UnionType)
        and int in typing.get_args(annotation)
    )


def _bounded_classes():
    return {ExtractOptions, ImportLegacyOptions, *(group.cls for group in RUN_GROUPS)}


@pytest.mark.parametrize("cls", sorted(_bounded_classes(), key=lambda c: c.__name__))
def test_every_count_of_run_and_extract_has_a_maximum(cls):
    hints = typing.get_type_hints(cls)
    unbounded = []
    for f in dataclasses.fields(cls):
        count = _is_int(hints[f.name]) and "min" in f.metadata  # a count: has a least value
        listed = f.metadata.get("list") is int  # layer numbers
        if (count or listed or f.name in ("seed", "reinit", "jobs")) and "max" not in f.metadata:
            unbounded.append(f.name)
    # The data seed only seeds Python's `random` (any integer); synth's step counts are 2..6
    # (its own check) and its problem count is the run's 3 x per_category.
    allowed = {
        "ClassifyOptions": {"seed"},
        "PrototypeOptions": {"seed"},
        "SynthOptions": {"seed", "steps"},
    }
    assert set(unbounded) <= allowed.get(cls.__name__, set()), unbounded


@pytest.fixture
def problems(tmp_path) -> Path:
    path = tmp_path / "problems.jsonl"
    rows = [{"id": f"test_{i}", "question": f"Tom has {i} apples.", "answer": f"#### {i}"}
            for i in range(3)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def never_load_a_model(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("opcircuits.codi.checkpoint.load_codi", fail)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-new-tokens", "1000000000", "must be at most 4096, got 1000000000"),
        ("--batch-size", "1000000000000", "must be at most 4096"),
        ("--num-latent", "100000", "must be at most 100"),
        ("--layers", "4,1000000", "must be at most 1024, got 1000000"),
        ("--shard-size", "1000000000", "must be at most 100000"),
        ("--top-k", "100000000", "must be at most 1000"),
        ("--reinit", "18446744073709551616", "must be at most 4294967295"),
    ],
)
def test_extract_refuses_a_huge_count_before_loading(
    problems, tmp_path, never_load_a_model, flag, value, message
):
    out = tmp_path / "store"
    code, _, err = run_cli("extract", "--data", str(problems), "--out", str(out), flag, value)
    assert code == 2 and message in one_error_line(err)
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [
        ("--batch-size", "1000000000000", "extract.batch_size"),
        ("--per-category", "100000000", "data.per_category"),
        ("--prototype-per-category", "100000000", "data.prototype_per_category"),
        ("--permutations", "1000000000", "analyze.permutations"),
        ("--folds", "100000", "analyze.folds"),
        ("--intervene-bootstrap", "1000000000", "intervene.bootstrap"),
        ("--seed", "-1", "analyze.seed"),  # --seed seeds the analysis too: scikit-learn's range
    ],
)
def test_run_refuses_a_huge_count_before_writing(tmp_path, flag, value, field):
    out = tmp_path / "run"
    code, _, err = run_cli("run", "--out", str(out), flag, value)
    assert code == 2 and f"field '{field}': must be at" in one_error_line(err)
    assert not out.exists()


def test_a_huge_count_in_the_config_file_names_its_line(tmp_path):
    config = tmp_path / "experiment.toml"
    config.write_text("[run]\nmode = 'prototype'\n\n[analyze]\nfolds = 2\npermutations = 1e9\n")
    code, _, err = run_cli("run", "--config", str(config), "--out", str(tmp_path / "r"))
    assert code == 2 and "expected int, got float" in err  # 1e9 is a float in TOML
    config.write_text("[extract]\nlayers = [4, 8, 1000000]\n\n[analyze]\npermutations = 5000000\n")
    code, _, err = run_cli("run", "--config", str(config), "--out", str(tmp_path / "r"))
    assert code == 2
    assert f"{config}:2: field 'extract.layers': must be at most 1024" in one_error_line(err)
    config.write_text("[analyze]\nfolds = 2\npermutations = 5000000\n")
    code, _, err = run_cli("run", "--config", str(config), "--out", str(tmp_path / "r"))
    assert f"{config}:3: field 'analyze.permutations': must be at most 10000" in err
    assert not (tmp_path / "r").exists()


def test_extract_refuses_a_huge_question_before_loading_or_tokenizing(
    problems, tmp_path, never_load_a_model
):
    rows = problems.read_text().splitlines()
    big = json.loads(rows[1])
    big["question"] = "Tom has 3 apples. " * (MAX_CHARS["question"] // 10)
    rows[1] = json.dumps(big)
    problems.write_text("\n".join(rows) + "\n")
    code, _, err = run_cli("extract", "--data", str(problems), "--out", str(tmp_path / "s"))
    assert code == 2
    line = one_error_line(err)
    assert f"{problems}:2: field 'question': " in line
    assert f"more than the {MAX_CHARS['question']:,} a question may have" in line


def test_a_line_longer_than_a_record_may_be_is_refused_before_it_is_read_whole(
    tmp_path, monkeypatch
):
    path = tmp_path / "problems.jsonl"
    ok = json.dumps({"id": "test_0", "question": "q", "answer": "#### 1"})
    path.write_text(ok + "\n" + "[" * (MAX_LINE_BYTES * 3) + "\n")
    parsed: list[int] = []
    real = json.loads
    monkeypatch.setattr(json, "loads", lambda text, **kw: parsed.append(len(text)) or real(text))
    with pytest.raises(OpcircuitsError, match="line longer than 1,048,576 bytes") as info:
        read_problems(path)
    assert info.value.line == 2 and parsed == [len(ok) + 1]  # the long line never parsed
