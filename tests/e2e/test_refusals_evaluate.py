"""What `opcircuits evaluate --out` refuses (issue 25 items 1 and 7): every file the command reads
is an input, so the result may not replace or join the checkpoint's files (the installed presets'
folders included), nor a problem folder's; an existing folder or someone's file at --out is an
error before any model is loaded. Each refusal is one line, exit code 2, every file kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_runner import one_error_line, run_cli, tree

from opcircuits.codi.config import demo_dir


@pytest.fixture
def never_load(monkeypatch):
    """A refusal comes before the model is loaded (and so before anything is computed)."""

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr("opcircuits.codi.checkpoint.load_codi", fail)


@pytest.fixture
def problems(tmp_path, gsm8k_dir) -> Path:
    data = tmp_path / "test.jsonl"
    with open(gsm8k_dir / "test.jsonl", encoding="utf-8") as fh:
        data.write_text("".join(next(fh) for _ in range(2)), encoding="utf-8")
    return data


def _evaluate(model: str, data: Path, out: Path | str) -> tuple[int, str, str]:
    return run_cli(
        "evaluate", "--model", model, "--data", str(data), "--out", str(out),
        "--device", "cpu", "--num-latent", "0", "--no-teacher", "--max-new-tokens", "4",
    )  # fmt: skip


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "evaluation.json"])
def test_evaluate_out_inside_the_checkpoint_folder_is_refused(tmp_path, problems, never_load, name):
    """The attack: `--model DIR --out DIR/model.safetensors` replaced the weights with the JSON
    (a new file there would join the checkpoint the next load reads)."""
    model = tmp_path / "models" / "demo"
    shutil.copytree(demo_dir(), model)
    before = tree(model)
    code, _, err = _evaluate(str(model), problems, model / name)
    assert code == 2
    line = one_error_line(err)
    assert "would be written inside the input --model" in line and str(model / name) in line
    assert tree(model) == before
    # the same folder spelled through a symlink, and the folder holding the checkpoint
    link = tmp_path / "link"
    link.symlink_to(model)
    code, _, err = _evaluate(str(model), problems, link / name)
    assert code == 2 and "inside the input --model" in one_error_line(err)
    code, _, err = _evaluate(str(model), problems, model.parent)
    assert code == 2 and "would overwrite the input --model" in one_error_line(err)
    assert tree(model) == before


@pytest.mark.parametrize("preset", ["demo", "demo-arith"])
def test_evaluate_out_inside_an_installed_preset_is_refused(problems, never_load, preset):
    """With `--model demo` the checkpoint folder is inside the installed package."""
    folder = demo_dir(preset)
    before = tree(folder)
    for out in (folder / "model.safetensors", folder / "acc.json"):
        code, _, err = _evaluate(preset, problems, out)
        assert code == 2 and "would be written inside the input --model" in one_error_line(err)
    assert tree(folder) == before


def test_evaluate_out_inside_the_problem_folder_is_refused(tmp_path, problems, never_load):
    """`--data FOLDER` reads FOLDER/test.jsonl: `--out FOLDER/test.jsonl` would replace it."""
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    shutil.copy(problems, folder / "test.jsonl")
    before = tree(folder)
    code, _, err = _evaluate("demo", folder, folder / "test.jsonl")
    assert code == 2 and "would be written inside the input --data" in one_error_line(err)
    assert tree(folder) == before


def test_evaluate_out_a_folder_or_someone_elses_file_is_refused_before_loading(
    tmp_path, problems, never_load
):
    folder = tmp_path / "results"
    folder.mkdir()
    code, _, err = _evaluate("demo", problems, folder)
    assert code == 2 and "exists and is a folder" in one_error_line(err)
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "notes"}')
    code, _, err = _evaluate("demo", problems, notes)
    assert code == 2 and "is not an `opcircuits evaluate` result" in one_error_line(err)
    assert notes.read_text() == '{"my": "notes"}'
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = _evaluate("demo", problems, blocker / "acc.json")
    assert code == 2 and "cannot be written inside it" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a-file", "notes.json", "results", "test.jsonl",
    ]  # fmt: skip


def test_evaluate_replaces_its_own_earlier_result(tmp_path, problems):
    out = tmp_path / "acc.json"
    code, _, err = _evaluate("demo", problems, out)
    assert code == 0, err
    first = json.loads(out.read_text())
    assert first["n_problems"] == 2
    code, _, err = _evaluate("demo", problems, out)
    assert code == 0, err
    assert json.loads(out.read_text())["answers"] == first["answers"]
