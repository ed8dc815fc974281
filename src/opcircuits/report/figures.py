"""Every analysis figure (matplotlib, Agg backend), drawn from the report's numbers.

Colour-blind-safe throughout: categories use the Okabe–Ito palette, heatmaps use viridis/cividis.
Each function writes one PNG atomically and returns {file, title, caption} for the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from opcircuits.files import atomic_path  # noqa: E402
from opcircuits.report.findings import PROBE_LABELS  # noqa: E402

OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
DPI = 110


def _label(name: str) -> str:
    return name.replace("_", " ")


def _save(fig: plt.Figure, out_dir: Path, name: str, title: str, caption: str) -> dict:
    with atomic_path(out_dir / name) as tmp:
        # No metadata: the PNG bytes depend only on the numbers.
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return {"file": name, "title": title, "caption": caption}


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
    return _save(
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
    return _save(
        fig,
        out_dir,
        "layer_sweep.png",
        "Layer sweep",
        "Probe accuracy across all layers for each position.",
    )


def probes_vs_controls(report: dict, out_dir: Path) -> dict:
    main = [p for p in report["probes"] if p["view_kind"] == "main"]
    views = list(dict.fromkeys(p["view"] for p in main))
    probes = list(dict.fromkeys(p["probe"] for p in main))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / max(len(probes), 1)
    for k, probe in enumerate(probes):
        rows = [next(p for p in main if p["view"] == v and p["probe"] == probe) for v in views]
        xs = np.arange(len(views)) + (k - (len(probes) - 1) / 2) * width
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
            label=f"control: {_label(c['name'])} ({c['accuracy']:.2f})",
        )
    ax.set_xticks(range(len(views)), views)
    ax.set_xlabel("view over the latent steps (layers concatenated)")
    ax.set_ylabel("CV accuracy (95% CI)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Probes on the continuous thoughts vs controls")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(
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
    return _save(
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
            range(len(names)), [_label(c) for c in names], rotation=30, ha="right", fontsize=7
        )
        ax.set_yticks(range(len(names)), [_label(c) for c in names], fontsize=7)
        ax.set_xlabel("predicted category")
        ax.set_ylabel("true category")
        ax.set_title(f"{r['view']} (acc {r['accuracy']:.2f})", fontsize=9)
    fig.suptitle("Confusion matrices, logistic regression, summed over all folds", fontsize=10)
    fig.tight_layout()
    return _save(
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
                label=_label(cat),
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
    return _save(
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
        range(len(names)), [_label(c) for c in names], rotation=30, ha="right", fontsize=7
    )
    ax2.set_yticks(range(len(names)), [_label(c) for c in names], fontsize=7)
    ax2.set_xlabel("category")
    ax2.set_ylabel("category")
    ax2.set_title(f"mean-centred cosine, {main['view']} view", fontsize=9)
    fig.colorbar(im, ax=ax2, fraction=0.046)
    fig.tight_layout()
    return _save(
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
        ax.set_title(_label(cat), fontsize=9)
    axes[0][0].set_ylabel("share of top-1 lens tokens")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("Logit lens: what each thought's top-1 token is", fontsize=10)
    fig.tight_layout()
    return _save(
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
    ax.set_xticks(range(len(rows)), [_label(r["category"]) for r in rows], fontsize=8)
    ax.set_xlabel("category")
    ax.set_ylabel("answer accuracy (95% Wilson CI)")
    ax.set_ylim(0, 1.05)
    ax.set_title("The model's own answers")
    return _save(
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
        ]
    return [f for f in figs if f is not None]


# --- causal tests (interventions.json) -----------------------------------------------------------


def _causal_panels(result: dict) -> list[str]:
    return [*result["categories"], "all"]


def _with_bad(name: str):
    """A colour map that shows cells not measured in light grey (not as a value)."""
    return matplotlib.colormaps[name].with_extremes(bad="#d9d9d9")


def causal_map(result: dict, out_dir: Path, measure: str) -> dict | None:
    """Position × layer heat map of one measure for each single-site kind (rows) and category
    (columns)."""
    kinds = [
        k
        for k in ("zero", "mean", "resample", "patch")
        if any(e["kind"] == k and e["position"] is not None for e in result["effects"])
    ]
    if not kinds:
        return None
    positions = result["positions"]
    layers = list(range(result["num_layers"] + 1))
    cats = _causal_panels(result)
    grids = {}
    for kind in kinds:
        for cat in cats:
            g = np.full((len(positions), len(layers)), np.nan)
            for e in result["effects"]:
                if e["kind"] == kind and e["category"] == cat and e["position"] is not None:
                    v = e[measure]
                    g[positions.index(e["position"]), layers.index(e["layer"])] = (
                        np.nan if v is None else v
                    )
            grids[kind, cat] = g
    values = np.concatenate([g.ravel() for g in grids.values()])
    top = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    top = top or 1.0
    fig, axes = plt.subplots(
        len(kinds),
        len(cats),
        figsize=(0.45 * len(layers) * len(cats) + 1.5, 0.35 * len(positions) * len(kinds) + 1.2),
        squeeze=False,
    )
    for (r, kind), (c, cat) in ((rk, cc) for rk in enumerate(kinds) for cc in enumerate(cats)):
        ax = axes[r][c]
        im = ax.imshow(
            grids[kind, cat], cmap=_with_bad("RdBu_r"), vmin=-top, vmax=top, aspect="auto"
        )
        ax.set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
        ax.set_yticks(range(len(positions)), positions if c == 0 else [], fontsize=7)
        if r == 0:
            ax.set_title(_label(cat), fontsize=9)
        if c == 0:
            ax.set_ylabel(kind, fontsize=9)
        if r == len(kinds) - 1:
            ax.set_xlabel("layer", fontsize=8)
    what = "accuracy drop" if measure == "drop" else "gold log-prob drop (nats)"
    fig.colorbar(im, ax=axes, shrink=0.8, label=f"{what} (clean − intervened)")
    name = "causal_map_accuracy.png" if measure == "drop" else "causal_map_logp.png"
    return _save(
        fig,
        out_dir,
        name,
        f"Single-site interventions: {what}",
        f"{what.capitalize()} when one site (position × layer) is replaced, per kind (rows) and "
        "category (columns), paired with the clean run; red = the intervention hurt.",
    )


def causal_thoughts(result: dict, out_dir: Path) -> dict | None:
    """Accuracy against the number of thoughts kept (truncation), per category, with CIs."""
    rows = result.get("thoughts") or []
    if len(rows) < 2:
        return None
    K = result["num_latent"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, cat in enumerate(_causal_panels(result)):
        pts = sorted((e for e in rows if e["category"] == cat), key=lambda e: e["thoughts"])
        xs = [e["thoughts"] for e in pts]
        colour = "#000000" if cat == "all" else OKABE_ITO[k % len(OKABE_ITO)]
        ax.plot(
            xs,
            [e["accuracy"] for e in pts],
            marker="o",
            color=colour,
            label=_label(cat),
            lw=2 if cat == "all" else 1,
        )
        ax.fill_between(
            xs, [e["ci"][0] for e in pts], [e["ci"][1] for e in pts], color=colour, alpha=0.12
        )
    ax.set_xlabel(f"thoughts kept ({K} = the clean run)")
    ax.set_ylabel("accuracy")
    ax.set_xticks(range(K + 1))
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy against the number of continuous thoughts")
    return _save(
        fig,
        out_dir,
        "causal_thoughts.png",
        "Accuracy by number of thoughts",
        "Answer accuracy when the model stops thinking after k thoughts and goes to eot, per "
        "category (bands: 95% Wilson intervals).",
    )


def causal_steering(result: dict, out_dir: Path) -> dict | None:
    """Dose-response: accuracy and gold log-prob drops against α, category direction vs random."""
    rows = [e for e in result["effects"] if e["kind"] == "steer"]
    if not rows:
        return None
    cats = _causal_panels(result)
    site_sets = sorted({e["sites"] for e in rows})
    measures = (("drop", "accuracy drop"), ("logp_drop", "gold log-prob drop"))
    fig, axes = plt.subplots(2, len(cats), figsize=(3.2 * len(cats), 6.2), squeeze=False)
    for (r, (measure, what)), (c, cat) in (
        (m, cc) for m in enumerate(measures) for cc in enumerate(cats)
    ):
        ax = axes[r][c]
        for direction in ("diff", "random"):
            for sites in site_sets:
                pts = sorted(
                    (
                        e
                        for e in rows
                        if e["category"] == cat
                        and e["direction"] == direction
                        and e["sites"] == sites
                    ),
                    key=lambda e: e["alpha"],
                )
                # α = 0 is the clean run: no drop.
                xs = sorted([0.0] + [e["alpha"] for e in pts])
                ys = [
                    0.0 if x == 0.0 else next(e[measure] for e in pts if e["alpha"] == x)
                    for x in xs
                ]
                ax.plot(
                    xs,
                    np.asarray(ys, dtype=float),
                    marker="o",
                    color=OKABE_ITO[4 if direction == "diff" else 7],
                    ls="-" if direction == "diff" else "--",
                    label=("category direction" if direction == "diff" else "random direction")
                    + ("" if len(site_sets) == 1 else f" {sites}"),
                )
        ax.axhline(0, color="grey", lw=0.5)
        if r == 0:
            ax.set_title(_label(cat), fontsize=9)
        if r == 1:
            ax.set_xlabel("α (× mean state norm)")
        if c == 0:
            ax.set_ylabel(what)
            if r == 0:
                ax.legend(fontsize=7)
    return _save(
        fig,
        out_dir,
        "causal_steering.png",
        "Steering dose-response",
        "Accuracy drop (top) and gold-answer log-prob drop (bottom), clean − steered, against "
        "the steering strength α, along the direction between two categories' mean states "
        "(solid) and along a random direction of the same length (dashed, the control).",
    )


def causal_patching(result: dict, out_dir: Path) -> dict | None:
    """How often the answer becomes the partner's, per site (all categories)."""
    rows = [
        e
        for e in result["effects"]
        if e["kind"] == "patch" and e["category"] == "all" and e["position"] is not None
    ]
    if not rows:
        return None
    positions = result["positions"]
    layers = list(range(result["num_layers"] + 1))
    fig, axes = plt.subplots(
        1, 2, figsize=(0.5 * len(layers) * 2 + 2.5, 0.4 * len(positions) + 1.4)
    )
    for ax, measure, title in (
        (axes[0], "follows_source", "answer became the partner's"),
        (axes[1], "changed", "answer changed"),
    ):
        g = np.full((len(positions), len(layers)), np.nan)
        for e in rows:
            v = e[measure]
            g[positions.index(e["position"]), layers.index(e["layer"])] = np.nan if v is None else v
        im = ax.imshow(g, cmap=_with_bad("viridis"), vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
        ax.set_yticks(range(len(positions)), positions, fontsize=7)
        ax.set_xlabel("layer")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8, label="share of problems")
    return _save(
        fig,
        out_dir,
        "causal_patching.png",
        "Patching a counterfactual partner's state",
        "Per site, the share of problems whose answer became the partner's gold answer (left) "
        "or changed at all (right) when the partner's state replaced the problem's there.",
    )


