"""Each problem's step results r_1…r_n, from GSM8K's calculator annotations (the real file) and
from the synthetic generator, as the extraction stores them (`step_results`)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

from opcircuits.data.annotations import extract_steps, step_results
from opcircuits.data.gsm8k import load_local
from opcircuits.data.io import read_problems
from opcircuits.data.synth import SynthOptions, synth
from opcircuits.extract import number_text, problem_fields


def test_gsm8k_step_results_are_the_annotations_numbers(gsm8k_dir: Path):
    records = load_local(gsm8k_dir)
    by_id = {r["id"]: r for r in records}
    # test_0: "<<16-3-4=9>>9 … $<<9*2=18>>18"
    assert step_results(by_id["test_0"]) == [9.0, 18.0]
    assert problem_fields(by_id["test_0"])["step_results"] == [9.0, 18.0]
    unknown, total, last_is_answer, with_steps = [], 0, 0, 0
    for r in records:
        results = step_results(r)
        steps = extract_steps(r["answer"])
        if not steps:
            assert results is None, r["id"]
            continue
        with_steps += 1
        assert results is not None and len(results) == len(steps), r["id"]
        for step, value in zip(steps, results, strict=True):
            total += 1
            if value is None:
                unknown.append(step["result"])
            else:  # the number written after `=`, commas and `$` removed
                text = step["result"].replace(",", "").replace("$", "").strip()
                assert float(Fraction(text)) == value, (r["id"], step)
        last_is_answer += results[-1] == float(r["final_value"])
    # Of 8,792 problems' ~28k steps only results that are not one number (`3/4`) are unknown.
    assert total > 25_000 and 0 < len(unknown) < 20, unknown
    assert all("/" in u or not u for u in unknown), unknown
    # The last annotation is the final answer for most problems (not all: GSM8K sometimes
    # annotates a step after the one giving the answer, or none at the end).
    assert last_is_answer > 0.9 * with_steps


def test_synthetic_step_results_are_the_generator_values(tmp_path):
    out = tmp_path / "synth.jsonl"
    synth(SynthOptions(out=out, n=90, seed=5, split="test", steps="2,3,4"))
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert {r["n_steps"] for r in rows} == {2, 3, 4}
    for raw, rec in zip(rows, read_problems(out), strict=True):
        results = problem_fields(rec)["step_results"]
        assert results == [float(s["result"]) for s in raw["steps"]]
        assert results[-1] == float(raw["final_value"]) and len(results) == raw["n_steps"]
        # the chain of thought writes the integers without a decimal point
        assert [number_text(v) for v in results] == [s["result"] for s in raw["steps"]]
