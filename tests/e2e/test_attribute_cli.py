"""`opcircuits attribute` as a user runs it: the files and sentences, and a one-line refusal."""

from __future__ import annotations

import json

from cli_runner import run_cli


def test_attribute_command_writes_and_refuses(tiny_gpt2, tmp_path):
    from opcircuits.data.synth import SynthOptions, synth

    data = tmp_path / "data" / "s.jsonl"
    synth(SynthOptions(out=data, n=6, seed=2))
    out = tmp_path / "att"
    model = ["--checkpoint", str(tiny_gpt2.checkpoint), "--base", str(tiny_gpt2.base)]
    code, stdout, stderr = run_cli(
        "attribute", "--data", str(data), "--out", str(out), *model, "--device", "cpu",
        "--verify", "3", "--flips", "200",
    )  # fmt: skip
    assert code == 0, stderr
    result = json.loads((out / "attribution.json").read_text(encoding="utf-8"))
    assert result["check"]["n_verified"] == 3 and result["n_pairs"] > 0
    assert result["sentences"][0] in stdout
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "attribution.json", "attribution.parquet", "attribution.png",
    ]  # fmt: skip
    code, _, stderr = run_cli(
        "attribute", "--data", str(data), "--out", str(data), *model, "--device", "cpu"
    )
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "--out" in stderr, stderr
    assert data.is_file()  # the input is untouched
