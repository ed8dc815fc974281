"""Several processes, one output: the causal sweep under `accelerate launch` equals the
single-process sweep byte for byte, and an error on any rank of `extract` or `intervene` stops
every rank with its message instead of leaving the others waiting."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate_cmd import accelerate_launch

from opcircuits.intervene import intervene
from opcircuits.options import InterveneOptions

torch.set_num_threads(1)  # the subprocesses get OMP_NUM_THREADS=1: same numerics, same bytes

# A small sweep that still reads across ranks: mean (every problem's states), resample (a
# source in another part), patch (partners outside the parts), steer (a category direction).
SWEEP = dict(
    kinds="zero,mean,resample,patch,steer,truncate",
    sites="bot@0,latent_2@1",
    alphas="1",
    max_new_tokens=6,
    shard_size=2,
    batch_size=2,
    bootstrap=100,
)
TIMEOUT = 120  # seconds: a rank left waiting fails the test instead of hanging it


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    """Six synthetic problems (three parts of two) and their counterfactual partners."""
    from opcircuits.data.synth import SynthOptions, synth

    out = tmp_path_factory.mktemp("synth") / "s.jsonl"
    synth(SynthOptions(out=out, n=6, seed=1))
    return out


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_args(tiny) -> list[str]:
    return ["--checkpoint", str(tiny.checkpoint), "--base", str(tiny.base), "--device", "cpu"]


def _sweep_args(tiny, data: Path | str, out: Path) -> list[str]:
    args = ["intervene", "--data", str(data), "--out", str(out), *_model_args(tiny)]
    for key, value in SWEEP.items():
        args.append(f"--{key.replace('_', '-')}={value}")
    return args


@pytest.mark.multiproc
def test_two_processes_sweep_equals_one(tiny_gpt2, synth_data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    model = dict(checkpoint=tiny_gpt2.checkpoint, base=str(tiny_gpt2.base), device="cpu")
    intervene(InterveneOptions(data=synth_data, out=one, **model, **SWEEP))
    options = InterveneOptions(data=synth_data, out=two, **model, **SWEEP)
    cmd = [*accelerate_launch(port=_free_port()), "-m", "opcircuits"]
    run = subprocess.run(
        [*cmd, *_sweep_args(tiny_gpt2, synth_data, two)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # Parts 0, 2 on the main process, part 1 on the other: each computed by one rank only.
    assert "rank 0 of 2 computes parts 0, 2" in run.stderr
    assert "rank 1 of 2 computes parts 1" in run.stderr
    table = "interventions.parquet"
    assert (one / table).read_bytes() == (two / table).read_bytes()
    files = sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file())
    assert "parts/.manifest.lock" not in files  # removed once every rank was done
    for name in files:
        if name.startswith("parts/") or name.endswith(".png"):
            assert (one / name).read_bytes() == (two / name).read_bytes(), name
    # interventions.json: the same bytes but for the time each sweep was started.
    texts = [(d / "interventions.json").read_text() for d in (one, two)]
    stamps = [json.loads(t)["provenance"]["created"] for t in texts]
    a, b = (t.replace(f'"{c}"', '"…"', 1) for t, c in zip(texts, stamps, strict=True))
    assert a == b and a != texts[0]
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    assert ma["parts"] == mb["parts"] and len(mb["parts"]) == 3 and mb["complete"] is True
    # Parts do not depend on the number of processes: one process resumes the folder.
    (two / "parts" / "part-00001.parquet").unlink()
    intervene(options)
    assert (one / table).read_bytes() == (two / table).read_bytes()


def _record(out: Path, indices: list[int]) -> None:
    from opcircuits.files import read_json_object
    from opcircuits.intervene.parts import record_part

    manifest = read_json_object(out / "manifest.json")
    for i in indices:
        record_part(out, manifest, i, shared=True)


@pytest.mark.multiproc
def test_ranks_recording_parts_at_once_lose_none(tmp_path):
    """Two processes add their parts' sha256 to one manifest at the same time, 40 each."""
    import multiprocessing

    from opcircuits.files import sha256_file
    from opcircuits.intervene.parts import part_name

    (tmp_path / "parts").mkdir()
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "x", "parts": {}}))
    for i in range(80):
        (tmp_path / "parts" / part_name(i)).write_bytes(f"part {i}".encode())
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_record, args=(tmp_path, list(range(r, 80, 2)))) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT)
    assert [p.exitcode for p in procs] == [0, 0]
    parts = json.loads((tmp_path / "manifest.json").read_text())["parts"]
    assert parts == {
        part_name(i): sha256_file(tmp_path / "parts" / part_name(i)) for i in range(80)
    }


