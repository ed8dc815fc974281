"""What routes the answer: the measures of the sweep's routing controls (`analysis.causal` builds
the matrices; this module reads them).

- `recovery`: the logit difference LD (the partner's answer minus the problem's: at the first
  answer token where they differ, and the whole answer's log-probability difference) of each
  patching intervention, normalized by the clean run's and the partner's own run's:
  (LD − LD_clean) / (LD_partner − LD_clean), means over the problems first (Heimersheim & Nanda,
  "How to use and interpret activation patching", 2024). Patching the partner's states into the
  problem's run is *denoising* toward the partner (0 = the problem's own run, 1 = the partner's);
  read with the problem as the clean run, the same ratio is the *damage* that noising with the
  partner's states does (1 = the original answer's preference wholly lost). Percentile bootstrap
  intervals of the ratio with the sweep's resamples; pooled, per category and per changed step
  (the step whose operation the partner changes, where the partners carry it).
- `position_effect`: per number of thoughts kept k, the accuracy of the position-preserved
  truncation (eot and the answer at the position ids they have after K thoughts) minus that of
  the natural one (right after the k thoughts), paired by problem, with its bootstrap interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MEASURES = {"ld_first": "ld_partner_first", "ld_answer": "ld_partner_answer"}
PATCHING = ("patch", "patch_step", "path")


def _ratio(
    X: np.ndarray, clean: np.ndarray, partner: np.ndarray, W: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per intervention (rows of X [I, n]): the normalized value of the means over the problems
    where X, clean and partner are all present, its bootstrap values [I, R] (weights W [R, n]),
    and the three means."""
    present = ~np.isnan(X) & ~np.isnan(clean)[None] & ~np.isnan(partner)[None]
    P = present.astype(np.float64)
    Xz = np.where(present, X, 0.0)
    Cz = np.where(present, clean[None], 0.0)
    Pz = np.where(present, partner[None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        count, boot_count = P.sum(1), P @ W.T
        m_x, m_c, m_p = Xz.sum(1) / count, Cz.sum(1) / count, Pz.sum(1) / count
        b_x, b_c, b_p = (Xz @ W.T) / boot_count, (Cz @ W.T) / boot_count, (Pz @ W.T) / boot_count
        value = (m_x - m_c) / (m_p - m_c)
        boot = (b_x - b_c) / (b_p - b_c)
    return value, boot, np.stack([m_x, m_c, m_p], 1), count


def recovery(sw, boot_weights: dict[str, np.ndarray], level: float = 0.95) -> list[dict[str, Any]]:
    """Normalized recovery of every patching intervention, pooled and per category and changed
    step (rows: intervention, group, measure, n, ld, ld_clean, ld_partner, recovery, CI)."""
    from opcircuits.analysis.causal import ALL, _interval, _num

    kinds = sw.info["kind"] if "kind" in sw.info.columns else None
    if kinds is None or "ld_answer" not in sw.rows.columns:
        return []
    keep = [i for i, label in enumerate(sw.labels) if kinds.loc[label] in PATCHING]
    if not keep:
        return []
    groups: list[tuple[str, str, np.ndarray, np.ndarray]] = []  # (by, value, ids, weights)
    W_all = np.concatenate([boot_weights[c] for c in sw.cats], 1)
    groups.append(("category", ALL, sw.all_ids, W_all))
    groups += [("category", c, sw.ids[c], boot_weights[c]) for c in sw.cats]
    if "changed_step" in sw.clean.columns:
        steps = sw.clean["changed_step"].reindex(sw.all_ids)
        for step in sorted(steps.dropna().unique()):
            mask = (steps == step).to_numpy()
            groups.append(("changed_step", str(int(step)), sw.all_ids[mask], W_all[:, mask]))
    out = []
    for measure, baseline in MEASURES.items():
        if baseline not in sw.clean.columns:
            continue
        for by, value, ids, W in groups:
            X = sw.matrix(measure, ids, False)[keep]
            clean = _numeric(sw.clean[measure].reindex(ids))
            partner = _numeric(sw.clean[baseline].reindex(ids))
            ratio, boot, means, count = _ratio(X, clean, partner, W)
            for j, i in enumerate(keep):
                out.append(
                    {"intervention": sw.labels[i], "by": by, "group": value,
                     "measure": measure, "n": int(count[j]), "ld": _num(means[j, 0]),
                     "ld_clean": _num(means[j, 1]), "ld_partner": _num(means[j, 2]),
                     "recovery": _num(ratio[j]),
                     "recovery_ci": list(_interval(boot[j], level))}
                )  # fmt: skip
    return out


def _numeric(series) -> np.ndarray:
    import pandas as pd

    return pd.to_numeric(series.astype(object).where(series.notna())).to_numpy(dtype=np.float64)


def position_effect(sw, W_all: np.ndarray, level: float = 0.95) -> list[dict[str, Any]]:
    """Per k: accuracy with the answer at the K-thought positions minus at the natural ones."""
    from opcircuits.analysis.causal import _interval, _num

    if "thoughts" not in sw.info.columns:
        return []
    correct = sw.matrix("correct", sw.all_ids, False)
    index = {label: i for i, label in enumerate(sw.labels)}
    out = []
    for label, row in sw.info.iterrows():
        if row["kind"] != "truncate_pos":
            continue
        k = int(row["thoughts"])
        natural = index.get(f"truncate {k}")
        if natural is None:
            continue
        d = correct[index[label]] - correct[natural]
        ok = ~np.isnan(d)
        dz = np.where(ok, d, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = (W_all @ dz) / (W_all @ ok.astype(np.float64))
        out.append(
            {"thoughts": k, "n": int(ok.sum()), "difference": _num(dz.sum() / max(ok.sum(), 1)),
             "difference_ci": list(_interval(boot, level))}
        )  # fmt: skip
    return sorted(out, key=lambda r: r["thoughts"])
