"""The causal sweep's tests: which intervention changes the model, which depends on the category,
and which bounds its effect near 0 (`analysis.causal` builds the matrices; this module tests them).

- `family_p`: step-down Westfall–Young maxT (1993) over the sweep on studentized paired
  statistics (t of the mean clean − intervened difference). Exact sign flips by problem: under
  "this intervention leaves the distribution of the paired differences symmetric about 0" a
  problem's clean and intervened runs are exchangeable, so each problem's signs flip together
  (the same flip for every intervention, which keeps their dependence). Studentizing puts a
  one-sided 20/600 drop and a truncation that breaks most answers on one scale (raw means let
  the large one's null swamp the small one); step-down rejects the largest first and compares
  the rest with the maximum over the remaining interventions only.
- `interaction_p`: category labels permuted across problems (the same permutation for every
  intervention); the statistic is the Welch t of one category's mean effect minus another's,
  its null the maximum |t| over interventions × category pairs, step-down. The accuracy drop is
  tested on the problems the clean run answers correctly (the break rate), so a category with
  more correct answers to lose does not by itself make an interaction.
- `crossovers`: claimed interactions of opposite sign on the same pair of categories (site A
  matters more for category X, site B more for Y): the double dissociation.
- `no_effect`: Schuirmann's (1987) TOST per intervention with bound ±δ, Holm over the sweep, so
  "no effect" is said only where the effect is shown to lie within ±δ; "dispensable" (δ =
  `DISPENSABLE`) is corrected by Holm within each `routing_family` (the claims the routing
  sentences make of one control), not over the whole sweep.
"""

from __future__ import annotations

import itertools
import re

import numpy as np

from opcircuits.analysis.inference import holm, step_down_max_t, tost_p

# The equivalence bounds of "no effect": accuracy (share of problems) and log-prob (nats).
DELTA = {"drop": 0.05, "logp_drop": 0.1}
# The tighter bound of "dispensable" (a thought's content, a truncation): the accuracy drop is
# shown to lie within ±0.02.
DISPENSABLE = 0.02
_FLOOR = 1e-12  # a variance of 0 (every difference equal) must not divide by 0


def _abs_t(sums: np.ndarray, squares: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """|t| of means from sums, sums of squares and counts (broadcast alike); NaN for n < 2."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts
        var = np.clip((squares - counts * mean**2) / (counts - 1), 0.0, None)
        t = np.abs(mean) / np.sqrt(np.maximum(var, _FLOOR) / counts)
    return np.where(counts >= 2, t, np.nan)


def family_p(X: np.ndarray, n_flips: int, seed: int) -> np.ndarray:
    """Step-down maxT p-values of the paired differences X [I, n] (NaN where absent), two-sided,
    over all I interventions; NaN for an intervention with fewer than 2 problems."""
    if X.size == 0:
        return np.full(len(X), np.nan)
    present = ~np.isnan(X)
    Xz = np.where(present, X, 0.0)
    n, squares = present.sum(1), (Xz**2).sum(1)  # sign flips leave the squares unchanged
    observed = _abs_t(Xz.sum(1), squares, n)
    rng = np.random.default_rng([seed, 7])
    flips = rng.choice(np.array([-1.0, 1.0]), size=(n_flips, X.shape[1]))
    null = _abs_t(Xz @ flips.T, squares[:, None], n[:, None])  # [I, R]
    return step_down_max_t(observed, null)


def _pair_t(Xz: np.ndarray, present: np.ndarray, onehot: np.ndarray, pairs: list) -> np.ndarray:
    """Welch |t| of category a's mean minus b's, per intervention × pair: [I, P]."""
    s, q, c = Xz @ onehot, (Xz**2) @ onehot, present.astype(np.float64) @ onehot
    with np.errstate(invalid="ignore", divide="ignore"):
        m = s / c
        v = np.clip((q - c * m**2) / (c - 1), 0.0, None) / c
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.abs(m[:, a] - m[:, b]) / np.sqrt(np.maximum(v[:, a] + v[:, b], _FLOOR))
    ok = (c[:, a] >= 2) & (c[:, b] >= 2)
    return np.where(ok, t, np.nan)


def interaction_p(
    X: np.ndarray, cats: np.ndarray, n_cats: int, n_perm: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per intervention × category pair (itertools.combinations order): the difference of means
    (a − b) and its step-down maxT p-value under category labels permuted across problems.
    X [I, n] (NaN where absent), `cats[j]` problem j's category index."""
    pairs = list(itertools.combinations(range(n_cats), 2))
    if X.size == 0 or not pairs:
        return np.full((len(X), len(pairs)), np.nan), np.full((len(X), len(pairs)), np.nan)
    present = ~np.isnan(X)
    Xz = np.where(present, X, 0.0)
    onehot = np.eye(n_cats)[cats]
    with np.errstate(invalid="ignore", divide="ignore"):
        m = (Xz @ onehot) / (present.astype(np.float64) @ onehot)
    diff = m[:, [a for a, _ in pairs]] - m[:, [b for _, b in pairs]]
    observed = _pair_t(Xz, present, onehot, pairs).ravel()
    rng = np.random.default_rng([seed, 13])
    null = np.empty((observed.size, n_perm))
    for r in range(n_perm):
        null[:, r] = _pair_t(Xz, present, onehot[rng.permutation(len(cats))], pairs).ravel()
    return diff, step_down_max_t(observed, null).reshape(diff.shape)


def crossovers(rows: list[dict], measure: str = "drop") -> list[dict]:
    """Claimed interactions with a claimed opposite-sign partner on the same category pair."""
    claimed = [r for r in rows if r.get(f"{measure}_claimed")]
    out = []
    for r in claimed:
        partner = [
            x["intervention"]
            for x in claimed
            if (x["a"], x["b"]) == (r["a"], r["b"])
            and np.sign(x[f"{measure}_correct"]) == -np.sign(r[f"{measure}_correct"])
        ]
        if partner:
            out.append({"intervention": r["intervention"], "a": r["a"], "b": r["b"],
                        "partners": partner})  # fmt: skip
    return out


def no_effect(
    X: np.ndarray,
    measure: str,
    alpha: float = 0.05,
    delta: float | None = None,
    families: list[str] | None = None,
) -> tuple[list, list]:
    """Per intervention: the TOST p-value of |mean| < δ (DELTA[measure] unless given) and
    whether "no effect" holds after Holm over the sweep (or within each of `families`, one
    label per intervention)."""
    bound = DELTA[measure] if delta is None else delta
    ps = [tost_p(row, bound) for row in X]
    groups = families or ["sweep"] * len(ps)
    adjusted: list[float | None] = [None] * len(ps)
    for name in dict.fromkeys(groups):
        members = [i for i, g in enumerate(groups) if g == name]
        for i, a in zip(members, holm([ps[i] for i in members]), strict=True):
            adjusted[i] = a
    return ps, [a is not None and a < alpha for a in adjusted]


def routing_family(kind: str, sites: str | None) -> str:
    """The family a "dispensable" claim is corrected within: the joint content ablations of a
    block of thoughts, each routing control's kind (truncate_pos, knockout, path), and every
    other kind on its own."""
    if kind in ("zero", "mean", "resample") and sites and re.match(r"latent_\d+-\d+@", sites):
        return "joint"
    return kind
