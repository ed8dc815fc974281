"""Attribution patching's numbers (numpy and scipy only): the normalized effects, Spearman ρ of
the estimates against exact patching, and sign-flip tests over pairs with Holm's correction.

Normalized as the routing controls' recovery is (`causal_routing`): means over the pairs first,
(mean metric change) / (mean partner metric − mean base metric), so 1 = the partner's own
preference reached, 0 = the base run's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from opcircuits.analysis.inference import holm
from opcircuits.errors import OpcircuitsError


def normalized(changes: np.ndarray, base: np.ndarray, partner: np.ndarray) -> np.ndarray:
    """Per component (columns of `changes` [pairs, C], metric changes): the normalized mean."""
    denom = float(np.mean(partner) - np.mean(base))
    if not np.isfinite(denom) or denom == 0.0:
        return np.full(changes.shape[1], np.nan)
    return changes.mean(0) / denom


def graddrop_estimate(plain: np.ndarray, per_block: np.ndarray, own: np.ndarray) -> np.ndarray:
    """AtP*'s GradDrop combination (Kramár et al. 2024, §3.2) of normalized estimates: per
    component the mean over blocks of |estimate with that block's gradient dropped| (`per_block`
    [L, C]), signed as the plain estimate. A head or MLP (`own` True) gets 0 when its own block
    is dropped, so its mean is over the L − 1 others, as in the paper; a residual position over
    all L. The absolute values are taken after the mean over pairs, so the estimate counters
    cancellation between paths inside the network, which is what the comparison with the mean
    exact effect is about."""
    L = per_block.shape[0]
    counts = np.where(own, L - 1, L).clip(min=1)
    return np.where(plain < 0, -1.0, 1.0) * np.abs(per_block).sum(0) / counts


def spearman(estimate: np.ndarray, exact: np.ndarray) -> float | None:
    """Spearman ρ of two vectors (None with fewer than 3 values or a constant one)."""
    ok = np.isfinite(estimate) & np.isfinite(exact)
    a, b = estimate[ok], exact[ok]
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(stats.spearmanr(a, b).statistic)


def sign_flip_p(changes: np.ndarray, flips: int, seed: int) -> np.ndarray:
    """Two-sided p per column of `changes` [pairs, C] for mean ≠ 0: under no effect a pair's
    change is as likely negative as positive, so random sign flips of the pairs give the null
    (the same flips for every column; (1 + #|null| ≥ |observed|) / (1 + flips))."""
    X = np.asarray(changes, dtype=np.float64)
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(flips, X.shape[0]))
    observed = np.abs(X.mean(0))
    null = np.abs(signs @ X) / X.shape[0]  # [flips, C]
    return (1.0 + (null >= observed[None] - 1e-12).sum(0)) / (1.0 + flips)


def verified(changes: np.ndarray, flips: int, seed: int, alpha: float) -> list[dict[str, Any]]:
    """Per verified component (columns of the exact metric changes [pairs, C]): its sign-flip p,
    Holm-adjusted over the columns, and whether it is confirmed at `alpha`."""
    if changes.shape[1] == 0:
        return []
    p = sign_flip_p(changes, flips, seed)
    adjusted = holm([float(x) for x in p])
    return [
        {"p": float(raw), "p_holm": float(adj), "confirmed": bool(adj < alpha)}
        for raw, adj in zip(p, adjusted, strict=True)
    ]


# What the analysis report reads of attribution.json (the sentences are recomputed from these)
REPORT_KEYS = ("n_pairs", "n_components", "alpha", "check")
CHECK_KEYS = ("n_verified", "spearman", "components")
COMPONENT_KEYS = ("kind", "segment", "layer", "head", "token", "exact", "p_holm", "confirmed")


def load_result(path: str | Path) -> dict[str, Any]:
    """attribution.json of a finished `opcircuits attribute` (the file or its folder), with the
    fields the report reads checked: read before the analysis, so a bad file stops it at once."""
    from opcircuits.files import read_json_object

    path = Path(path)
    file = path / "attribution.json" if path.is_dir() else path
    if not file.is_file():
        raise OpcircuitsError("no attribution.json: not a finished `opcircuits attribute` "
                              "output", path=path, field="attribution")  # fmt: skip
    result = read_json_object(file)
    check = result.get("check")
    missing = [k for k in REPORT_KEYS if k not in result]
    missing += [f"check.{k}" for k in CHECK_KEYS if not isinstance(check, dict) or k not in check]
    if not missing and not isinstance(check["components"], list):
        missing.append("check.components (a list)")
    if not missing:
        missing += [
            f"check.components[{i}].{k}"
            for i, c in enumerate(check["components"])
            for k in COMPONENT_KEYS
            if not isinstance(c, dict) or k not in c
        ][:1]
    if missing:
        raise OpcircuitsError(f"not an attribution.json (lacks {', '.join(missing)})",
                              path=file, field="attribution")  # fmt: skip
    return result


def report_section(result: dict[str, Any], source: str) -> dict[str, Any]:
    """The report's `attribution`: what the sentences need, and where it came from."""
    out = {k: result[k] for k in REPORT_KEYS}
    out["graddrop"] = bool(result.get("graddrop", False))
    out["source"] = source
    return out
