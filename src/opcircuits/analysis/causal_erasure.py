"""Is the decodable information the used information? Concept erasure against its control.

Per site erased (`erase`: LEACE of the operation category, `erase_random`: a random subspace of
the same rank, both cross-fitted; `codi.interventions.erasure`), the effect *beyond the control*
is paired by problem: the control's correct − erase's correct (= erase's accuracy drop minus the
control's) and the control's gold log-prob − erase's. Both measures of every erased site form
one family: step-down max-T on studentized sign-flip statistics (`causal_stats.family_p`, signs
of a problem's differences flipped together), two-sided, and a site is *used* when either of its
contrasts is claimed (p_family < 0.05) with erasure the larger drop. Intervals: percentile
bootstrap with the sweep's resamples (descriptive).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from opcircuits.analysis import causal_stats

ALPHA = 0.05
CONTRASTS = {"beyond": "correct", "logp_beyond": "logp_gold"}  # name → the paired column


def pairs(sw) -> list[tuple[int, int]]:
    """(erase, its control) intervention indices: the same sites, in table order."""
    index = {label: i for i, label in enumerate(sw.labels)}
    out = []
    for label in sw.labels:
        if sw.info.loc[label, "kind"] == "erase":
            control = index.get(f"erase_random {sw.info.loc[label, 'sites']}")
            if control is not None:
                out.append((index[label], control))
    return out


def _mean_ci(x: np.ndarray, W: np.ndarray, level: float) -> tuple[float | None, list]:
    """The mean over the problems present and its bootstrap interval (weights W [R, n])."""
    from opcircuits.analysis.causal import _interval, _num

    ok = ~np.isnan(x)
    xz = np.where(ok, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (W @ xz) / (W @ ok.astype(np.float64))
    return (_num(xz.sum() / ok.sum()) if ok.any() else None), list(_interval(boot, level))


def erasure(sw, W_all: np.ndarray, n_flips: int, seed: int, level: float = 0.95) -> list[dict]:
    """Per erased site: erase's and the control's accuracy and log-prob drops, the contrasts
    beyond the control with intervals and family-wise p-values, and `used_claimed`."""
    from opcircuits.analysis.causal import _num, _py

    found = pairs(sw)
    if not found:
        return []
    er, ctrl = [e for e, _ in found], [c for _, c in found]
    stacked, drops = [], {}
    for name, column in CONTRASTS.items():
        X = sw.matrix(column, sw.all_ids, False)
        stacked.append(X[ctrl] - X[er])  # the control's value minus erase's
        drops[name] = sw.matrix(column, sw.all_ids, True)  # clean − intervened
    p = causal_stats.family_p(np.concatenate(stacked), n_flips, seed)
    out = []
    for j, (e, c) in enumerate(found):
        info = sw.info.iloc[e]
        row: dict[str, Any] = {
            "site": _py(info.get("sites")),
            "position": _py(info.get("position")),
            "layer": _py(info.get("layer"), "layer"),
        }
        for k, (name, D) in enumerate(zip(CONTRASTS, stacked, strict=True)):
            prefix = "drop" if name == "beyond" else "logp_drop"
            row["n"] = int((~np.isnan(D[j])).sum())
            for tag, i in (("erase", e), ("random", c)):
                mean, ci = _mean_ci(drops[name][i], W_all, level)
                row[f"{prefix}_{tag}"], row[f"{prefix}_{tag}_ci"] = mean, ci
            row[name], row[f"{name}_ci"] = _mean_ci(D[j], W_all, level)
            row[f"{name}_p_family"] = _num(p[k * len(found) + j])
            row[f"{name}_claimed"] = bool(
                row[f"{name}_p_family"] is not None
                and row[f"{name}_p_family"] < ALPHA
                and (row[name] or 0) > 0
            )
        row["used_claimed"] = row["beyond_claimed"] or row["logp_beyond_claimed"]
        out.append(row)
    return out


METHOD = (
    "Concept erasure. `erase`: LEACE (Belrose et al. 2023) of the one-hot operation category at "
    "a site, fitted on the run's problems' clean states there and cross-fitted over 5 folds "
    "(stratified, seeded): each problem is edited by the eraser fitted on the other folds, so "
    "its own label never enters the fit that edits it. `erase_random`: the orthogonal "
    "projection onto the complement of a seeded random subspace of the same rank, about the "
    "same mean. 'Used' needs the contrast erase − control (accuracy drop, or gold log-prob "
    "drop) claimed by a step-down max-T over both measures of every erased site (studentized "
    "sign flips by problem); 'decodable' is the analysis report's family-wise claim for the "
    "probe of that (position, layer) cell, when the report has one."
)