def draw_causal(result: dict, out_dir: Path) -> list[dict[str, Any]]:
    """Every figure of interventions.json that its rows allow."""
    with matplotlib.rc_context({"text.parse_math": False}):  # names from the data, literally
        figs = [
            causal_map(result, out_dir, "drop"),
            causal_map(result, out_dir, "logp_drop"),
            causal_thoughts(result, out_dir),
            causal_steering(result, out_dir),
            causal_patching(result, out_dir),
        ]
    return [f for f in figs if f is not None]


# --- model cards: training curves and accuracy against the number of thoughts -----------------


def training_curves(log_rows: list[dict[str, Any]], out_dir: Path) -> dict:
    """The three losses of `opcircuits train` (its train_log.jsonl rows) against the step, each
    smoothed over 25 steps; steps of teacher-only warm-up have no student losses."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.array([r["step"] for r in log_rows])
    for k, (key, label) in enumerate(
        [("teacher_ce", "teacher CE"), ("student_ce", "student CE"), ("distill", "distillation")]
    ):
        values = np.array([r[key] for r in log_rows], dtype=float)
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
    return _save(
        fig,
        out_dir,
        "loss_curve.png",
        "Training losses",
        "Teacher and student cross-entropy and the distillation loss per step (25-step mean).",
    )


def accuracy_vs_thoughts(result: dict[str, Any], out_dir: Path) -> dict:
    """Student accuracy against K (an `opcircuits evaluate` result with several `--num-latent`
    values), the teacher's as a reference line; one line per `heldout_frame` group when the
    result breaks accuracy down by it."""
    acc = result["accuracy"]
    ks = sorted(int(name.removeprefix("student_k")) for name in acc if name.startswith("student_k"))
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(ks, [acc[f"student_k{k}"] for k in ks], "o-", color=OKABE_ITO[4], label="all")
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
    return _save(
        fig,
        out_dir,
        "accuracy_vs_k.png",
        "Accuracy against K",
        "Student answer accuracy with K continuous thoughts; the teacher for reference.",
    )
