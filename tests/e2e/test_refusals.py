"""What every command refuses, end to end through the command line (issue 13 items 2, 7-10):
folders holding files opcircuits did not write, outputs that are inputs, a full disk half-way,
bytes that are not UTF-8, an empty GSM8K copy. Each refusal is one line, exit code 2, and
leaves every file as it was."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from cli_runner import one_error_line, run_cli, tree

from opcircuits.store import write_store

CATS = ["pure_addition", "pure_multiplication", "mixed"]
FAST = ["--folds", "2", "--repeats", "1", "--permutations", "0", "--jobs", "1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A small store of random thoughts (any model's thoughts can be analysed)."""
    rng = np.random.default_rng(0)
    n = 24
    records = [
        {"id": f"test_{i}", "category": CATS[i % 3], "question": f"Q{i}: how many?", "n_steps": 2}
        for i in range(n)
    ]
    path = tmp_path_factory.mktemp("stores") / "store"
    write_store(path, rng.normal(size=(n, 2, 2, 8)), records, [1, 2], ["bot", "latent_1"])
    return path


@pytest.fixture
def never_open_the_store(monkeypatch):
    """Refusals must come before any computing: opening the store is the first step of it."""

    def fail(*args, **kwargs):
        raise AssertionError("the store was opened before the output was checked")

    monkeypatch.setattr("opcircuits.store.open_store", fail)


# --- analyze --------------------------------------------------------------------------------------


def test_analyze_out_a_folder_holding_a_foreign_file_is_refused_before_computing(
    store, tmp_path, never_open_the_store
):
    out = tmp_path / "analysis"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    code, _, err = run_cli("analyze", "--store", str(store), "--out", str(out), *FAST)
    assert code == 2
    line = one_error_line(err)
    assert str(out / "notes.txt") in line and "not written by opcircuits" in line
    assert tree(out) == {"notes.txt": b"my notes"}


def test_analyze_out_an_existing_file_is_refused_before_computing(
    store, tmp_path, never_open_the_store
):
    out = tmp_path / "report"
    out.write_text("a file")
    code, _, err = run_cli("analyze", "--store", str(store), "--out", str(out), *FAST)
    assert code == 2 and "exists and is not a folder" in one_error_line(err)
    assert out.read_text() == "a file"


def test_analyze_out_the_store_itself_is_refused(store, never_open_the_store):
    before = tree(store)
    code, _, err = run_cli("analyze", "--store", str(store), "--out", str(store), *FAST)
    assert code == 2 and "would overwrite the input --store" in one_error_line(err)
    assert tree(store) == before


def test_disk_full_while_report_html_is_written_leaves_the_previous_analysis(
    store, tmp_path, monkeypatch
):
    out = tmp_path / "analysis"
    code, _, err = run_cli("analyze", "--store", str(store), "--out", str(out), *FAST)
    assert code == 0, err
    before = tree(out)
    assert {"analysis_report.json", "ANALYSIS_SUMMARY.md", "report.html"} <= set(before)

    def full_at_the_html(write):
        def writer(self: Path, data, *args, **kwargs):
            if self.name.startswith(".report.html."):  # the HTML's temporary file
                raise OSError(errno.ENOSPC, "No space left on device")
            return write(self, data, *args, **kwargs)

        return writer

    monkeypatch.setattr(Path, "write_bytes", full_at_the_html(Path.write_bytes))
    monkeypatch.setattr(Path, "write_text", full_at_the_html(Path.write_text))
    code, _, err = run_cli(
        "analyze", "--store", str(store), "--out", str(out), "--seed", "1", *FAST
    )
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"error: {out / 'report.html'}: no space left on the disk (needs ")
    assert tree(out) == before  # not a mix of new JSON and figures with the old HTML
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analysis"]  # no scratch folder left


# --- extract, store import-legacy, new-base ------------------------------------------------------


def test_extract_out_a_store_holding_a_foreign_file_is_refused_before_loading(
    store, tmp_path, tiny_problems, monkeypatch
):
    import shutil

    target = tmp_path / "store"
    shutil.copytree(store, target)
    (target / "parts").mkdir()
    (target / "parts" / "precious.bin").write_bytes(b"\x00" * 10)
    before = tree(target)

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr("opcircuits.codi.checkpoint.load_codi", fail)
    code, _, err = run_cli("extract", "--data", str(tiny_problems), "--out", str(target))
    assert code == 2 and str(target / "parts" / "precious.bin") in one_error_line(err)
    assert tree(target) == before
    code, _, err = run_cli("extract", "--data", str(tiny_problems), "--out", str(tiny_problems))
    assert code == 2 and "would overwrite the input --data" in one_error_line(err)


def _legacy_json(path: Path, n: int = 6, scale: float = 1.0) -> Path:
    rng = np.random.default_rng(0)
    items = [
        {
            "id": f"test_{i}",
            "question": f"Tom has {i} apples. How many?",
            "answer": f"<<{i}+1={i + 1}>> #### {i + 1}",
            "operation_type": CATS[i % 3],
            "thoughts": {
                k: (scale * rng.normal(size=(6, 4))).round(3).tolist()
                for k in ("early", "middle", "late")
            },
        }
        for i in range(n)
    ]
    path.write_text(json.dumps(items))
    return path


