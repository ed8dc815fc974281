"""`opcircuits das --variable result` on a tiny CODI checkpoint: the value pairs (one row per pair
and step, split by pair), the command's das.json (the measurement in `intermediate_result`, the
wrong-step control not run and why, every other control run), and its refusals: no value
partners beside the data, a pairs file of operation partners, a partner that changes an
operation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_runner import run_cli

from opcircuits.data.synth import synth, value_pairs_path
from opcircuits.errors import OpcircuitsError
from opcircuits.intervene.das import _held
from opcircuits.intervene.das_values import value_inputs
from opcircuits.options import SynthOptions


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 synthetic problems with both partner files."""
    out = tmp_path_factory.mktemp("das-values") / "synth.jsonl"
    synth(SynthOptions(out=out, n=12, seed=3, split="test"))
    return out


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_value_pair_counts_once_for_every_step_and_is_held_out_whole(data):
    rows = value_inputs(data, value_pairs_path(data))
    problems = {r["id"]: r for r in _lines(data)}
    partners = {p["partner_of"]: p for p in _lines(value_pairs_path(data))}
    assert len(rows.steps) == sum(problems[b]["n_steps"] for b in partners)
    assert rows.equal_answers == rows.equal_results == 0  # every r_j and answer differs
    ps = rows.pair_set
    for i, j in enumerate(rows.steps):
        base, src = ps.problems[ps.base[i]], ps.problems[ps.source[i]]
        mine, theirs = problems[base.id], partners[base.id]
        assert src.id == theirs["id"] and 1 <= j <= mine["n_steps"]
        assert mine["steps"][j - 1]["result"] != theirs["steps"][j - 1]["result"]
    held = _held(rows.groups, 0.5, seed=0)
    for g in set(rows.groups.tolist()):
        assert len(set(held[rows.groups == g].tolist())) == 1  # a pair's steps on one side
    # one row per pair: the operation variable's split, unchanged
    assert (_held(np.arange(7), 0.5, 3) == _held(np.arange(7), 0.5, 3)).all()


def test_a_partner_changing_an_operation_is_refused(data, tmp_path):
    partners = _lines(value_pairs_path(data))
    step = partners[0]["steps"][0]
    other = str.maketrans({"+": "*", "-": "*", "*": "+", "/": "+"})
    partners[0]["steps"][0] = {**step, "expr": step["expr"].translate(other)}
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(p) + "\n" for p in partners))
    with pytest.raises(OpcircuitsError) as err:
        value_inputs(data, bad)
    assert err.value.field == "steps" and err.value.path == str(bad)


def _args(tiny, data, *extra: str) -> tuple[str, ...]:
    return ("das", "--checkpoint", str(tiny.checkpoint), "--base", str(tiny.base),
            "--data", str(data), "--sites", "latent_1@1", "--dims", "1", "--steps", "1,2",
            "--epochs", "1", "--batch-size", "4", "--max-new-tokens", "8", "--device", "cpu",
            *extra)  # fmt: skip


def test_the_command_measures_the_intermediate_result(tiny_llama, data, tmp_path):
    out = tmp_path / "das"
    code, stdout, stderr = run_cli(*_args(tiny_llama, data, "--variable", "result", "--out",
                                          str(out)))  # fmt: skip
    assert code == 0, stderr
    record = json.loads((out / "das.json").read_text())
    assert record["variable"] == "result" and record["options"]["variable"] == "result"
    assert record["pairs"]["distinct_pairs"] == len(_lines(value_pairs_path(data)))
    assert 1 <= record["pairs"]["held_out_pairs"] < record["pairs"]["distinct_pairs"]
    measured = record["intermediate_result"]
    assert measured["measured"] is True and sorted(measured["best"]) == ["1", "2"]
    assert record["wrong_step_control"].startswith("not run")
    for name in ("model", "reinit"):
        rows = record["results"][name]
        assert [(r["step"], r["r"]) for r in rows] == [(1, 1), (2, 1)]
        for row in rows:
            assert row["wrong_step"] is None
            for key in ("das", "random", "complement", "full"):
                assert 0 <= row[key]["iia"] <= 1 and row[key]["n"] > 0
    assert "r_1 (result of step 1)" in stdout and "r_2 (result of step 2)" in stdout


def test_operation_stays_the_default(tiny_llama, data, tmp_path):
    out = tmp_path / "op"
    code, _, stderr = run_cli(*_args(tiny_llama, data, "--steps", "1", "--out", str(out)))
    assert code == 0, stderr
    record = json.loads((out / "das.json").read_text())
    assert record["variable"] == "operation"
    assert record["intermediate_result"].startswith("not measured")
    assert record["wrong_step_control"].startswith("run")
    assert "operation of step 1" in record["findings"][0]


def test_refusals_name_the_file_and_the_field(tiny_llama, data, tmp_path):
    lone = tmp_path / "lone.jsonl"
    synth(SynthOptions(out=lone, n=12, seed=3, split="test", pairs=False))
    code, _, stderr = run_cli(*_args(tiny_llama, lone, "--variable", "result", "--out",
                                     str(tmp_path / "a")))  # fmt: skip
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert str(value_pairs_path(lone)) in lines[0] and "field 'pairs'" in lines[0]
    # the operation partners given where value partners are needed
    code, _, stderr = run_cli(*_args(tiny_llama, data, "--variable", "result", "--pairs",
                                     str(data.with_name("synth.pairs.jsonl")), "--out",
                                     str(tmp_path / "b")))  # fmt: skip
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "field 'changed_value'" in lines[0], stderr
    assert "synth.pairs.jsonl" in lines[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    code, _, stderr = run_cli(*_args(tiny_llama, data, "--variable", "value", "--out",
                                     str(tmp_path / "c")))  # fmt: skip
    assert code == 2 and "variable" in stderr
