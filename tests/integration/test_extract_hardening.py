"""`extract` stopped half-way (issue 25): a disk that fills up is one line naming the shard and the
free space, exit code 2; SIGTERM is handled like Ctrl-C; no temporary file is left, a stale one
of a killed run is swept on resume, and the same command afterwards finishes the store exactly
as an uninterrupted run would."""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from safetensors import SafetensorError

from opcircuits.extract import ExtractOptions, extract
from opcircuits.store import open_store

torch.set_num_threads(1)


def _options(tiny, problems, out) -> ExtractOptions:
    return ExtractOptions(
        dataset=problems, out=out, checkpoint=tiny.checkpoint, base=str(tiny.base),
        device="cpu", layers="0,2", batch_size=4, shard_size=8, max_new_tokens=4,
    )  # fmt: skip


def _args(tiny, problems, out) -> list[str]:
    return [
        "extract", "--data", str(problems), "--out", str(out), "--checkpoint",
        str(tiny.checkpoint), "--base", str(tiny.base), "--device", "cpu", "--layers", "0,2",
        "--batch-size", "4", "--shard-size", "8", "--max-new-tokens", "4",
    ]  # fmt: skip


# What safetensors 0.x raises when the disk fills (seen on a 1 MB tmpfs), and a plain OSError.
FULL = {
    "safetensors": lambda: SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"
    ),
    "oserror": lambda: OSError(errno.ENOSPC, "No space left on device"),
}


@pytest.mark.parametrize("raised", sorted(FULL))
def test_a_full_disk_mid_extraction_is_one_line_and_the_rerun_finishes_the_store(
    tiny_llama, tiny_problems, tmp_path, monkeypatch, raised
):
    from safetensors.numpy import save_file

    ref = extract(_options(tiny_llama, tiny_problems, tmp_path / "ref"))
    out = tmp_path / "store"
    calls = []

    def fill_up(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # the second shard does not fit
            with open(filename, "wb") as fh:  # safetensors had begun writing it
                fh.write(b"partial")
            raise FULL[raised]()
        save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr("opcircuits.store.writer.save_file", fill_up)
    code, _, err = run_cli(*_args(tiny_llama, tiny_problems, out))
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and err.strip().endswith(lines[0]), err
    assert lines[0].startswith(f"error: {out / 'hidden-00001.safetensors'}: no space left")
    assert "needs " in lines[0] and " free)" in lines[0]
    assert sorted(p.name for p in out.glob("hidden-*")) == ["hidden-00000.safetensors"]
    assert not list(out.rglob(".*.tmp"))  # the partial shard is gone

    monkeypatch.setattr("opcircuits.store.writer.save_file", save_file)  # space again
    code, _, err = run_cli(*_args(tiny_llama, tiny_problems, out))
    assert code == 0, err
    a, b = open_store(ref), open_store(out)
    assert np.array_equal(a.hidden(), b.hidden()) and a.records.equals(b.records)
    for name in ("hidden-00000.safetensors", "hidden-00001.safetensors", "records.parquet"):
        assert (ref / name).read_bytes() == (out / name).read_bytes()


def _same(ref, out) -> None:
    a, b = open_store(ref), open_store(out)
    assert np.array_equal(a.hidden(), b.hidden()) and a.records.equals(b.records)
    for name in ("hidden-00000.safetensors", "hidden-00002.safetensors", "records.parquet"):
        assert (ref / name).read_bytes() == (out / name).read_bytes()


@pytest.mark.slow
def test_sigterm_mid_extraction_is_handled_like_ctrl_c_and_the_rerun_finishes(
    tiny_llama, tiny_problems, tmp_path
):
    # Batches of one: slow enough to be caught mid-way (and the same batches on resume).
    ref = extract(dataclasses.replace(_options(tiny_llama, tiny_problems, tmp_path / "ref"),
                                      batch_size=1))  # fmt: skip
    out = tmp_path / "store"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = _args(tiny_llama, tiny_problems, out)
    args[args.index("--batch-size") + 1] = "1"
    cmd = [sys.executable, "-m", "opcircuits", *args]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "hidden-00000.safetensors").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, err
    assert err.strip().endswith("interrupted; rerun the same command to resume")
    assert 1 <= len(list(out.glob("hidden-*.safetensors"))) < 3
    assert not list(out.rglob(".*.tmp"))

    code, _, err = run_cli(*args)
    assert code == 0, err
    _same(ref, out)


def test_a_stale_temporary_of_a_killed_extraction_is_swept_on_resume(
    tiny_llama, tiny_problems, tmp_path
):
    out = extract(_options(tiny_llama, tiny_problems, tmp_path / "store"))
    stale = out / ".hidden-00001.safetensors.k2x9a_01.tmp"  # a killed write, an hour ago
    stale.write_bytes(b"\0" * 1000)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh = out / ".records.parquet.q0w9e8r7.tmp"  # maybe another command's, being written
    fresh.write_bytes(b"x")
    before = {p.name: p.read_bytes() for p in out.glob("[!.]*") if p.is_file()}
    extract(_options(tiny_llama, tiny_problems, out))  # the same command again
    assert not stale.exists() and fresh.exists()
    assert {p.name: p.read_bytes() for p in out.glob("[!.]*") if p.is_file()} == before


@pytest.mark.parametrize("inside", ["checkpoint", "base", "model"])
def test_a_store_inside_the_model_folders_is_refused_before_loading(
    tiny_llama, tiny_problems, tmp_path, monkeypatch, inside
):
    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr("opcircuits.codi.checkpoint.load_codi", fail)
    args = _args(tiny_llama, tiny_problems, tmp_path / "unused")
    if inside == "model":  # a checkpoint folder given as --model
        i = args.index("--checkpoint")
        args[i : i + 2] = ["--model", str(tiny_llama.checkpoint)]
    folder = {"checkpoint": tiny_llama.checkpoint, "base": tiny_llama.base}.get(
        inside, tiny_llama.checkpoint
    )
    out = folder / "store"
    args[args.index("--out") + 1] = str(out)
    before = sorted(p.name for p in folder.iterdir())
    code, _, err = run_cli(*args)
    assert code == 2, err
    assert f"the output would be written inside the input --{inside} ({folder})" in err
    assert sorted(p.name for p in folder.iterdir()) == before
