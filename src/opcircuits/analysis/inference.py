"""Corrected inference: what the summary may claim, with the family-wise error rate controlled.

- `max_statistic`: the family-wise permutation test (Westfall & Young's single-step maxT). Every
  member of a family (a probe on a view, a token × layer cell) is refitted on the same permuted
  labels; each permutation's maximum accuracy over the family is the null of "the best member".
  A member's corrected p-value is the share of permutations whose maximum reaches its accuracy.
- `holm`: Holm's step-down adjustment of a list of p-values (for "k of N" statements).
- `corrected_t_p`: the one-sided p-value of the Nadeau–Bengio corrected resampled t-statistic
  (the test behind the intervals of paired differences).
- `decide`: the gatekeeping rule of the whole report. The primary family (does any probe or cell
  decode the category?) is tested at α. Only if it rejects are the secondary families tested:
  each family's smallest adjusted p-value enters a Holm adjustment across families, and a member
  is claimed when both its within-family and its family's adjusted p-value are below α. On a
  store without signal, the probability of claiming anything is at most α.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05


def max_statistic(observed: dict[str, float], null: dict[str, np.ndarray]) -> dict[str, float]:
    """Family-wise corrected p-values: p_m = (1 + #{b: max_k null_k[b] ≥ observed_m}) / (1 + B).

    `observed[m]` is member m's statistic on the true labels; `null[m][b]` the same statistic
    after permutation b (the same permutations for every member)."""
    names = list(observed)
    if not names:
        return {}
    top = np.max(np.stack([np.asarray(null[m], dtype=np.float64) for m in names]), axis=0)
    top = np.round(top, 12)  # float noise in equal scores must not decide a tie
    return {m: (int(np.sum(top >= round(observed[m], 12))) + 1) / (top.size + 1) for m in names}


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (None stays None and is not counted)."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    order = sorted(idx, key=lambda i: p_values[i])
    m = len(order)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out


def corrected_t_p(differences: np.ndarray, test_fraction: float) -> float | None:
    """One-sided p for mean(differences) > 0 under the corrected resampled t-test."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size < 2:
        return None
    s2 = float(d.var(ddof=1))
    mean = float(d.mean())
    if s2 == 0:
        return 0.0 if mean > 0 else 1.0
    t = mean / math.sqrt((1.0 / d.size + test_fraction) * s2)
    return float(stats.t.sf(t, d.size - 1))


def stratified_permutations(
    y: np.ndarray, groups: Sequence[np.ndarray], n: int, rng: np.random.Generator
) -> np.ndarray:
    """`n` relabelings of `y`, each shuffling labels only within every index group given
    (e.g. each test fold, or each fold × n_steps stratum), so group class counts are kept."""
    out = np.empty((n, len(y)), dtype=np.int16)
    for b in range(n):
        perm = np.array(y, copy=True)
        for g in groups:
            perm[g] = y[g][rng.permutation(len(g))]
        out[b] = perm
    return out


def decide(primary: dict, secondary: list[dict], alpha: float = ALPHA) -> dict:
    """Apply the gatekeeping rule (see the module docstring).

    `primary` and each entry of `secondary` are {"family", "members": [{"name", "p_value"}]},
    with `p_value` already adjusted within the family (None: not tested). Returns the families
    with `p_family` (their smallest member p), `p_final` per member, `claimed` flags, and the
    list of claims in order."""

    def family_p(fam: dict) -> float | None:
        ps = [m["p_value"] for m in fam["members"] if m["p_value"] is not None]
        return min(ps) if ps else None

    p_primary = family_p(primary)
    gate = p_primary is not None and p_primary < alpha
    claims: list[str] = []
    prim = {**primary, "p_family": p_primary, "claimed": gate, "members": []}
    for m in primary["members"]:
        ok = gate and m["p_value"] is not None and m["p_value"] < alpha
        prim["members"].append({**m, "p_final": m["p_value"], "claimed": ok})
        if ok:
            claims.append(f"{primary['family']}: {m['name']}")
    fam_ps = [family_p(f) for f in secondary]
    fam_adj = holm(fam_ps)
    sec = []
    for fam, p, adj in zip(secondary, fam_ps, fam_adj, strict=True):
        members = []
        for m in fam["members"]:
            final = None if m["p_value"] is None or adj is None else max(m["p_value"], adj)
            ok = gate and final is not None and final < alpha
            members.append({**m, "p_final": final, "claimed": ok})
            if ok:
                claims.append(f"{fam['family']}: {m['name']}")
        claimed = any(m["claimed"] for m in members)
        sec.append(
            {**fam, "p_family": p, "p_family_adjusted": adj, "claimed": claimed, "members": members}
        )
    return {"alpha": alpha, "gate_open": gate, "primary": prim, "secondary": sec, "claims": claims}
