"""The model cards' figures: training curves and accuracy against the number of thoughts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from opcircuits.report.figures.style import OKABE_ITO, save


def training_curves(log_rows: list[dict[str, Any]], out_dir: Path) -> dict:
    """The losses of `opcircuits train` (its train_log.jsonl rows) against the step, each
    smoothed over 25 steps; steps of teacher-only warm-up have no student losses, and a loss a
    recipe does not use (0 throughout, or absent: step supervision) is not drawn."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.array([r["step"] for r in log_rows])
    for k, (key, label) in enumerate(
        [
            ("teacher_ce", "teacher CE"),
            ("student_ce", "student CE"),
            ("distill", "distillation"),
            ("step_ce", "step supervision CE"),
        ]
    ):
        values = np.array([r.get(key, 0.0) for r in log_rows], dtype=float)
        keep = values > 0  # 0 = not computed (teacher-only steps)
        if not keep.any():
            continue
        window = 25
        smooth = np.convolve(values[keep], np.ones(window) / window, mode="valid")
        ax.plot(steps[keep][window - 1 :], smooth, color=OKABE_ITO[k], label=label)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (25-step mean)")
    ax.legend(fontsize=8)
    ax.set_title("Training losses")
    return save(
        fig,
        out_dir,
        "loss_curve.png",
        "Training losses",
        "The losses of the training recipe per step (25-step mean).",
    )


def accuracy_vs_thoughts(result: dict[str, Any], out_dir: Path) -> dict:
    """Student accuracy against K (an `opcircuits evaluate` result with several `--num-latent`
    values), the teacher's as a reference line; one line per `heldout_frame` group when the
    result breaks accuracy down by it, and the position-preserved truncation (`--keep-positions`:
    eot where it sits after the model's K) beside the natural one when the result has it."""
    acc = result["accuracy"]
    ks = sorted(
        int(name.removeprefix("student_k"))
        for name in acc
        if name.startswith("student_k") and not name.endswith("_kept")
    )
    kept = [k for k in ks if f"student_k{k}_kept" in acc]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    natural = "all, natural positions" if kept else "all"
    ax.plot(ks, [acc[f"student_k{k}"] for k in ks], "o-", color=OKABE_ITO[4], label=natural)
    if kept:
        top = max(ks)
        values = [acc[f"student_k{k}_kept"] for k in kept] + [acc[f"student_k{top}"]]
        ax.plot(kept + [top], values, "^-", color=OKABE_ITO[5], label="all, eot's position kept")
    held = result.get("by", {}).get("heldout_frame", {})
    for j, (value, label) in enumerate([("false", "training frames"), ("true", "held-out frames")]):
        if value in held:
            row = held[value]
            ax.plot(ks, [row[f"student_k{k}"] for k in ks], "s--", color=OKABE_ITO[j], label=label)
    if "teacher" in acc:
        ax.axhline(acc["teacher"], color="#777777", linestyle=":", label="teacher (explicit CoT)")
    ax.set_xticks(ks)
    ax.set_xlabel("continuous thoughts K")
    ax.set_ylabel("answer accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(f"Accuracy against the number of thoughts ({result['n_problems']} problems)")
    return save(
        fig,
        out_dir,
        "accuracy_vs_k.png",
        "Accuracy against K",
        "Student answer accuracy with K continuous thoughts; the teacher for reference.",
    )
