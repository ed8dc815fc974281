"""What `data synth` and `data classify` refuse (issue 25 items 3, 4, 5 and 7): files beside the
output that no manifest of ours names (the partners file, the manifest, the output itself), a
count beyond its maximum before anything is allocated, ranges in which no problem exists before
any draw. Each refusal is one line, exit code 2, every file kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import one_error_line, run_cli


def _synth(out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli("data", "synth", "--n", "6", "--out", str(out), *extra)


# --- data synth: the files beside the output ----------------------------------------------------


@pytest.mark.parametrize("name", ["p.pairs.jsonl", "p.manifest.json", "p.jsonl"])
def test_synth_does_not_overwrite_a_users_file_beside_its_output(tmp_path, name):
    """The attack: `--out p.jsonl` replaced the user's own p.pairs.jsonl / p.manifest.json."""
    mine = tmp_path / name
    mine.write_text("my own file\n")
    code, _, err = _synth(tmp_path / "p.jsonl")
    assert code == 2
    line = one_error_line(err)
    assert str(mine) in line and "nothing was changed" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert mine.read_text() == "my own file\n"


def test_synth_rewrites_what_its_manifest_names_and_removes_its_stale_partners(tmp_path):
    out = tmp_path / "p.jsonl"
    code, _, err = _synth(out)
    assert code == 0, err
    first = out.read_bytes()
    code, _, err = _synth(out, "--seed", "1")  # ours: replaced
    assert code == 0, err
    assert out.read_bytes() != first
    # without partners the earlier ones go: beside the new problems they would be read as theirs
    code, _, err = _synth(out, "--seed", "2", "--no-pairs")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "p.manifest.json"]
    # a manifest of another kind of file does not make a partners file ours
    (tmp_path / "p.pairs.jsonl").write_text("mine\n")
    code, _, err = _synth(out)
    assert code == 2 and str(tmp_path / "p.pairs.jsonl") in one_error_line(err)
    assert (tmp_path / "p.pairs.jsonl").read_text() == "mine\n"
    (tmp_path / "folder.jsonl").mkdir()
    code, _, err = _synth(tmp_path / "folder.jsonl")
    assert code == 2 and "exists and is a folder" in one_error_line(err)


# --- data synth: counts and ranges ---------------------------------------------------------------


def test_synth_n_beyond_its_maximum_is_refused_before_anything_is_allocated(tmp_path, monkeypatch):
    """The attack: `--n 99999999999` was OOM-killed building its list of slots."""

    def fail(*args, **kwargs):
        raise AssertionError("the problems' slots were allocated before --n was checked")

    monkeypatch.setattr("opcircuits.data.synth.output._slots", fail)
    code, _, err = run_cli(
        "data", "synth", "--n", "99999999999", "--out", str(tmp_path / "s.jsonl")
    )
    assert code == 2 and "field 'n': must be at most" in one_error_line(err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "ranges",
    [
        ["--min-operand", "2", "--max-operand", "2", "--max-result", "4"],
        ["--min-operand", "2", "--max-operand", "2", "--max-result", "5", "--steps", "2"],
        ["--min-operand", "3", "--max-operand", "3", "--max-result", "6", "--steps", "2"],
    ],
)
def test_synth_ranges_without_a_problem_fail_before_any_draw(tmp_path, monkeypatch, ranges):
    """The attack: the draws spun through 40M tries (minutes) before saying so."""

    def fail(*args, **kwargs):
        raise AssertionError("problems were drawn before the ranges were checked")

    monkeypatch.setattr("opcircuits.data.synth.output.draw_plan", fail)
    code, _, err = run_cli("data", "synth", "--out", str(tmp_path / "s.jsonl"), *ranges)
    assert code == 2
    line = one_error_line(err)
    assert "exists within --min-operand" in line and "--max-result" in line
    assert list(tmp_path.iterdir()) == []


def test_narrow_ranges_that_hold_a_problem_still_generate(tmp_path):
    out = tmp_path / "s.jsonl"
    code, _, err = run_cli(
        "data", "synth", "--n", "6", "--out", str(out),
        "--min-operand", "2", "--max-operand", "3", "--max-result", "6", "--steps", "2",
    )  # fmt: skip
    assert code == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 6 and all(r["final_value"] <= 6 for r in rows)


# --- data classify -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def problems(tmp_path_factory, gsm8k_dir) -> Path:
    path = tmp_path_factory.mktemp("data") / "gsm8k_full.jsonl"
    code, _, err = run_cli("data", "download", "--data", str(gsm8k_dir), "--out", str(path))
    assert code == 0, err
    return path


def test_classify_does_not_overwrite_a_users_file_but_replaces_its_own(problems, tmp_path):
    out = tmp_path / "sampled.jsonl"
    out.write_text("my labels\n")
    args = ["data", "classify", "--data", str(problems), "--out", str(out), "--per-category", "5"]
    code, _, err = run_cli(*args)
    assert code == 2 and str(out) in one_error_line(err)
    assert out.read_text() == "my labels\n" and sorted(tmp_path.iterdir()) == [out]
    out.unlink()
    (tmp_path / "sampled.manifest.json").write_text("{}")  # not one of ours
    code, _, err = run_cli(*args)
    assert code == 2 and "is not an opcircuits manifest" in one_error_line(err)
    (tmp_path / "sampled.manifest.json").unlink()
    code, _, err = run_cli(*args)
    assert code == 0, err
    code, _, err = run_cli(*args[:-1], "6")  # its own output: replaced
    assert code == 0, err
    assert json.loads((tmp_path / "sampled.manifest.json").read_text())["counts"] == {
        "pure_addition": 6, "pure_multiplication": 6, "mixed": 6,
    }  # fmt: skip


def test_an_output_inside_a_file_is_one_line_before_any_work(problems, tmp_path):
    """`--out notes.txt/x.jsonl` failed only when writing, after all the work, with a traceback."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for args in (
        ["data", "synth", "--n", "6"],
        ["data", "classify", "--data", str(problems), "--per-category", "5"],
    ):
        code, _, err = run_cli(*args, "--out", str(notes / "x.jsonl"))
        assert code == 2 and f"{notes}: field 'out': is a file" in one_error_line(err)
    assert notes.read_text() == "mine"
