"""Extraction end to end: CLI → store, resume after kill -9, two-process scale-out, errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate_cmd import accelerate_launch
from typer.testing import CliRunner

from opcircuits.cli import app
from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.latent import extract_number, run_batch
from opcircuits.data.annotations import operator_symbols, step_operators, step_results
from opcircuits.data.io import read_problems
from opcircuits.errors import OpcircuitsError
from opcircuits.extract import ExtractOptions, extract, number_text
from opcircuits.store import open_store

torch.set_num_threads(1)  # the subprocesses get OMP_NUM_THREADS=1: same numerics, same bytes


def _model_args(tiny) -> list[str]:
    return ["--checkpoint", str(tiny.checkpoint), "--base", str(tiny.base), "--device", "cpu"]


def _options(tiny, problems, out, **kw) -> ExtractOptions:
    kw = {"layers": "0,2,4", "batch_size": 4, "shard_size": 8, "max_new_tokens": 8, **kw}
    return ExtractOptions(
        dataset=problems,
        out=out,
        checkpoint=tiny.checkpoint,
        base=str(tiny.base),
        device="cpu",
        **kw,
    )


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _same_store(a: Path, b: Path) -> None:
    sa, sb = open_store(a), open_store(b)
    assert np.array_equal(sa.hidden(), sb.hidden())
    assert np.array_equal(sa.latent_inputs(), sb.latent_inputs())
    assert sa.records.equals(sb.records)
    shards = sorted(p.name for p in a.glob("hidden-*.safetensors"))
    assert shards == sorted(p.name for p in b.glob("hidden-*.safetensors"))
    for name in [*shards, "records.parquet"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    drop = {"created", "dataset"}
    ma = {k: v for k, v in sa.manifest.items() if k not in drop}
    assert ma == {k: v for k, v in sb.manifest.items() if k not in drop}


def test_cli_extract_writes_the_store_the_model_computes(tiny_llama, tiny_problems, tmp_path):
    out = tmp_path / "store"
    args = [
        "extract",
        "--dataset",
        str(tiny_problems),
        "--out",
        str(out),
        "--layers",
        "0,2,4",
        "--batch-size",
        "5",
        "--shard-size",
        "10",
        "--max-new-tokens",
        "8",
        "--store-dtype",
        "float32",
        "--top-k",
        "3",
        *_model_args(tiny_llama),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    store = open_store(out)
    problems = read_problems(tiny_problems)
    m = store.manifest
    assert m["complete"] and m["n_problems"] == 24 and m["layers"] == [0, 2, 4]
    assert store.positions == ["bot"] + [f"latent_{k}" for k in range(1, 7)]
    assert m["num_latent"] == 6 and m["hidden_size"] == 64 and m["base"] == str(tiny_llama.base)
    assert len(m["weights_sha256"]) == 64 and len(m["dataset_sha256"]) == 64

    model, tok = load_codi(tiny_llama.checkpoint, base=tiny_llama.base, device="cpu")
    ref = run_batch(
        model, tok, [p["question"] for p in problems], layers=[0, 2, 4], max_new_tokens=8, top_k=3
    )
    assert store.hidden().shape == (24, 7, 3, 64)
    assert np.abs(store.hidden() - ref.hidden.numpy()).max() <= 1e-4
    assert np.abs(store.latent_inputs() - ref.latent_inputs.numpy()).max() <= 1e-4
    assert np.array_equal(
        store.hidden(positions=["latent_6"], layers=[4])[:, 0, 0], store.hidden()[:, 6, 2]
    )

    rec = store.records
    assert list(rec["id"]) == [p["id"] for p in problems]
    assert list(rec["gold"]) == [float(p["final_value"]) for p in problems]
    assert [list(x) for x in rec["ops_used"]] == [operator_symbols(p) for p in problems]
    # each step's operator where every step has one (GSM8K: some steps combine several)
    step_ops = [None if x is None else list(x) for x in rec["step_ops"]]
    assert step_ops == [step_operators(p) for p in problems]
    assert any(x is None for x in step_ops) and any(x is not None for x in step_ops)
    # each step's result, and the first token of its text under the model's tokenizer
    results = [None if x is None else list(x) for x in rec["step_results"]]
    assert results == [step_results(p) for p in problems] and all(r for r in results)
    for res, ids, spaced in zip(
        results, rec["step_result_ids"], rec["step_result_space_ids"], strict=True
    ):
        assert list(ids) == [tok.encode(number_text(v), add_special_tokens=False)[0] for v in res]
        want = [tok.encode(" " + number_text(v), add_special_tokens=False)[0] for v in res]
        assert list(spaced) == want
    assert set(rec["category"]) <= {"pure_addition", "pure_multiplication", "mixed", "unclassified"}
    for i, row in rec.iterrows():
        assert len(row["lens_top_ids"]) == 7 and all(len(x) == 3 for x in row["lens_top_ids"])
        assert [list(x) for x in row["lens_top_ids"]] == ref.lens_ids[i].tolist()
        assert len(row["lens_top_tokens"][0]) == 3
        # the lens at every stored layer: the last (4 = the model's blocks) is the lens above
        per_layer = np.array([[list(x) for x in p] for p in row["lens_layer_top_ids"]])
        assert per_layer.shape == (7, 3, 3)
        assert per_layer[:, 2].tolist() == ref.lens_ids[i].tolist()
        want = extract_number(row["answer_text"])
        assert (row["predicted"] == want) or (want is None and np.isnan(row["predicted"]))
        assert row["correct"] == (want is not None and want == row["gold"])
    # an inner layer's lens is the head on the final norm of the stored state
    with torch.no_grad():
        h = torch.from_numpy(store.hidden()[:, :, 0])
        want = torch.softmax(model.lm_head(model.final_norm(h)), -1).topk(3).indices
    got = [[list(p[0]) for p in row] for row in rec["lens_layer_top_ids"]]
    assert got == want.tolist()
    # answers that hit --max-new-tokens before EOS are flagged, and counted in the manifest
    assert list(rec["answer_truncated"]) == ref.truncated
    assert m["n_answer_truncated"] == sum(ref.truncated) > 0


def test_a_question_beyond_the_model_positions_is_named_before_any_work(
    tiny_gpt2, tiny_problems, tmp_path
):
    problems = [json.loads(x) for x in tiny_problems.read_text().splitlines()]
    problems[5]["question"] += " 1" * 1100  # GPT-2 knows 1,024 positions
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))
    with pytest.raises(OpcircuitsError, match="too long") as err:
        extract(_options(tiny_gpt2, data, tmp_path / "s"))
    assert "test_5" in str(err.value) and "test_4" not in str(err.value)
    assert not (tmp_path / "s").exists()


def test_gpt2_all_layers_float16(tiny_gpt2, tiny_problems, tmp_path):
    out = extract(_options(tiny_gpt2, tiny_problems, tmp_path / "s", layers="all"))
    store = open_store(out)
    assert store.layers == [0, 1, 2, 3, 4] and store.manifest["store_dtype"] == "float16"
    assert store.hidden().shape == (24, 7, 5, 64)
    assert np.isfinite(store.hidden()).all()


def test_option_errors(tiny_llama, tiny_problems, tmp_path):
    with pytest.raises(OpcircuitsError, match=r"out of range.*0 \(embeddings\) \.\. 4"):
        extract(_options(tiny_llama, tiny_problems, tmp_path / "a", layers="2,5"))
    with pytest.raises(OpcircuitsError, match="at least 1") as err:
        _options(tiny_llama, tiny_problems, tmp_path / "b", batch_size=0)
    assert err.value.field == "batch_size"
    result = CliRunner().invoke(
        app,
        [
            "extract",
            "--dataset",
            str(tiny_problems),
            "--out",
            str(tmp_path / "c"),
            "--batch-size",
            "0",
        ],
    )
    assert result.exit_code != 0


def test_store_made_with_other_settings_is_never_mixed(tiny_llama, tiny_problems, tmp_path):
    out = tmp_path / "s"
    extract(_options(tiny_llama, tiny_problems, out, max_new_tokens=2))
    with pytest.raises(OpcircuitsError, match="layers"):
        extract(_options(tiny_llama, tiny_problems, out, layers="1,2", max_new_tokens=2))
    with pytest.raises(OpcircuitsError, match="max_new_tokens"):
        extract(_options(tiny_llama, tiny_problems, out, max_new_tokens=3))
    with pytest.raises(OpcircuitsError, match="merge"):
        extract(_options(tiny_llama, tiny_problems, out, max_new_tokens=2, merge=False))


def _cli(tiny, problems, out, *extra) -> list[str]:
    return [
        "-m",
        "opcircuits",
        "extract",
        "--dataset",
        str(problems),
        "--out",
        str(out),
        "--layers",
        "0,2,4",
        "--max-new-tokens",
        "8",
        *_model_args(tiny),
        *extra,
    ]


@pytest.mark.slow
def test_resume_after_kill_equals_an_uninterrupted_run(tiny_llama, tiny_problems, tmp_path):
    ref = extract(_options(tiny_llama, tiny_problems, tmp_path / "ref", batch_size=1, shard_size=2))
    out = tmp_path / "crash"
    cmd = [
        sys.executable,
        *_cli(
            tiny_llama,
            tiny_problems,
            out,
            "--batch-size",
            "1",
            "--shard-size",
            "2",
            "--max-new-tokens",
            "8",
        ),
    ]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "hidden-00000.safetensors").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False  # killed mid-run, not after the end
    done = sorted(out.glob("hidden-*.safetensors"))
    assert 1 <= len(done) < 12
    with pytest.raises(OpcircuitsError, match="resume"):
        open_store(out)

    # The same command again (in-process here, to save a start-up) finishes the store.
    extract(_options(tiny_llama, tiny_problems, out, batch_size=1, shard_size=2))
    _same_store(ref, out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.multiproc
def test_two_processes_equal_one(tiny_gpt2, tiny_problems, tmp_path):
    one = extract(_options(tiny_gpt2, tiny_problems, tmp_path / "one", shard_size=5))
    two = tmp_path / "two"
    launch = accelerate_launch(port=_free_port())
    cmd = [*launch, *_cli(tiny_gpt2, tiny_problems, two, "--batch-size", "4", "--shard-size", "5")]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    _same_store(one, two)
