"""The tuned lens's figure: held-out KL to the final layer per layer, tuned lens against logit
lens (from the report's `tuned_lens` section)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from opcircuits.report.figures.style import OKABE_ITO, save


def tuned_lens_kl(section: dict, out_dir: Path) -> dict:
    rows = [r for r in section["layers"] if not r["final"]]
    layers = [r["layer"] for r in rows]
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    ax.plot(layers, [r["logit"] for r in rows], "o--", color=OKABE_ITO[5], label="logit lens")
    ax.plot(layers, [r["tuned"] for r in rows], "s-", color=OKABE_ITO[4], label="tuned lens")
    ax.set_xticks(layers)
    ax.set_xlabel("layer (hidden_states index)")
    ax.set_ylabel("KL(final ‖ lens), nats")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    held = section.get("n_held_out")
    fig.suptitle(f"Tuned vs logit lens on {held} held-out problems", fontsize=10)
    fig.tight_layout()
    return save(
        fig,
        out_dir,
        "tuned_lens_kl.png",
        "Tuned lens",
        "Mean KL from the final layer's next-token distribution to each lens's, per layer, over "
        "the held-out problems' positions (lower is closer; the final layer is its own target).",
    )