def test_import_legacy_replaces_only_its_own_store_and_whole(tmp_path, monkeypatch):
    src = _legacy_json(tmp_path / "continuous_thoughts_x.json")
    out = tmp_path / "store"
    code, _, err = run_cli("store", "import-legacy", "--store", str(src), "--out", str(out))
    assert code == 0, err
    code, _, err = run_cli("store", "import-legacy", "--store", str(src), "--out", str(out))
    assert code == 2 and "a store already exists here" in one_error_line(err)
    before = tree(out)

    # A failure half-way (disk full at the first shard) leaves the previous store whole.
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    _legacy_json(src, scale=2.0)
    with monkeypatch.context() as m:
        m.setattr("opcircuits.store.writer.save_file", full)
        code, _, err = run_cli(
            "store", "import-legacy", "--store", str(src), "--out", str(out), "--overwrite"
        )
    assert code == 2
    assert one_error_line(err).startswith(f"error: {out / 'hidden-00000.safetensors'}: no space")
    assert tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "continuous_thoughts_x.json",
        "store",
    ]
    code, _, err = run_cli(
        "store", "import-legacy", "--store", str(src), "--out", str(out), "--overwrite"
    )
    assert code == 0 and tree(out) != before, err

    (out / "precious.bin").write_bytes(b"mine")
    before = tree(out)
    code, _, err = run_cli(
        "store", "import-legacy", "--store", str(src), "--out", str(out), "--overwrite"
    )
    assert code == 2 and str(out / "precious.bin") in one_error_line(err)
    assert tree(out) == before


def test_new_base_out_a_folder_holding_a_foreign_file_is_refused(tmp_path, gsm8k_dir):
    data = tmp_path / "train.jsonl"
    with open(gsm8k_dir / "train.jsonl", encoding="utf-8") as fh:
        data.write_text("".join(next(fh) for _ in range(40)), encoding="utf-8")
    out = tmp_path / "base"
    args = ["new-base", "--data", str(data), "--vocab-size", "300", "--hidden-size", "32"]
    code, _, err = run_cli(*args, "--out", str(out))
    assert code == 0, err
    assert {"config.json", "tokenizer.json"} <= set(tree(out))
    code, _, err = run_cli(*args, "--out", str(out), "--num-layers", "2")  # ours: replaced
    assert code == 0 and json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2

    (out / "weights.safetensors").write_bytes(b"trained for a week")
    before = tree(out)
    code, _, err = run_cli(*args, "--out", str(out))
    assert code == 2 and str(out / "weights.safetensors") in one_error_line(err)
    assert tree(out) == before
    code, _, err = run_cli(*args, "--out", str(tmp_path))
    assert code == 2 and "would overwrite the input --data" in one_error_line(err)


# --- data commands --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def problems(tmp_path_factory, gsm8k_dir) -> Path:
    """GSM8K's test split as problem records (download from the local copy)."""
    path = tmp_path_factory.mktemp("data") / "gsm8k_full.jsonl"
    code, _, err = run_cli("data", "download", "--data", str(gsm8k_dir), "--out", str(path))
    assert code == 0, err
    return path


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink", "hardlink"])
def test_classify_out_its_own_input_is_refused_and_the_input_kept(problems, tmp_path, spelling):
    src = tmp_path / "problems.jsonl"
    src.write_bytes(problems.read_bytes())
    out = {
        "same": str(src),
        "dot": str(tmp_path / "." / "problems.jsonl"),
        "symlink": str(tmp_path / "link.jsonl"),
        "hardlink": str(tmp_path / "hard.jsonl"),
    }[spelling]
    if spelling == "symlink":
        os.symlink(src, out)
    if spelling == "hardlink":
        os.link(src, out)
    code, _, err = run_cli(
        "data", "classify", "--data", str(src), "--out", out, "--per-category", "5"
    )
    assert code == 2 and "would overwrite the input --data" in one_error_line(err)
    assert src.read_bytes() == problems.read_bytes()


def test_prototype_out_its_own_input_is_refused(problems, tmp_path):
    sampled = tmp_path / "sampled.jsonl"
    code, _, err = run_cli(
        "data", "classify", "--data", str(problems), "--out", str(sampled), "--per-category", "10"
    )
    assert code == 0, err
    before = sampled.read_bytes()
    code, _, err = run_cli(
        "data", "prototype", "--data", str(sampled), "--out", str(sampled), "--per-category", "5"
    )
    assert code == 2 and "would overwrite the input --data" in one_error_line(err)
    assert sampled.read_bytes() == before


