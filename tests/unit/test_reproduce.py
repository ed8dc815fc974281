"""`evaluate`'s reproduction line: each accuracy's Wilson 95% CI, and the CODI paper's figure
beside the student at the model's own K only for the released checkpoints."""

from __future__ import annotations

import math

import pytest

from opcircuits.codi.reproduce import accuracy_ci, add_intervals, released_name, result_line

Z = 1.959963984540054  # the normal's 97.5% quantile


@pytest.mark.parametrize(("correct", "n"), [(576, 1319), (3, 5), (0, 20), (20, 20)])
def test_the_ci_is_the_wilson_score_interval(correct, n):
    """Its ends are where the score test is exactly at z: |p̂ - p| = z √(p(1-p)/n)."""
    low, high = accuracy_ci(correct, n)
    p_hat = correct / n
    assert 0 <= low <= p_hat <= high <= 1
    for end in (low, high):
        if end in (0.0, 1.0) and end == p_hat:
            continue  # the interval touches the bound the estimate sits on
        assert math.isclose(abs(p_hat - end), Z * math.sqrt(end * (1 - end) / n), rel_tol=1e-9)


def _result(model, accuracy_k6, n=1319, k=6):
    correct = round(accuracy_k6 * n)
    marks = {"teacher": [True] * (n // 2) + [False] * (n - n // 2)}
    marks[f"student_k{k}"] = [True] * correct + [False] * (n - correct)
    result = {
        "n_problems": n,
        "accuracy": {name: sum(ok) / n for name, ok in marks.items()},
        "seconds": dict.fromkeys(marks, 1.0),
    }
    add_intervals(result, model, k, marks)
    return result


def test_the_paper_figure_stands_beside_the_released_gpt2_only():
    close = _result("codi-gpt2", 0.43)  # 567/1319: its CI holds 0.437
    low, high = close["ci95"]["student_k6"]
    assert close["ci95"]["student_k6"] == accuracy_ci(567, 1319) and low < 0.437 < high
    line = result_line("student_k6", close)
    assert line == (
        f"student_k6: {567 / 1319:.4f} (1319 problems, 1.0s); 95% Wilson CI {low:.4f}–{high:.4f}"
        "; paper: 0.437 (Shen et al. 2025 (CODI), arXiv 2502.21074), inside the measured CI"
    )
    assert close["paper"]["ci_contains_paper"] is True and close["paper"]["accuracy"] == 0.437
    far = _result("zen-E/CODI-gpt2", 0.38)  # the hub id names the same released model
    assert far["paper"]["model"] == "codi-gpt2" and far["paper"]["ci_contains_paper"] is False
    assert "outside the measured CI" in result_line("student_k6", far)
    assert "paper" not in result_line("teacher", far)  # the paper's figure is the student's
    for other in ("demo", "demo-arith", "some/checkpoint", "zen-E/CODI-gpt2-mine"):
        result = _result(other, 0.43)
        assert result["paper"] is None and released_name(other) is None
        assert "paper" not in result_line("student_k6", result)
        assert "95% Wilson CI" in result_line("student_k6", result)


def test_the_llama_figure_is_said_to_be_not_known():
    result = _result("codi-llama3.2-1b", 0.5)
    assert result["paper"]["accuracy"] is None and result["paper"]["ci_contains_paper"] is None
    assert "paper figure: not known" in result_line("student_k6", result)


def test_no_paper_figure_when_the_models_own_k_was_not_measured():
    result = _result("codi-gpt2", 0.43, k=3)
    add_intervals(result, "codi-gpt2", 6, {"student_k3": [True, False]})
    assert result["paper"] is None
