"""What `opcircuits train` and `new-base` refuse (issue 25 items 2, 6 and 7): an --out folder
holding the user's own files, a log that is not a training log, inputs inside the output, options
outside their natural bounds, layers the model does not have, a base whose heads do not divide
its width. Each refusal is one line, exit code 2, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import one_error_line, run_cli, tree

from opcircuits.codi.training.base import build_demo_base
from opcircuits.files import OWNED_LIST
from opcircuits.options import NewBaseOptions


@pytest.fixture(scope="module")
def data(tmp_path_factory, gsm8k_dir) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    with open(gsm8k_dir / "train.jsonl", encoding="utf-8") as fh:
        path.write_text("".join(next(fh) for _ in range(40)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory, data) -> Path:
    out = tmp_path_factory.mktemp("base") / "base"
    return build_demo_base(
        NewBaseOptions(
            out=out, data=str(data), vocab_size=300, hidden_size=32, num_layers=1, num_heads=2
        )
    )


def _train(base: Path, data: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(
        "train", "--base", str(base), "--data", str(data), "--from-scratch", "--lora-r", "0",
        "--prj-dim", "16", "--num-latent", "2", "--limit", "8", "--batch-size", "4",
        "--max-steps", "2", "--warmup-ratio", "0", "--threads", "1", "--out", str(out), *extra,
    )  # fmt: skip


def _steps(out: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()]


# --- the output folder ---------------------------------------------------------------------------


def test_train_out_a_folder_with_the_users_config_and_log_is_refused_before_any_write(
    base, data, tmp_path
):
    """The attack: the folder's own config.json was replaced and train_log.jsonl trimmed (a
    log that is not JSON gave a traceback after train_data.json was written into the folder)."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    (out / "train_log.jsonl").write_text("day 1: started the experiment\n")
    before = tree(out)
    code, _, err = _train(base, data, out)
    assert code == 2
    line = one_error_line(err)
    assert str(out / "config.json") in line and "not written by opcircuits" in line
    assert tree(out) == before
    (out / "config.json").unlink()  # the log alone is refused as well, and kept
    code, _, err = _train(base, data, out)
    assert code == 2 and str(out / "train_log.jsonl") in one_error_line(err)
    assert tree(out) == {"train_log.jsonl": b"day 1: started the experiment\n"}
    code, _, err = _train(base, data, out / "train_log.jsonl")
    assert code == 2 and "exists and is not a folder" in one_error_line(err)


def test_train_resumes_its_own_folder_and_checks_its_log_before_writing(base, data, tmp_path):
    out = tmp_path / "run"
    code, _, err = _train(base, data, out, "--stop-after", "1")
    assert code == 0, err
    owned = json.loads((out / OWNED_LIST).read_text())["files"]
    assert {"train_log.jsonl", "train_data.json", "last/training_state.json"} <= set(owned)
    log = (out / "train_log.jsonl").read_text()

    # a row that is not a log row, in a folder that is ours: one line naming it, nothing written
    (out / "train_log.jsonl").write_text("not json\n" + log)
    before = tree(out)
    code, _, err = _train(base, data, out)
    assert code == 2
    assert one_error_line(err).startswith(f"error: {out / 'train_log.jsonl'}:1: not a training")
    assert tree(out) == before
    (out / "train_log.jsonl").write_text(log + '{"step": 2, "elapsed')  # a kill mid-write

    # --base inside --out: the checkpoint swap would replace it
    code, _, err = _train(out / "last", data, out)
    assert code == 2 and "would overwrite the input --base" in one_error_line(err)

    # a folder written before the list of files existed resumes (its checkpoint is the record)
    (out / OWNED_LIST).unlink()
    code, _, err = _train(base, data, out)
    assert code == 0, err
    assert _steps(out) == [1, 2]  # the cut row dropped, each step logged once
    assert (out / "model.safetensors").is_file() and (out / OWNED_LIST).is_file()
    (out / "notes.txt").write_text("mine")
    code, _, err = _train(base, data, out)
    assert code == 2 and str(out / "notes.txt") in one_error_line(err)