# --- an error on one rank stops all ---------------------------------------------------------------


def _launch_ranks(args: list[str], cwds: list[Path]) -> list[tuple[int, str]]:
    """Two processes started one by one with the rank variables a cluster's launcher sets (no
    agent that would kill the others), each in its own folder: (exit code, stderr) of each."""
    port = str(_free_port())
    procs = []
    for rank, cwd in enumerate(cwds):
        env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2",
               "RANK": str(rank), "LOCAL_RANK": str(rank)}  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "opcircuits", *args],
                cwd=cwd,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        errs = [p.communicate(timeout=TIMEOUT)[1] for p in procs]
        return [(p.returncode, err) for p, err in zip(procs, errs, strict=True)]
    except subprocess.TimeoutExpired:
        pytest.fail(f"a rank was still waiting after {TIMEOUT} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _error_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0].removeprefix("error: ")


def _node_folders(tmp_path: Path, files: dict[str, bytes]) -> list[Path]:
    """One working folder per rank, as on two machines, each with its own copy of `files`."""
    folders = []
    for rank in range(2):
        folder = tmp_path / f"node{rank}"
        folder.mkdir()
        for name, content in files.items():
            (folder / name).write_bytes(content)
        folders.append(folder)
    return folders


def _check_stopped(results: list[tuple[int, str]], failing: int, message: str) -> None:
    """The failing rank exits with its own error, the other with 'stopped: rank r failed: …'."""
    codes = [code for code, _ in results]
    assert codes == [2, 2], [err[-2000:] for _, err in results]
    own = _error_line(results[failing][1])
    assert message in own
    assert _error_line(results[1 - failing][1]) == f"stopped: rank {failing} failed: {own}"


@pytest.mark.multiproc
@pytest.mark.parametrize("failing", [0, 1])
def test_extract_stops_every_rank_when_one_lacks_its_data(
    tiny_gpt2, tiny_problems, tmp_path, failing
):
    """The problem file is missing on one node: that rank fails before the process group used
    to form, which left the other waiting for ever in the rendezvous."""
    folders = _node_folders(tmp_path, {"problems.jsonl": tiny_problems.read_bytes()})
    (folders[failing] / "problems.jsonl").unlink()
    args = ["extract", "--data", "problems.jsonl", "--out", str(tmp_path / "store"),
            *_model_args(tiny_gpt2), "--max-new-tokens", "4"]  # fmt: skip
    _check_stopped(_launch_ranks(args, folders), failing, "problems.jsonl")
    assert not (tmp_path / "store" / "records.parquet").exists()


@pytest.mark.multiproc
def test_intervene_stops_every_rank_when_the_main_refuses_the_folder(
    tiny_gpt2, synth_data, tmp_path
):
    """Only the main process opens the output folder: it holds another sweep's finished part,
    so rank 0 refuses it before the first collective, where rank 1 used to wait."""
    out = tmp_path / "out"
    (out / "parts").mkdir(parents=True)
    other = {"format": "x", "options": {"seed": 9}, "parts": {"part-00000.parquet": "0" * 64}}
    (out / "manifest.json").write_text(json.dumps(other))
    results = _launch_ranks(_sweep_args(tiny_gpt2, synth_data, out), [tmp_path, tmp_path])
    _check_stopped(results, 0, "holds a sweep with other")
    assert json.loads((out / "manifest.json").read_text()) == other  # nothing changed


@pytest.mark.multiproc
def test_intervene_stops_every_rank_when_one_reads_a_broken_problem_file(
    tiny_gpt2, synth_data, tmp_path
):
    lines = synth_data.read_text().splitlines()
    broken = "\n".join([lines[0], lines[1][:-5], *lines[2:]]) + "\n"
    pairs = synth_data.with_name("s.pairs.jsonl").read_bytes()
    files = {"s.jsonl": synth_data.read_bytes(), "s.pairs.jsonl": pairs}
    folders = _node_folders(tmp_path, files)
    (folders[1] / "s.jsonl").write_text(broken)  # rank 1's copy
    out = tmp_path / "out"
    results = _launch_ranks(_sweep_args(tiny_gpt2, "s.jsonl", out), folders)
    _check_stopped(results, 1, "s.jsonl:2")
    assert not (out / "interventions.parquet").exists()