def test_bytes_that_are_not_utf8_in_a_problem_file_name_its_line(problems, tmp_path):
    lines = problems.read_bytes().splitlines(keepends=True)
    bad = tmp_path / "problems.jsonl"
    bad.write_bytes(b"".join(lines[:2]) + lines[2][:20] + b"\xe9" + lines[2][20:] + lines[3])
    code, _, err = run_cli("data", "classify", "--data", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2 and one_error_line(err).startswith(
        f"error: {bad}:3: not UTF-8 text: byte 0xe9"
    )
    legacy = tmp_path / "gsm8k_full.json"  # the earlier scripts' JSON list
    legacy.write_bytes(b'[{"id": "test_0", "question": "\xff", "answer": "#### 1"}]')
    code, _, err = run_cli("data", "classify", "--data", str(legacy), "--out", str(tmp_path / "o"))
    assert code == 2 and one_error_line(err).startswith(f"error: {legacy}:1: not UTF-8 text")
    assert not (tmp_path / "o").exists()


def _gsm8k_copy(gsm8k_dir: Path, folder: Path, train: bytes | None = None) -> Path:
    folder.mkdir()
    (folder / "test.jsonl").write_bytes((gsm8k_dir / "test.jsonl").read_bytes())
    if train is None:
        with open(gsm8k_dir / "train.jsonl", "rb") as fh:
            train = b"".join(next(fh) for _ in range(5))
    (folder / "train.jsonl").write_bytes(train)
    return folder


def test_a_gsm8k_copy_with_bytes_that_are_not_utf8_names_file_and_line(gsm8k_dir, tmp_path):
    with open(gsm8k_dir / "train.jsonl", "rb") as fh:
        first = [next(fh) for _ in range(2)]
    src = _gsm8k_copy(gsm8k_dir, tmp_path / "gsm8k", first[0] + first[1][:30] + b"\x80" + first[1])
    out = tmp_path / "full.jsonl"
    code, _, err = run_cli("data", "download", "--data", str(src), "--out", str(out))
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"error: {src / 'train.jsonl'}:2: not UTF-8 text: byte 0x80")
    assert not out.exists()


def test_an_empty_gsm8k_copy_is_an_error_not_an_empty_file(gsm8k_dir, tmp_path):
    src = _gsm8k_copy(gsm8k_dir, tmp_path / "gsm8k", train=b"")
    out = tmp_path / "full.jsonl"
    code, _, err = run_cli("data", "download", "--data", str(src), "--out", str(out))
    assert code == 2 and f"no train problems in {src / 'train.jsonl'}" in one_error_line(err)
    (src / "test.jsonl").write_bytes(b"\n")
    code, _, err = run_cli("data", "download", "--data", str(src), "--out", str(out))
    assert code == 2 and "no test problems" in one_error_line(err)
    assert not out.exists()


def test_a_config_file_with_bytes_that_are_not_utf8_names_its_line(tmp_path):
    config = tmp_path / "experiment.toml"
    config.write_bytes(b'[run]\nmode = "prototype"\nout = "r\xe9s"\n')
    code, _, err = run_cli("run", "--config", str(config))
    assert code == 2
    assert one_error_line(err) == f"error: {config}:3: not UTF-8 text: byte 0xe9 at column 9"


def test_a_permission_error_anywhere_is_one_line_naming_the_file(tmp_path, monkeypatch):
    target = tmp_path / "full.jsonl"

    def denied(**kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(target))

    monkeypatch.setattr("opcircuits.data.gsm8k.download", denied)
    code, _, err = run_cli("data", "download", "--data", str(tmp_path), "--out", str(target))
    assert code == 2 and one_error_line(err) == f"error: {target}: permission denied"


def test_train_out_the_base_folder_is_refused_before_training(tmp_path, gsm8k_dir):
    """Training into its own base folder would overwrite the base's config and tokenizer."""
    data = tmp_path / "train.jsonl"
    with open(gsm8k_dir / "train.jsonl", encoding="utf-8") as fh:
        data.write_text("".join(next(fh) for _ in range(40)), encoding="utf-8")
    base = tmp_path / "base"
    code, _, err = run_cli(
        "new-base", "--data", str(data), "--vocab-size", "300", "--hidden-size", "32",
        "--num-layers", "1", "--out", str(base),
    )  # fmt: skip
    assert code == 0, err
    before = tree(base)
    code, _, err = run_cli(
        "train", "--base", str(base), "--data", str(data), "--from-scratch", "--lora-r", "0",
        "--max-steps", "1", "--out", str(base),
    )  # fmt: skip
    assert code == 2 and "would overwrite the input --base" in one_error_line(err), err
    assert tree(base) == before


def test_evaluate_out_its_problem_file_is_refused_before_loading(tmp_path, gsm8k_dir):
    data = tmp_path / "test.jsonl"
    with open(gsm8k_dir / "test.jsonl", encoding="utf-8") as fh:
        data.write_text("".join(next(fh) for _ in range(3)), encoding="utf-8")
    before = data.read_bytes()
    code, _, err = run_cli("evaluate", "--model", "demo", "--data", str(data), "--out", str(data))
    assert code == 2 and "would overwrite the input --data" in one_error_line(err), err
    assert data.read_bytes() == before