# --- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, field",
    [
        (["--max-grad-norm", "-1"], "max_grad_norm"),  # a negative clip norm flips gradients
        (["--teacher-factor", "-1"], "teacher_factor"),
        (["--distill-factor", "-1"], "distill_factor"),
        (["--warmup-ratio", "2"], "warmup_ratio"),
        (["--lr", "-1"], "lr"),
        (["--lr", "0"], "lr"),
        (["--prj-dropout", "1.5"], "prj_dropout"),
        (["--prj-dropout", "1"], "prj_dropout"),
        (["--weight-decay", "-1"], "weight_decay"),
        (["--seed", "-1"], "seed"),
        (["--stop-after", "0"], "stop_after"),
        (["--lora-alpha", "0"], "lora_alpha"),
        (["--epochs", "-1"], "epochs"),
        (["--layers", "-1"], "layers"),
        (["--layers", "1,1"], "layers"),
        (["--layers", "99"], "layers"),  # the base has 1 block: layers 0..1
    ],
)
def test_train_options_beyond_their_bounds_are_refused_before_training(
    base, data, tmp_path, flags, field
):
    out = tmp_path / "run"
    code, _, err = _train(base, data, out, *flags)
    assert code == 2 and f"field '{field}'" in one_error_line(err), err
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, field",
    [
        (["--batch-size", "99999999"], "batch_size"),
        (["--num-latent", "100000"], "num_latent"),
        (["--max-tokens", "999999999"], "max_tokens"),
        (["--grad-accum", "99999999"], "grad_accum"),
    ],
)
def test_train_counts_beyond_their_maximum_are_refused_before_the_model_is_built(
    base, data, tmp_path, monkeypatch, flags, field
):
    """Such a count was taken as given and exhausted the machine's memory."""

    def fail(*args, **kwargs):
        raise AssertionError("the model was built before the counts were checked")

    monkeypatch.setattr("opcircuits.codi.training.loop._build_model", fail)
    out = tmp_path / "run"
    code, _, err = _train(base, data, out, *flags)
    assert code == 2 and f"field '{field}': must be at most" in one_error_line(err), err
    assert not out.exists()


def test_max_grad_norm_zero_clips_nothing(base, data, tmp_path):
    """0 is documented as "clips nothing": the run equals one with a clip no gradient reaches
    (a clip at 0 would zero every gradient instead)."""
    off, huge = tmp_path / "off", tmp_path / "huge"
    for out, norm in ((off, "0"), (huge, "1e9")):
        code, _, err = _train(base, data, out, "--max-grad-norm", norm, "--lr", "0.05")
        assert code == 0, err
    rows = [[json.loads(x) for x in (o / "train_log.jsonl").read_text().splitlines()]
            for o in (off, huge)]  # fmt: skip
    assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]]
    assert rows[0][1]["loss"] != rows[0][0]["loss"]


# --- new-base ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--hidden-size", "33", "--num-heads", "2"], "multiple of --num-heads"),
        (["--hidden-size", "30", "--num-heads", "2"], "must be even"),  # rotary: pairs of dims
        (["--hidden-size", "8192", "--num-layers", "256", "--intermediate-size", "65536"],
         "parameters"),
        (["--vocab-size", "9999999999"], "at most"),
    ],
)  # fmt: skip
def test_new_base_sizes_that_make_no_model_are_one_line(data, tmp_path, monkeypatch, flags, says):
    """33 / 2 heads was a traceback from transformers, 15 dimensions per head a base no forward
    pass can run (rotary embeddings), a huge vocabulary an abort inside the tokenizer trainer."""

    def fail(*args, **kwargs):
        raise AssertionError("the tokenizer was trained before the sizes were checked")

    monkeypatch.setattr("opcircuits.codi.training.base.train_tokenizer", fail)
    out = tmp_path / "base"
    code, _, err = run_cli("new-base", "--data", str(data), "--out", str(out), *flags)
    assert code == 2 and says in one_error_line(err)
    assert not out.exists()


def test_train_and_new_base_out_inside_a_file_is_one_line(base, data, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    code, _, err = _train(base, data, notes / "run")
    assert code == 2 and f"{notes}: field 'out': is a file" in one_error_line(err)
    code, _, err = run_cli("new-base", "--data", str(data), "--out", str(notes / "base"))
    assert code == 2 and f"{notes}: is a file" in one_error_line(err)
    assert notes.read_text() == "mine"
