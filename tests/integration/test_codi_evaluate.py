"""`opcircuits evaluate` and its pieces: problem files through the data stage's reader, the
model's device and dtype as asked, answers cut by the decoding limit counted."""

from __future__ import annotations

import json
import math

import pytest
import torch

from opcircuits.codi.evaluate import evaluate, read_eval_problems
from opcircuits.codi.latent import extract_number
from opcircuits.errors import OpcircuitsError
from opcircuits.options import EvaluateOptions

torch.set_num_threads(1)


def test_problem_files_of_every_accepted_kind(gsm8k_dir, tiny_problems, tmp_path):
    original = read_eval_problems(gsm8k_dir)  # a folder holding the original test.jsonl
    assert len(original) == 1319 and original[0]["id"] == "test_0"
    assert original[0]["final_value"] == 18
    records = read_eval_problems(tiny_problems)  # problem records (data stage's format)
    assert [r["id"] for r in records] == [f"test_{i}" for i in range(24)]
    assert [r["question"] for r in records] == [r["question"] for r in original[:24]]
    assert [r["final_value"] for r in records] == [r["final_value"] for r in original[:24]]


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"question": "How many?", "answer": "#### 3"', None),  # malformed JSON
        ('{"question": "How many?", "answer": "no final answer"}', "answer"),
    ],
)
def test_a_bad_line_names_file_and_line(gsm8k_dir, tmp_path, line, field):
    lines = (gsm8k_dir / "test.jsonl").read_text().splitlines()[:3]
    bad = tmp_path / "test.jsonl"
    bad.write_text("\n".join([*lines, line]) + "\n")
    with pytest.raises(OpcircuitsError) as err:
        evaluate(EvaluateOptions(data=str(bad), num_latent=[0], teacher=False, device="cpu"))
    assert err.value.path == str(bad) and err.value.line == 4 and err.value.field == field


def test_evaluate_honours_dtype_and_counts_answers_cut_by_the_limit(gsm8k_dir, tmp_path):
    opts = dict(data=str(gsm8k_dir), limit=3, device="cpu", batch_size=2)
    full = evaluate(EvaluateOptions(**opts, num_latent=[6], teacher=False, out=tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text()) == full
    assert full["dtype"] == "float32" and full["device"] == "cpu"
    # the demo's student ends its answers with EOS well within the default limit
    assert full["truncated"] == {"student_k6": 0}
    problems = read_eval_problems(gsm8k_dir)[:3]
    texts = full["answers"]["student_k6"]
    right = sum(
        math.isclose(extract_number(t) or math.inf, p["final_value"])
        for t, p in zip(texts, problems, strict=True)
    )
    assert full["accuracy"]["student_k6"] == right / 3
    cut = evaluate(EvaluateOptions(**opts, num_latent=[6, 0], max_new_tokens=2, max_cot_tokens=2))
    assert cut["truncated"] == {"teacher": 3, "student_k6": 3, "student_k0": 3}
    assert all(len(t) < 12 for texts in cut["answers"].values() for t in texts)
    half = evaluate(EvaluateOptions(**opts, num_latent=[6], teacher=False, dtype="bfloat16"))
    assert half["dtype"] == "bfloat16"


def test_each_accuracy_has_its_wilson_ci_and_a_model_not_released_no_paper_figure(
    gsm8k_dir, tmp_path
):
    from cli_runner import run_cli

    from opcircuits.codi.reproduce import accuracy_ci, result_line

    out = tmp_path / "r.json"
    code, stdout, stderr = run_cli(
        "evaluate", "--model", "demo", "--data", str(gsm8k_dir), "--limit", "4",
        "--num-latent", "6,0", "--no-teacher", "--device", "cpu", "--out", str(out),
    )  # fmt: skip
    assert code == 0, stderr
    result = json.loads(out.read_text())
    for name in ("student_k6", "student_k0"):
        correct = sum(
            math.isclose(extract_number(t) or math.inf, p["final_value"])
            for t, p in zip(result["answers"][name], read_eval_problems(gsm8k_dir)[:4], strict=True)
        )
        assert result["ci95"][name] == accuracy_ci(correct, 4)
        assert result_line(name, result) in stdout.splitlines()
        assert "95% Wilson CI" in result_line(name, result)
    assert result["paper"] is None and "paper" not in stdout
