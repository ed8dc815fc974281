"""The intermediate-values heat map: where each step's result r_j is decoded (position × step),
by the logit lens and by a value probe at every layer."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from opcircuits.report.figures.style import save, with_bad


def _grid(cells: list[dict], positions: list[str], steps: list[int], stat: str, alpha: float):
    grid = np.full((len(positions), len(steps)), np.nan)
    marks = np.zeros(grid.shape, dtype=bool)
    for c in cells:
        if c[stat] is None or c["position"] not in positions:
            continue
        i, j = positions.index(c["position"]), steps.index(c["step"])
        grid[i, j] = c[stat]
        marks[i, j] = c.get("p_family") is not None and c["p_family"] <= alpha
    return grid, marks


def _panel(ax, grid, marks, positions, steps, title, label, fig) -> None:
    im = ax.imshow(np.clip(grid, 0.0, 1.0), cmap=with_bad("viridis"), vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(
                j, i, f"{v:.2f}" + ("*" if marks[i, j] else ""), ha="center", va="center",
                color="white" if v < 0.5 else "black", fontsize=7,
            )  # fmt: skip
    ax.set_xticks(range(len(steps)), [f"r_{s}" for s in steps])
    ax.set_yticks(range(len(positions)), positions)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=label, shrink=0.8)


def intermediate_values(report: dict, out_dir: Path) -> dict | None:
    sec = report.get("intermediate_values") or {}
    # the maps over every problem with ≥ j steps (the per-step-count ones are in the JSON)
    probes = [c for c in (sec.get("probes") or {}).get("cells") or [] if c["n_steps"] is None]
    lens = sec.get("lens") or {}
    if not probes and not lens.get("available"):
        return None
    alpha = sec["alpha"]
    steps = sorted({c["step"] for c in probes} | {c["step"] for c in lens.get("cells", [])})
    layers = sorted({c["layer"] for c in probes})
    positions = list(lens.get("positions") or report["data"]["positions"])
    for c in probes:  # analyzed positions the lens lacks (it covers every stored one)
        if c["position"] not in positions:
            positions.append(c["position"])
    lens_rows = []  # (title, cells) per lens panel: every stored layer, else the final one
    if lens.get("layer_cells"):
        for layer in sorted({c["layer"] for c in lens["layer_cells"]}):
            cells = [c for c in lens["layer_cells"] if c["layer"] == layer]
            lens_rows.append((f"lens top-{lens['top_k']}, layer {layer}", cells))
    elif lens.get("available"):
        lens_rows.append((f"lens top-{lens['top_k']} (final layer)", lens["cells"]))
    nrows = (1 if lens_rows else 0) + (1 if layers else 0)
    ncols = max(len(lens_rows), len(layers))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(0.6 + 2.6 * ncols, (1.2 + 0.4 * len(positions)) * nrows),
        squeeze=False,
    )  # fmt: skip
    for ax in axes.flat:
        ax.set_visible(False)
    row = 0
    for k, (title, cells) in enumerate(lens_rows):
        grid, marks = _grid(cells, positions, steps, "rate", alpha)
        axes[row, k].set_visible(True)
        _panel(axes[row, k], grid, marks, positions, steps, title, "share of problems", fig)
    row += 1 if lens_rows else 0
    for k, layer in enumerate(layers):
        cells = [c for c in probes if c["layer"] == layer]
        grid, marks = _grid(cells, positions, steps, "r2", alpha)
        axes[row, k].set_visible(True)
        title = f"value probe, layer {layer}"
        _panel(axes[row, k], grid, marks, positions, steps, title, "R²", fig)
    fig.tight_layout()
    return save(
        fig,
        out_dir,
        "intermediate_values.png",
        "Intermediate values",
        "Where each step's result r_j is decoded: top row, the share of problems whose r_j "
        "token is among the logit lens's top-k at a position (per layer where the store has "
        "the lens at every layer); bottom row, per layer, the out-of-fold R² of a ridge probe "
        "from the state to r_j (clipped to 0–1). * marks cells beyond "
        f"chance family-wise (step-down maxT over each map's cells, α = {alpha}); permutations "
        "move results only among problems with the same number of steps.",
    )
