"""Corrected inference: what the summary may claim, with the family-wise error rate controlled in
the strong sense (at most α under any configuration of true and false nulls).

- `max_statistic`: the family-wise permutation test (Westfall & Young 1993, step-down maxT). Every
  member of a family (a probe on a view, a token × layer cell) is refitted on the same permuted
  labels; each permutation's maximum over the members not yet rejected is the null of "the best
  remaining member". `step_down_max_t` is the same on arrays (the causal sweep uses it).
- `holm`: Holm's (1979) step-down adjustment of a list of p-values.
- `corrected_t_p`: the one-sided p-value of the Nadeau–Bengio corrected resampled t-statistic
  (the test behind the intervals of paired differences); never 0 (a variance of 0 is floored).
- `tost_p`: Schuirmann's (1987) two one-sided tests: p for "the mean lies within ±δ".
- `decide`: the report's multiple-testing procedure, a closed procedure in two stages.
  Stage 1 (the gate): H_P, "no permutation-tested probe or cell decodes the category", is tested
  by the primary family's max-statistic at α; if it stands, nothing is claimed. Stage 2: one
  strong-FWER procedure at α over every member: the primary members (which probes decode) and
  every member of every secondary family pooled, as a graph of two nodes (Bretz et al. 2009):
  the primary block gets α/2 (step-down maxT p-values), the secondary block α/2 (Holm over all
  its members' raw p-values), and a block all of whose members are rejected passes its α to
  the other. With a single (pre-registered) primary member that member is H_P itself, so the
  secondary block gets the whole α once the gate opens (a fixed sequence). Why strong: when H_P
  is true, any claim needs the gate, which opens with probability ≤ α; when H_P is false the
  gate makes no false claim and stage 2 is a closed procedure at α on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05


def step_down_max_t(observed: np.ndarray, null: np.ndarray, step_down: bool = True) -> np.ndarray:
    """Westfall–Young maxT adjusted p-values. `observed[m]`: member m's statistic (larger = more
    extreme; NaN: not tested, p NaN); `null[m, b]`: the same after resample b, the same resamples
    for every member. Member m's p is (1 + #{b: max over the members ranked at or below m reaches
    observed[m]}) / (1 + B), made monotone in rank (step-down); with `step_down=False` the max is
    over the whole family (single-step)."""
    obs = np.round(np.asarray(observed, dtype=np.float64), 12)  # float noise must not decide ties
    nul = np.round(np.asarray(null, dtype=np.float64), 12)
    out = np.full(obs.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(obs))
    if ok.size == 0:
        return out
    order = ok[np.argsort(-obs[ok], kind="stable")]
    block = np.where(np.isnan(nul[order]), -np.inf, nul[order])
    if step_down:
        # Row r: the maximum over the members ranked r and below (those not yet rejected).
        peaks = np.maximum.accumulate(block[::-1], axis=0)[::-1]
    else:
        peaks = np.broadcast_to(block.max(axis=0), block.shape)
    p = (1.0 + (peaks >= obs[order][:, None]).sum(1)) / (block.shape[1] + 1.0)
    out[order] = np.maximum.accumulate(p) if step_down else p
    return out


def max_statistic(
    observed: dict[str, float], null: dict[str, np.ndarray], step_down: bool = True
) -> dict[str, float]:
    """Family-wise corrected p-values of named members (see `step_down_max_t`).

    `observed[m]` is member m's statistic on the true labels; `null[m][b]` the same statistic
    after permutation b (the same permutations for every member)."""
    names = list(observed)
    if not names:
        return {}
    p = step_down_max_t(
        np.array([observed[m] for m in names], dtype=np.float64),
        np.stack([np.asarray(null[m], dtype=np.float64) for m in names]),
        step_down,
    )
    return {m: float(v) for m, v in zip(names, p, strict=True)}


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


def corrected_t_p(
    differences: np.ndarray, test_fraction: float, resolution: float | None = None
) -> float | None:
    """One-sided p for mean(differences) > 0 under the corrected resampled t-test.

    Equal differences (variance 0) say nothing about the spread a new split would show, so the
    variance is floored at that of one fold moving by `resolution` (one test problem's share of
    accuracy; |mean| when not given): the p-value is small but never 0."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size < 2:
        return None
    mean = float(d.mean())
    step = abs(mean) if resolution is None else resolution
    s2 = float(d.var(ddof=1))
    if s2 == 0:
        s2 = step**2 / d.size
    if s2 == 0:  # every difference 0: no evidence either way
        return 0.5
    t = mean / math.sqrt((1.0 / d.size + test_fraction) * s2)
    return float(stats.t.sf(t, d.size - 1))


