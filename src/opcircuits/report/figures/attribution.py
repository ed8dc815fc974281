"""Attribution patching's figure: per segment of the loop (question, bot, each thought, the
answer), a layers × (heads, MLP) map of the AtP estimates (normalized logit difference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from opcircuits.report.figures.style import save, with_bad


def draw_attribution(rows: pd.DataFrame, out_dir: Path) -> dict[str, Any] | None:
    """attribution.png from attribution.parquet's rows (None when there are no heads)."""
    heads = rows[rows["kind"] == "head"]
    if heads.empty:
        return None
    segments = list(dict.fromkeys(rows["segment"]))
    layers = sorted(int(x) for x in heads["layer"].unique())
    n_heads = int(heads["head"].max()) + 1
    grids = []
    for seg in segments:
        g = np.full((len(layers), n_heads + 1), np.nan)
        for r in rows[(rows["segment"] == seg) & rows["kind"].isin(["head", "mlp"])].itertuples():
            col = int(r.head) if r.kind == "head" else n_heads
            g[layers.index(int(r.layer)), col] = r.estimate
        grids.append(g)
    lim = max(float(np.nanmax(np.abs(np.stack(grids)))), 1e-12)
    cols = min(len(segments), 5)
    nrows = -(-len(segments) // cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(2.2 * cols + 1, 2.1 * nrows + 0.6), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    im = None
    for ax, seg, g in zip(axes.flat, segments, grids, strict=False):
        im = ax.imshow(np.ma.masked_invalid(g), cmap=with_bad("RdBu_r"), vmin=-lim, vmax=lim,
                       aspect="auto")  # fmt: skip
        ax.set_title(seg.replace("_", " "), fontsize=9)
        ax.set_xticks(range(n_heads + 1), [str(h) for h in range(n_heads)] + ["mlp"], fontsize=7)
        ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
    for ax in list(axes.flat)[len(segments) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("layer")
    fig.colorbar(im, ax=axes, shrink=0.8, label="AtP estimate (normalized)")
    return save(
        fig,
        out_dir,
        "attribution.png",
        "Attribution patching: heads and MLPs per segment",
        "First-order estimate of patching each head's output (before o_proj) and each MLP's "
        "output from the partner, as a share of the clean logit difference (1 = the partner's).",
    )
