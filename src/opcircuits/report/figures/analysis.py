"""The analysis report's figures (`draw_all`): probe accuracy by position and layer, probes
against controls, confusion matrices, PCA, cosine similarity, the logit lens, answer accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from opcircuits.report.figures.intermediate import intermediate_values
from opcircuits.report.figures.style import OKABE_ITO, label_of, save
from opcircuits.report.findings import PROBE_LABELS


def token_layer_map(report: dict, out_dir: Path) -> dict:
    cells = report["token_layer_map"]
    positions, layers = report["data"]["positions"], report["data"]["layers"]
    grid = np.full((len(positions), len(layers)), np.nan)
    for c in cells:
        grid[positions.index(c["position"]), layers.index(c["layer"])] = c["accuracy"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(layers), 1.0 + 0.5 * len(positions)))
    im = ax.imshow(grid, cmap="viridis", vmin=report["data"]["chance"], vmax=1.0, aspect="auto")
    big = len(layers) * len(positions) <= 80
    for (i, j), v in np.ndenumerate(grid):
        if big and np.isfinite(v):
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                color="white" if v < 0.5 * (1 + report["data"]["chance"]) else "black",
                fontsize=8,
            )
    ax.set_xticks(range(len(layers)), [str(x) for x in layers])
    ax.set_yticks(range(len(positions)), positions)
    ax.set_xlabel("layer (hidden_states index)")
    ax.set_ylabel("position")
    fig.colorbar(im, ax=ax, label="CV accuracy (logistic regression)")
    ax.set_title("Operation category decoded from one position and layer")
    return save(
        fig,
        out_dir,
        "token_layer_map.png",
        "Token × layer map",
        "Cross-validated accuracy of a logistic-regression probe on each single "
        "(position, layer); colour scale starts at chance.",
    )


def layer_sweep(report: dict, out_dir: Path) -> dict:
    positions = report["data"]["positions"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, pos in enumerate(positions):
        cells = sorted(
            (c for c in report["token_layer_map"] if c["position"] == pos), key=lambda c: c["layer"]
        )
        xs = [c["layer"] for c in cells]
        color = OKABE_ITO[k % len(OKABE_ITO)]
        ax.plot(xs, [c["accuracy"] for c in cells], marker="o", ms=3, color=color, label=pos)
        ax.fill_between(
            xs, [c["ci_low"] for c in cells], [c["ci_high"] for c in cells], color=color, alpha=0.12
        )
    ax.axhline(report["data"]["chance"], color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("layer (hidden_states index)")
    ax.set_ylabel("CV accuracy")
    ax.set_title("Layer sweep per position (95% CI shaded)")
    ax.legend(fontsize=7, ncol=2)
    return save(
        fig,
        out_dir,
        "layer_sweep.png",
        "Layer sweep",
        "Probe accuracy across all layers for each position.",
    )


def _is(row: dict, view: str, probe: str) -> bool:
    return row["view"] == view and row["probe"] == probe


def probes_vs_controls(report: dict, out_dir: Path) -> dict:
    main = [p for p in report["probes"] if p["view_kind"] == "main"]
    views = list(dict.fromkeys(p["view"] for p in main))
    probes = list(dict.fromkeys(p["probe"] for p in main))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / max(len(probes), 1)
    for k, probe in enumerate(probes):
        # The random forest and MLP may be on some of the views only (--nonlinear-views).
        at = [i for i, v in enumerate(views) if any(_is(p, v, probe) for p in main)]
        rows = [next(p for p in main if _is(p, views[i], probe)) for i in at]
        xs = np.array(at) + (k - (len(probes) - 1) / 2) * width
        acc = np.array([r["accuracy"] for r in rows])
        err = np.array(
            [
                [r["accuracy"] - r["ci_low"] for r in rows],
                [r["ci_high"] - r["accuracy"] for r in rows],
            ]
        )
        ax.bar(
            xs,
            acc,
            width,
            yerr=err,
            capsize=2,
            color=OKABE_ITO[k + 4],
            label=PROBE_LABELS.get(probe, probe),
        )
    styles = ["--", ":", "-.", (0, (5, 1)), (0, (1, 3))]
    for k, c in enumerate(report["controls"]):
        ax.axhline(
            c["accuracy"],
            color=OKABE_ITO[k % 4],
            ls=styles[k % len(styles)],
            lw=1.3,
            label=f"control: {label_of(c['name'])} ({c['accuracy']:.2f})",
        )
    ax.set_xticks(range(len(views)), views)
    ax.set_xlabel("view over the latent steps (layers concatenated)")
    ax.set_ylabel("CV accuracy (95% CI)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Probes on the continuous thoughts vs controls")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save(
        fig,
        out_dir,
        "probes.png",
        "Probes vs controls",
        "Accuracy of each probe on the main views, with the controls as lines.",
    )


def pre_thought(report: dict, out_dir: Path) -> dict | None:
    rows = report["pre_thought"]
    pre = next((c for c in report["controls"] if c["name"] == "pre_thought"), None)
    if not rows or pre is None:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    xs = ["bot", *[r["position"] for r in rows]]
    acc = [pre["accuracy"], *[r["accuracy"] for r in rows]]
    lo = [pre["ci_low"], *[r["ci_low"] for r in rows]]
    hi = [pre["ci_high"], *[r["ci_high"] for r in rows]]
    ax.errorbar(
        range(len(xs)),
        acc,
        yerr=[np.subtract(acc, lo), np.subtract(hi, acc)],
        fmt="o-",
        color=OKABE_ITO[4],
        capsize=3,
        label="logistic regression",
    )
    ax.axhline(report["data"]["chance"], color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(range(len(xs)), xs)
    ax.set_xlabel("position (bot = before any latent step)")
    ax.set_ylabel("CV accuracy (95% CI)")
    ax.set_title("Pre-thought state vs each latent step (layers concatenated)")
    ax.legend(fontsize=8)
    return save(
        fig,
        out_dir,
        "pre_thought.png",
        "Pre-thought vs latent steps",
        "Does any latent step carry more than the state before thinking?",
    )


def confusion(report: dict, out_dir: Path) -> dict:
    names = report["data"]["categories"]
    rows = [p for p in report["probes"] if p["view_kind"] == "main" and p["probe"] == "logreg"]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.3 * len(rows), 3.4), squeeze=False)
    for ax, r in zip(axes[0], rows, strict=True):
        m = np.array(r["confusion"], dtype=float)
        frac = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        ax.imshow(frac, cmap="cividis", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(m):
            ax.text(
                j,
                i,
                f"{int(v)}",
                ha="center",
                va="center",
                color="black" if frac[i, j] > 0.5 else "white",
                fontsize=8,
            )
        ax.set_xticks(
            range(len(names)), [label_of(c) for c in names], rotation=30, ha="right", fontsize=7
        )
        ax.set_yticks(range(len(names)), [label_of(c) for c in names], fontsize=7)
        ax.set_xlabel("predicted category")
        ax.set_ylabel("true category")
        ax.set_title(f"{r['view']} (acc {r['accuracy']:.2f})", fontsize=9)
    fig.suptitle("Confusion matrices, logistic regression, summed over all folds", fontsize=10)
    fig.tight_layout()
    return save(
        fig,
        out_dir,
        "confusion.png",
        "Confusion matrices",
        "Counts summed over every fold of every repeat (each problem counted once per "
        "repeat); shading = share of the true category.",
    )


def pca_scatter(report: dict, coords: dict[str, np.ndarray], y: np.ndarray, out_dir: Path) -> dict:
    names = report["data"]["categories"]
    rows = report["clustering"]
    ncols = min(3, len(rows))
    nrows = -(-len(rows) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.9 * nrows), squeeze=False)
    for ax in axes.flat[len(rows) :]:
        ax.set_visible(False)
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    for ax, r in zip(axes.flat, rows, strict=False):  # spare panels are hidden above
        xy = coords[r["view"]]
        for k, cat in enumerate(names):
            m = y == k
            ax.scatter(
                xy[m, 0],
                xy[m, 1],
                s=9,
                alpha=0.7,
                color=OKABE_ITO[k % 8],
                marker=markers[k % 8],
                label=label_of(cat),
                linewidths=0,
            )
        ev = r["explained_variance_ratio"]
        ax.set_xlabel(f"PC1 ({100 * ev[0]:.1f}% variance)")
        ax.set_ylabel(f"PC2 ({100 * ev[1]:.1f}% variance)")
        sil = r["silhouette"]
        ax.set_title(
            f"{r['view']} (silhouette {sil:.2f})" if sil is not None else r["view"], fontsize=9
        )
    axes[0][0].legend(fontsize=7, markerscale=1.5)
    fig.tight_layout()
    return save(
        fig,
        out_dir,
        "pca.png",
        "PCA of the thoughts",
        "First two principal components of the standardized features, coloured by "
        "category; silhouette computed in the full feature space.",
    )


def similarity(report: dict, out_dir: Path) -> dict:
    rows = report["similarity"]
    names = report["data"]["categories"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    views = [r["view"] for r in rows]
    xs = np.arange(len(views))
    for k, (kind, key) in enumerate(
        [("raw", "within"), ("raw", "between"), ("centred", "within"), ("centred", "between")]
    ):
        vals = [r[kind][key] for r in rows]
        ax.bar(
            xs + (k - 1.5) * 0.2,
            vals,
            0.2,
            color=OKABE_ITO[[0, 1, 5, 4][k]],
            hatch="" if key == "within" else "//",
            label=f"{kind}, {key}",
        )
    ax.set_xticks(xs, views, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("view")
    ax.set_ylabel("mean cosine similarity")
    ax.set_title("Within vs between categories")
    ax.axhline(0, color="black", lw=0.6)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    main = next((r for r in rows if r["view"] == "mean"), rows[0])
    mat = np.array(main["centred"]["category_matrix"], dtype=float)
    lim = float(np.nanmax(np.abs(mat))) or 1.0
    im = ax2.imshow(mat, cmap="cividis", vmin=-lim, vmax=lim)
    for (i, j), v in np.ndenumerate(mat):
        ax2.text(
            j,
            i,
            f"{v:.2g}",
            ha="center",
            va="center",
            fontsize=8,
            color="black" if v > 0 else "white",
        )
    ax2.set_xticks(
        range(len(names)), [label_of(c) for c in names], rotation=30, ha="right", fontsize=7
    )
    ax2.set_yticks(range(len(names)), [label_of(c) for c in names], fontsize=7)
    ax2.set_xlabel("category")
    ax2.set_ylabel("category")
    ax2.set_title(f"mean-centred cosine, {main['view']} view", fontsize=9)
    fig.colorbar(im, ax=ax2, fraction=0.046)
    fig.tight_layout()
    return save(
        fig,
        out_dir,
        "similarity.png",
        "Cosine similarity",
        "Raw cosine is dominated by a direction all thoughts share; mean-centred cosine "
        "shows whether categories are closer to themselves than to each other.",
    )


def logit_lens(report: dict, out_dir: Path) -> dict | None:
    lens = report["logit_lens"]
    if not lens.get("available"):
        return None
    names = [*report["data"]["categories"], "all"]
    positions = lens["positions"]
    fig, axes = plt.subplots(
        1, len(names), figsize=(3.2 * len(names), 3.6), squeeze=False, sharey=True
    )
    kinds = [("operator", OKABE_ITO[5]), ("number", OKABE_ITO[1]), ("other", "#BBBBBB")]
    for ax, cat in zip(axes[0], names, strict=True):
        rows = [
            next(s for s in lens["shares"] if s["category"] == cat and s["position"] == p)
            for p in positions
        ]
        bottom = np.zeros(len(rows))
        for kind, color in kinds:
            vals = np.array([r[kind] or 0.0 for r in rows])
            ax.bar(
                range(len(rows)),
                vals,
                bottom=bottom,
                color=color,
                label=kind,
                hatch="//" if kind == "operator" else "",
            )
            bottom += vals
        ax.set_xticks(range(len(rows)), positions, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("position")
        ax.set_title(label_of(cat), fontsize=9)
    axes[0][0].set_ylabel("share of top-1 lens tokens")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("Logit lens: what each thought's top-1 token is", fontsize=10)
    fig.tight_layout()
    return save(
        fig,
        out_dir,
        "logit_lens.png",
        "Logit lens",
        "Share of top-1 tokens that are operator symbols, numbers or other, per "
        "category and position.",
    )


def model_accuracy(report: dict, out_dir: Path) -> dict | None:
    model = report["model"]
    if not model.get("available"):
        return None
    rows = model["answer_accuracy"]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    acc = [r["accuracy"] or 0.0 for r in rows]
    err = [
        [r["accuracy"] - r["ci_low"] if r["n"] else 0 for r in rows],
        [r["ci_high"] - r["accuracy"] if r["n"] else 0 for r in rows],
    ]
    ax.bar(
        range(len(rows)),
        acc,
        yerr=err,
        capsize=3,
        color=[OKABE_ITO[k % 8] for k in range(len(rows) - 1)] + ["#777777"],
    )
    ax.set_xticks(range(len(rows)), [label_of(r["category"]) for r in rows], fontsize=8)
    ax.set_xlabel("category")
    ax.set_ylabel("answer accuracy (95% Wilson CI)")
    ax.set_ylim(0, 1.05)
    ax.set_title("The model's own answers")
    return save(
        fig,
        out_dir,
        "model_accuracy.png",
        "Model answer accuracy",
        "Share of problems the model answers correctly, per category.",
    )


def draw_all(
    report: dict, coords: dict[str, np.ndarray], y: np.ndarray, out_dir: Path
) -> list[dict[str, Any]]:
    # Names from the data (positions, views, categories) are shown literally: without this, a
    # name with two `$` would be parsed as mathtext and could stop the figure with a TeX error.
    with matplotlib.rc_context({"text.parse_math": False}):
        figs = [token_layer_map(report, out_dir)]
        if report["layer_sweep"]:
            figs.append(layer_sweep(report, out_dir))
        if any(p["view_kind"] == "main" for p in report["probes"]):
            figs += [probes_vs_controls(report, out_dir), confusion(report, out_dir)]
        figs += [
            pre_thought(report, out_dir),
            pca_scatter(report, coords, y, out_dir),
            similarity(report, out_dir),
            logit_lens(report, out_dir),
            model_accuracy(report, out_dir),
            intermediate_values(report, out_dir),
        ]
    return [f for f in figs if f is not None]


# --- causal tests (interventions.json) -----------------------------------------------------------
