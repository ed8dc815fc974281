"""What `opcircuits run` refuses before its first write (issue 25): a folder that is not a run
directory of ours, a file in the way of a later stage, an output that is or lies inside an
input, a store overlapping the run directory, a link to nothing in the GSM8K folder. Each
refusal is one line, exit code 2, and leaves every file (dotfiles included) as it was."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from cli_runner import run_cli


def snapshot(folder: Path) -> dict[str, bytes | str | None]:
    """Every entry under `folder`, hidden ones too: a file's bytes, a link's target, a folder."""
    found: dict[str, bytes | str | None] = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[name] = "-> " + os.readlink(path)
        elif path.is_file():
            found[name] = path.read_bytes()
        else:
            found[name] = None
    return found


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("INFO ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def gsm8k_copy(gsm8k_dir, tmp_path) -> Path:
    """A GSM8K folder of our own (the tests add files to it)."""
    src = tmp_path / "gsm8k"
    src.mkdir()
    for name in ("train.jsonl", "test.jsonl"):
        shutil.copy(gsm8k_dir / name, src / name)
    return src


@pytest.fixture
def no_stage_runs(monkeypatch):
    """Every refusal here comes before the first stage: running one is a failure of the test."""

    def fail(*args, **kwargs):
        raise AssertionError("a stage ran before the refusal")

    monkeypatch.setattr("opcircuits.data.gsm8k.download", fail)


def refused(args: list[str], watched: Path) -> str:
    """Run `opcircuits ARGS`; it must fail with one line and leave `watched` as it was."""
    before = snapshot(watched)
    code, _, err = run_cli(*args)
    assert code == 2, err
    line = one_error_line(err)
    assert snapshot(watched) == before
    return line


USER_RECORD = b'{"experiment": "mine", "notes": "hand-written"}\n'
USER_CONFIG = b"# my own config\n[model]\nname = 'x'\n"


@pytest.mark.parametrize(
    "files",
    [
        # the case: both were overwritten before the data file stopped the run
        {"run.json": USER_RECORD, "config.resolved.toml": USER_CONFIG,
         "data/gsm8k_full.jsonl": b'{"id": "mine"}\n'},
        {"run.json": USER_RECORD},
        {"run.json": b"not json at all"},
        {"config.resolved.toml": USER_CONFIG},
        {"run.log": b"my log\n", "notes.txt": b"x"},
    ],
    ids=["run-json-and-config-and-data", "run-json", "not-json", "config-alone", "run-log"],
)  # fmt: skip
def test_a_folder_that_is_not_a_run_directory_of_ours_is_refused_untouched(
    gsm8k_copy, tmp_path, no_stage_runs, files
):
    out = tmp_path / "mine"
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    line = refused(["run", "--source", str(gsm8k_copy), "--out", str(out)], out)
    first = "run.json" if "run.json" in files else next(iter(files))
    assert f"{out / first}: " in line and "nothing was changed" in line


def test_the_record_a_run_writes_is_recognised_as_ours():
    from opcircuits.pipeline.preflight import is_run_record

    record = {
        "mode": "prototype",
        "command": ["opcircuits", "run"],
        "status": "interrupted",
        "versions": {"opcircuits": "0.1.0", "python": "3.11"},
        "started": "2026-01-01T00:00:00+00:00",
    }
    assert is_run_record(record)
    assert not is_run_record({**record, "status": "done?"})
    assert not is_run_record({k: v for k, v in record.items() if k != "versions"})
    assert not is_run_record(json.loads(USER_RECORD))


def test_a_file_in_the_way_of_the_last_stage_stops_the_run_before_the_first(
    gsm8k_copy, tmp_path, no_stage_runs
):
    out = tmp_path / "run"
    notes = out / "analysis" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("my notes")
    line = refused(["run", "--source", str(gsm8k_copy), "--out", str(out)], out)
    assert "stage 'analyze' failed:" in line and f"{notes}: not written by opcircuits" in line
    assert sorted(p.name for p in out.iterdir()) == ["analysis"]  # no run.json, no .lock


def test_a_stage_record_that_is_not_ours_is_refused(gsm8k_copy, tmp_path, no_stage_runs):
    out = tmp_path / "run"
    (out / "stages").mkdir(parents=True)
    (out / "stages" / "classify.json").write_text('{"my": "notes"}')
    line = refused(["run", "--source", str(gsm8k_copy), "--out", str(out)], out)
    assert f"{out / 'stages' / 'classify.json'}: not a stage record of opcircuits" in line


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A local checkpoint folder (never loaded: the refusals come first)."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"weights")
    return ckpt


@pytest.mark.parametrize(
    "where",
    ["out-inside-source", "out-is-source", "store-inside-checkpoint", "out-inside-checkpoint"],
)
def test_an_output_inside_an_input_folder_is_refused(
    gsm8k_copy, checkpoint, tmp_path, no_stage_runs, where
):
    out, extra = tmp_path / "run", []
    if where == "out-inside-source":
        out = gsm8k_copy / "run"
    elif where == "out-is-source":
        out = gsm8k_copy
    elif where == "store-inside-checkpoint":
        extra = ["--store", str(checkpoint / "store")]
    else:
        out = checkpoint / "run"
    args = ["run", "--source", str(gsm8k_copy), "--out", str(out), "--checkpoint",
            str(checkpoint), *extra]  # fmt: skip
    before = snapshot(tmp_path)
    code, _, err = run_cli(*args)
    assert code == 2
    line = one_error_line(err)
    assert "inside the input" in line or "would overwrite the input" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("store", ["run-dir", "parent", "data", "analysis-inside"])
def test_a_store_overlapping_the_run_directory_is_refused(
    gsm8k_copy, tmp_path, no_stage_runs, store
):
    out = tmp_path / "runs" / "r1"
    given = {
        "run-dir": out,
        "parent": tmp_path / "runs",
        "data": out / "data",
        "analysis-inside": out / "analysis" / "store",
    }[store]
    args = ["run", "--source", str(gsm8k_copy), "--out", str(out), "--store", str(given)]
    before = snapshot(tmp_path)
    code, _, err = run_cli(*args)
    assert code == 2
    assert "field 'run.store': the store would overlap" in one_error_line(err)
    assert snapshot(tmp_path) == before


def test_analysis_only_into_the_store_it_reads_is_refused(tmp_path):
    import numpy as np

    from opcircuits.store import write_store

    store = tmp_path / "store"
    records = [{"id": f"t{i}", "category": "mixed"} for i in range(6)]
    write_store(store, np.zeros((6, 1, 1, 4)), records, [1], ["bot"])
    for out in (store, store / "analysis-run"):
        line = refused(
            ["run", "--mode", "analysis_only", "--store", str(store), "--out", str(out)], tmp_path
        )
        assert "inside the input run.store" in line


@pytest.mark.parametrize("target", ["gone.jsonl", "old"], ids=["dangling", "loop"])
def test_a_link_to_nothing_in_the_gsm8k_folder_is_named_before_any_write(
    gsm8k_copy, tmp_path, no_stage_runs, target
):
    (gsm8k_copy / "old").symlink_to(gsm8k_copy / target)
    out = tmp_path / "run"
    line = refused(["run", "--source", str(gsm8k_copy), "--out", str(out)], tmp_path)
    assert f"{gsm8k_copy / 'old'}: a symbolic link to nothing" in line
    assert "stage 'download' failed" in line
    assert not out.exists()


def test_a_rerun_sweeps_the_temporaries_a_killed_run_left_and_nothing_else(tmp_path):
    import time

    import numpy as np

    from opcircuits.store import write_store

    store = tmp_path / "store"
    records = [{"id": f"t{i}", "category": ["pure_addition", "mixed"][i % 2]} for i in range(12)]
    write_store(store, np.random.default_rng(0).normal(size=(12, 1, 1, 4)), records, [1], ["bot"])
    out = tmp_path / "run"
    stale = [
        out / ".run.json.a1b2c3d4.tmp",  # atomic_path's, killed mid-write
        out / "stages" / ".analyze.json.zz9_x8y7.tmp",
        out / ".analysis.k3j4h5g6.tmp" / "report.html",  # atomic_dir's scratch folder
        out / ".analysis.0f1e2d3c.old" / "report.html",  # the folder it was replacing
    ]
    kept = [out / ".my-notes.txt", out / "stages" / "notes.tmp"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
        os.utime(path, (time.time(), time.time()))  # fresh: the run directory is locked
    args = ["run", "--mode", "analysis_only", "--store", str(store), "--out", str(out),
            "--folds", "2", "--repeats", "1", "--permutations", "0", "--jobs", "1"]  # fmt: skip
    code, _, err = run_cli(*args)
    assert code == 0, err
    assert not any(p.exists() for p in stale)
    assert not list(out.glob(".analysis.*"))  # the scratch and old folders went whole
    assert all(p.read_text() == "x" for p in kept)
    assert "removed 4 temporary file(s)" in (out / "run.log").read_text()


@pytest.mark.parametrize(
    ("toml", "line", "field"),
    [
        ("[data]\nper_category = 10\nsource = 3\n", 3, "data.source"),  # a number: no folder
        ('[run]\nmode = "analysis_only"\nstore = "no-such-store"\n', 3, "run.store"),
    ],
)
def test_a_path_from_the_config_file_that_is_wrong_names_the_file_and_line(
    tmp_path, toml, line, field
):
    config = tmp_path / "experiment.toml"
    config.write_text(toml)
    out = tmp_path / "run"
    code, _, err = run_cli("run", "--config", str(config), "--out", str(out))
    assert code == 2
    assert one_error_line(err).startswith(f"error: {config}:{line}: field '{field}': ")
    assert "(from the config file)" in err and not out.exists()


def test_a_folder_where_the_run_writes_a_file_is_refused_before_any_write(
    gsm8k_copy, tmp_path, no_stage_runs
):
    out = tmp_path / "run"
    (out / "data" / "operation_samples_200.jsonl").mkdir(parents=True)
    line = refused(["run", "--source", str(gsm8k_copy), "--out", str(out)], out)
    assert "stage 'classify' failed:" in line
    assert f"{out / 'data' / 'operation_samples_200.jsonl'}: is a folder where" in line
