"""The benchmark scripts' CPU-checkable parts: `intervene.py` and `extract.py` with `--device` and
`--dtype` on the tiny shape, their `--profile` breakdowns, `analyze.py`'s record of where the
permutation family ran, and `gpu.sh`, which must refuse at once without a GPU. Each run is a
smoke run of a few problems, its result file written to a temporary folder (`--out`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def run_script(args: list[str], gsm8k_dir: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OPCIRCUITS_GSM8K_DIR": str(gsm8k_dir), **env}
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(BENCH)])
    return subprocess.run(
        args, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600, check=False
    )


def figures(path: Path) -> dict:
    record = json.loads(path.read_text(encoding="utf-8"))
    return record["figures"]


def test_intervene_benchmark_runs_on_the_cpu_with_device_and_dtype(tmp_path, gsm8k_dir):
    out = tmp_path / "intervene.json"
    args = ["--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--problems", "3"]
    args += ["--naive-problems", "2", "--batch-size", "2", "--max-new-tokens", "4"]
    args += ["--sites", "*@2", "--out", str(out)]
    done = run_script([sys.executable, str(BENCH / "intervene.py"), *args], gsm8k_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    f = figures(out)
    assert (f["device"], f["dtype"], f["problems"], f["naive_problems"]) == ("cpu", "float32", 3, 2)
    n = f["interventions"]
    assert n == 2 * 7  # zero and mean at the 7 positions of layer 2 (bot and 6 thoughts)
    # The shipped engine and the naive loop agree on every row of the subset (clean rows too).
    assert f["subset"]["answers_agree"] == f"{2 * (n + 1)}/{2 * (n + 1)}"
    assert f["subset"]["peak_gpu_memory"] is None and f["all"]["peak_gpu_memory"] is None
    assert f["all"]["rows_per_cpu_s"] > 0


def test_intervene_benchmark_in_bfloat16_and_first_interventions(tmp_path, gsm8k_dir):
    out = tmp_path / "bf16.json"
    args = ["--shape", "tiny", "--dtype", "bfloat16", "--problems", "2", "--naive-problems", "1"]
    args += ["--batch-size", "2", "--max-new-tokens", "3", "--interventions", "3"]
    args += ["--out", str(out)]
    done = run_script([sys.executable, str(BENCH / "intervene.py"), *args], gsm8k_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    f = figures(out)
    assert (f["dtype"], f["interventions"]) == ("bfloat16", 3)


def test_intervene_benchmark_default_sweep_spread_as_gpu_sh_runs_it(tmp_path, gsm8k_dir):
    data = tmp_path / "synth.jsonl"  # with its pairs file: the patch partners
    synth = ["-m", "opcircuits", "data", "synth", "--out", str(data), "--n", "12", "--seed", "7"]
    done = run_script([sys.executable, *synth, "--split", "test"], gsm8k_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "default.json"
    args = ["--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--data", str(data)]
    args += ["--sweep", "default", "--problems", "4", "--naive-problems", "2"]
    args += ["--batch-size", "4", "--max-new-tokens", "4", "--interventions", "12", "--spread"]
    args += ["--out", str(out)]
    done = run_script([sys.executable, str(BENCH / "intervene.py"), *args], gsm8k_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    f = figures(out)
    assert (f["interventions"], f["interventions_chosen"]) == (12, "spread")
    assert len(f["kinds_run"]) >= 4  # spread over the sweep, not 12 zero ablations
    assert f["subset"]["answers_agree"] == f"{2 * 13}/{2 * 13}"


def test_intervene_profile_splits_the_sweep_into_phases(tmp_path, gsm8k_dir):
    out = tmp_path / "profile.json"
    args = ["--shape", "tiny", "--problems", "4", "--batch-size", "2", "--max-new-tokens", "4"]
    args += ["--sites", "*@1", "--kinds", "zero", "--profile", "--out", str(out)]
    done = run_script([sys.executable, str(BENCH / "intervene.py"), *args], gsm8k_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["benchmark"] == "intervene" and "--profile" in record["command"]
    f = record["figures"]
    assert f["rows"] == 4 * (7 + 1)  # 7 interventions and the clean run, per problem
    phases = ["prefill", "latent steps", "draft verification", "answer decoding"]
    phases += ["cache copies", "answer bookkeeping", "hooks", "other"]
    shares = [f[f"{p}_share"] for p in phases]
    assert abs(sum(shares) - 1) < 0.01  # exclusive times: every moment counted once
    for p in ["prefill", "latent steps", "draft verification", "hooks"]:
        assert f[f"{p}_ms"] > 0, p
        assert f[f"{p}_in_ops_ms"] <= f[f"{p}_ms"] + 0.1, p
    assert 0 < f["in_matmul_share"] < f["in_torch_ops_share"] < 1
    assert abs(sum(f[f"{p}_cpu_share"] for p in phases) - 1) < 0.01
    assert "aten::" in f["top_ops"] and "aten::mm" not in f["top_non_matmul_ops"]


def test_extract_benchmark_profiles_on_the_cpu(tmp_path, gsm8k_dir):
    out = tmp_path / "extract.json"
    args = ["--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--problems", "4"]
    args += ["--naive-problems", "1", "--batch-size", "4", "--max-new-tokens", "3"]
    args += ["--threads", "1", "--profile", "--out", str(out)]
    done = run_script([sys.executable, str(BENCH / "extract.py"), *args], gsm8k_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    f = figures(out)
    assert (f["device"], f["a_problems"], f["b_problems"]) == ("cpu", 4, 1)
    p = f["profile"]
    phases = ["prefill", "latent steps", "answer decoding", "store writing", "other"]
    assert abs(sum(p[f"{x}_share"] for x in phases) - 1) < 0.01
    assert abs(sum(p[f"{x}_cpu_share"] for x in phases) - 1) < 0.01
    assert all(p[f"{x}_ms"] > 0 for x in phases)
    assert p["store writing_in_ops_ms"] < p["store writing_ms"]  # numpy and files, not torch
    assert 0 < p["in_matmul_share"] < p["in_torch_ops_share"] < 1


def test_analyze_benchmark_says_the_permutation_family_ran_on_the_cpu():
    sys.path[:0] = [str(ROOT / "src"), str(BENCH)]
    try:
        import analyze as bench  # benchmarks/analyze.py

        got = bench.permutation_device()
    finally:
        del sys.path[:2]
        sys.modules.pop("analyze", None)
    assert got["permutation_family_device"] == "cpu"
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    assert got["gpu_present"] == gpu


def test_gpu_script_parses_and_refuses_without_a_gpu(tmp_path, gsm8k_dir):
    assert subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")], check=False).returncode == 0
    before = sorted((BENCH / "results").iterdir())
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this never starts the real run.
    done = run_script(
        ["bash", str(BENCH / "gpu.sh")], gsm8k_dir, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES=""
    )
    assert done.returncode == 2
    assert "gpu.sh: no CUDA GPU" in done.stderr
    assert "==" not in done.stdout  # no step started
    assert sorted((BENCH / "results").iterdir()) == before
    text = (BENCH / "gpu.sh").read_text(encoding="utf-8")
    steps = [line for line in text.splitlines() if line.lstrip().startswith("step ")]
    limits = [int(line.split('"')[2].split()[0]) for line in steps]
    assert len(steps) == 5 and sum(limits) + 30 <= 480  # the GPU check's 30 s included


def test_result_files_record_no_absolute_paths(monkeypatch, tmp_path):
    # A committed result file must not hold a machine's paths: an absolute argument becomes
    # relative to the repository when inside it, `<outside>/<name>` otherwise.
    sys.path[:0] = [str(ROOT / "src"), str(BENCH)]
    try:
        import results  # benchmarks/results.py

        argv = [str(BENCH / "analyze.py"), "--keep", str(tmp_path / "bench"), "--note", "a /b"]
        argv += [f"--keep={ROOT / 'runs' / 'bench'}", "--problems", "60", "runs/rel"]
        monkeypatch.setattr(sys, "argv", argv)
        got = results.command_line()
    finally:
        del sys.path[:2]
        sys.modules.pop("results", None)
    assert got == (
        "python benchmarks/analyze.py --keep '<outside>/bench' --note 'a /b' "
        "--keep=runs/bench --problems 60 runs/rel"
    )
