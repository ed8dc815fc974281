"""The causal tests' figures (`draw_causal`), from interventions.json: single-site maps,
accuracy by number of thoughts, steering dose-response, patching."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from opcircuits.report.figures.style import OKABE_ITO, label_of, save, with_bad


def _causal_panels(result: dict) -> list[str]:
    return [*result["categories"], "all"]


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
            grids[kind, cat], cmap=with_bad("RdBu_r"), vmin=-top, vmax=top, aspect="auto"
        )
        ax.set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
        ax.set_yticks(range(len(positions)), positions if c == 0 else [], fontsize=7)
        if r == 0:
            ax.set_title(label_of(cat), fontsize=9)
        if c == 0:
            ax.set_ylabel(kind, fontsize=9)
        if r == len(kinds) - 1:
            ax.set_xlabel("layer", fontsize=8)
    what = "accuracy drop" if measure == "drop" else "gold log-prob drop (nats)"
    fig.colorbar(im, ax=axes, shrink=0.8, label=f"{what} (clean − intervened)")
    name = "causal_map_accuracy.png" if measure == "drop" else "causal_map_logp.png"
    return save(
        fig,
        out_dir,
        name,
        f"Single-site interventions: {what}",
        f"{what.capitalize()} when one site (position × layer) is replaced, per kind (rows) and "
        "category (columns), paired with the clean run; red = the intervention hurt.",
    )


def causal_thoughts(result: dict, out_dir: Path) -> dict | None:
    """Accuracy against the number of thoughts kept, per category, with CIs: eot and the answer
    at their natural positions (solid) and at the position ids of K thoughts (dashed)."""
    rows = result.get("thoughts") or []
    if len(rows) < 2:
        return None
    K = result["num_latent"]
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"natural": "-", "preserved": "--"}
    for k, cat in enumerate(_causal_panels(result)):
        colour = "#000000" if cat == "all" else OKABE_ITO[k % len(OKABE_ITO)]
        for positions, ls in styles.items():
            pts = sorted(
                (e for e in rows if e["category"] == cat
                 and e.get("positions", "natural") == positions),
                key=lambda e: e["thoughts"],
            )  # fmt: skip
            if not pts:
                continue
            xs = [e["thoughts"] for e in pts]
            ax.plot(
                xs,
                [e["accuracy"] for e in pts],
                marker="o" if positions == "natural" else "s",
                color=colour,
                ls=ls,
                label=f"{label_of(cat)}, {positions} positions",
                lw=2 if cat == "all" else 1,
            )
            ax.fill_between(
                xs, [e["ci"][0] for e in pts], [e["ci"][1] for e in pts], color=colour, alpha=0.1
            )
    ax.set_xlabel(f"thoughts kept ({K} = the clean run)")
    ax.set_ylabel("accuracy")
    ax.set_xticks(range(K + 1))
    ax.set_ylim(0, 1)
    ax.legend(fontsize=6)
    ax.set_title("Accuracy against the number of continuous thoughts")
    return save(
        fig,
        out_dir,
        "causal_thoughts.png",
        "Accuracy by number of thoughts",
        "Answer accuracy when the model stops thinking after k thoughts and goes to eot, per "
        "category (bands: 95% Wilson intervals): solid, eot and the answer at the next position "
        f"ids (natural positions); dashed, at the position ids they have after {K} thoughts "
        "(position-preserved), so that only the thoughts differ.",
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
            ax.set_title(label_of(cat), fontsize=9)
        if r == 1:
            ax.set_xlabel("α (× mean state norm)")
        if c == 0:
            ax.set_ylabel(what)
            if r == 0:
                ax.legend(fontsize=7)
    return save(
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
        im = ax.imshow(g, cmap=with_bad("viridis"), vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
        ax.set_yticks(range(len(positions)), positions, fontsize=7)
        ax.set_xlabel("layer")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8, label="share of problems")
    return save(
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