def tost_p(differences: np.ndarray, delta: float) -> float | None:
    """Schuirmann's two one-sided tests for paired differences: the p-value of "the mean lies in
    (−δ, δ)" (the larger of the two one-sided t-test p-values). None with fewer than 2 values."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[~np.isnan(d)]
    if d.size < 2:
        return None
    mean = float(d.mean())
    se = math.sqrt(max(float(d.var(ddof=1)), 1e-12) / d.size)
    lower = stats.t.sf((mean + delta) / se, d.size - 1)  # H0: mean ≤ −δ
    upper = stats.t.cdf((mean - delta) / se, d.size - 1)  # H0: mean ≥ δ
    return float(max(lower, upper))


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


W_PRIMARY = 0.5  # stage 2's share of α for the primary block (the rest: the secondary block)
PROCEDURE = (
    "gate H_P (primary max-statistic at α), then a two-node graph (Bretz et al. 2009): primary "
    "members step-down maxT at α/2, all secondary members pooled Holm at α/2, a fully rejected "
    "node passing its α to the other; strong FWER ≤ α over every member"
)


def _tested(members: list[dict], key: str = "p_value") -> list[float]:
    return [m[key] for m in members if m.get(key) is not None]


def _raw(m: dict) -> float | None:
    return m.get("p_raw", m["p_value"])


def _final_p(
    p: float, p_gate: float, other_max: float | None, w: float, fixed_sequence: bool = False
) -> float:
    """The smallest α at which a member with block-adjusted p-value `p` is claimed: the gate
    (p_gate ≤ α), and p ≤ wα, or the other block wholly rejected (its largest adjusted p
    ≤ (1 − w)α) and p ≤ α. `fixed_sequence`: the other block is H_P alone (passed by the gate)."""
    if other_max is None or fixed_sequence:
        return max(p_gate, p)
    return max(p_gate, min(p / w, max(p, other_max / (1.0 - w))))


def decide(primary: dict, secondary: list[dict], alpha: float = ALPHA) -> dict:
    """Apply the two-stage procedure (see the module docstring).

    `primary` and each entry of `secondary` are {"family", "members": [{"name", "p_value"}]}:
    a primary member's `p_value` is its max-statistic p over the primary family; a secondary
    member's `p_raw` (else `p_value`) is its own p-value, pooled with every other secondary
    member's (None: not tested). Returns the families with `p_family` (their smallest member
    p), `p_final` per member (the procedure's adjusted p: claimed when below α), `claimed`
    flags, and the list of claims in order."""
    prim_ps = _tested(primary["members"])
    p_gate = min(prim_ps) if prim_ps else None
    gate = p_gate is not None and p_gate < alpha
    pooled = [(i, j, _raw(m)) for i, f in enumerate(secondary) for j, m in enumerate(f["members"])]
    pooled = [x for x in pooled if x[2] is not None]
    adj = dict(zip([(i, j) for i, j, _ in pooled], holm([p for *_, p in pooled]), strict=True))
    sec_max = max(adj.values()) if adj else None
    single = len(prim_ps) == 1
    claims: list[str] = []
    prim = {**primary, "p_family": p_gate, "claimed": gate, "members": []}
    for m in primary["members"]:
        final = None
        if m["p_value"] is not None and p_gate is not None:
            final = _final_p(m["p_value"], p_gate, sec_max, W_PRIMARY, single)
        ok = gate and final is not None and final < alpha
        prim["members"].append({**m, "p_final": final, "claimed": ok})
        if ok:
            claims.append(f"{primary['family']}: {m['name']}")
    sec = []
    for i, fam in enumerate(secondary):
        members = []
        for j, m in enumerate(fam["members"]):
            h = adj.get((i, j))
            final = None
            if h is not None and p_gate is not None:
                final = _final_p(h, p_gate, max(prim_ps), 1.0 - W_PRIMARY, single)
            ok = gate and final is not None and final < alpha
            members.append({**m, "p_pooled_holm": h, "p_final": final, "claimed": ok})
            if ok:
                claims.append(f"{fam['family']}: {m['name']}")
        finals = _tested(members, "p_final")
        sec.append(
            {
                **fam,
                "p_family": min(_tested(fam["members"]), default=None),
                "p_family_adjusted": min(finals) if finals else None,
                "claimed": any(m["claimed"] for m in members),
                "members": members,
            }
        )
    return {
        "alpha": alpha,
        "procedure": PROCEDURE,
        "gate_open": gate,
        "primary": prim,
        "secondary": sec,
        "claims": claims,
    }
