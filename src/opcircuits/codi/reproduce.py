"""Does a measured accuracy reproduce the paper? Each setting's accuracy with its Wilson 95% CI
and, for the released CODI checkpoints (the presets `codi-gpt2`, `codi-llama3.2-1b`, or their hub
ids), the GSM8K figure the CODI paper reports beside the student at the model's own K."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opcircuits.codi.config import PRESETS
from opcircuits.proportions import wilson_interval

# The paper: Shen et al. 2025, "CODI: Compressing Chain-of-Thought into Continuous Space via
# Self-Distillation" (docs/guide/training.md cites it in full).
CITATION = "Shen et al. 2025 (CODI), arXiv 2502.21074"


@dataclass(frozen=True)
class PaperFigure:
    """The paper's GSM8K test accuracy of a released checkpoint (None: not known to us)."""

    accuracy: float | None
    source: str


# GPT-2: 43.7%. LLaMA-3.2-1B: the paper's table was not in the sources we could read, so no
# number is given rather than one from memory.
PAPER_FIGURES: dict[str, PaperFigure] = {
    "codi-gpt2": PaperFigure(0.437, CITATION),
    "codi-llama3.2-1b": PaperFigure(None, f"{CITATION}: not known"),
}


def released_name(model: str) -> str | None:
    """The preset name of a released checkpoint given by preset name or hub id, else None."""
    for name in PAPER_FIGURES:
        if model in (name, PRESETS[name].checkpoint):
            return name
    return None


def accuracy_ci(correct: int, n: int) -> list[float]:
    """[low, high] of the Wilson 95% interval of `correct` out of `n`."""
    w = wilson_interval(float(correct), n)
    return [w.low, w.high]


def paper_comparison(model: str, setting: str, ci: list[float]) -> dict[str, Any] | None:
    """For a released model, the paper's figure for `setting` (the student at the model's own
    K) and whether the measured CI contains it; None for any other model."""
    name = released_name(model)
    if name is None:
        return None
    figure = PAPER_FIGURES[name]
    inside = None if figure.accuracy is None else ci[0] <= figure.accuracy <= ci[1]
    return {
        "model": name,
        "setting": setting,
        "accuracy": figure.accuracy,
        "source": figure.source,
        "ci_contains_paper": inside,
    }


def add_intervals(
    result: dict[str, Any], model: str, model_k: int, marks: dict[str, list[bool]]
) -> None:
    """Add to an `evaluate` result every setting's Wilson CI (`ci95`, from its per-problem
    `marks`) and `paper`: the paper's figure beside the student at the model's own K (None when
    the model is not a released one or that setting was not measured)."""
    result["ci95"] = {name: accuracy_ci(sum(ok), len(ok)) for name, ok in marks.items()}
    setting = f"student_k{model_k}"
    ci = result["ci95"].get(setting)
    result["paper"] = None if ci is None else paper_comparison(model, setting, ci)


def result_line(name: str, result: dict[str, Any]) -> str:
    """One setting of an `evaluate` result as the command prints it: accuracy, its CI, the
    problem count and time, and (for the setting the paper reports) the paper's figure."""
    acc = result["accuracy"][name]
    low, high = result["ci95"][name]
    line = (
        f"{name}: {acc:.4f} ({result['n_problems']} problems, {result['seconds'][name]}s); "
        f"95% Wilson CI {low:.4f}–{high:.4f}"
    )
    paper = result.get("paper")
    if paper is None or paper["setting"] != name:
        return line
    if paper["accuracy"] is None:
        return f"{line}; paper figure: not known ({paper['source']})"
    verdict = "inside" if paper["ci_contains_paper"] else "outside"
    return f"{line}; paper: {paper['accuracy']:.3f} ({paper['source']}), {verdict} the measured CI"
