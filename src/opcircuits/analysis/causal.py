"""Causal-test statistics: what each intervention did, per category, paired with the clean run.

Input: the intervention table, one row per problem × intervention (`interventions.parquet`),
with at least the columns `id`, `category`, `intervention`, `kind`, `correct`, `logp_gold`,
`changed` (and `follows_source`, `logp_source` for patching). Each problem's clean run is its
row with kind `none`.

Every effect is a mean over problems of a *paired* difference — the clean run's value minus the
intervened one on the same problem: the accuracy drop (clean correct − correct), the log-prob
drop of the gold answer (clean − intervened), the share of answers that changed, and for
patching the share that became the source's answer. Intervals are percentile bootstrap intervals
over problems, resampled within each category; the same resamples serve every intervention
(common random numbers), so two interventions, or two categories, are compared on equal terms.

The operation-specific claim is an *interaction*: the effect on one category minus the effect on
another (e.g. the drop on pure multiplication minus the drop on pure addition), with the interval
of that difference (the categories are resampled independently).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from opcircuits.errors import OpcircuitsError

ALL = "all"  # the pooled category
MEASURES = ("drop", "logp_drop", "changed", "follows_source", "accuracy")
REQUIRED = ("id", "category", "intervention", "kind", "correct", "logp_gold", "changed")
# What describes an intervention (copied to every aggregate row when present in the table).
DESCRIBE = ("kind", "sites", "position", "layer", "alpha", "direction", "thoughts")


@dataclass(frozen=True)
class Boot:
    """Bootstrap resampling weights per category: counts [R, n] over that category's problems."""

    ids: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]


def _weights(ids: dict[str, np.ndarray], n_boot: int, seed: int) -> Boot:
    out = {}
    for k, (cat, members) in enumerate(sorted(ids.items())):
        rng = np.random.default_rng([seed, k])
        n = len(members)
        out[cat] = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    return Boot(ids, out)


def _interval(boot: np.ndarray, level: float) -> tuple[float | None, float | None]:
    """Percentile interval of bootstrap means [..., R] (None where a mean is undefined)."""
    if boot.size == 0 or np.isnan(boot).all():
        return None, None
    lo, hi = np.nanquantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=-1)
    return float(lo), float(hi)


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def check_table(table: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise OpcircuitsError(f"intervention table lacks columns {missing}", field="interventions")
    if not (table["kind"] == "none").any():
        raise OpcircuitsError("intervention table has no clean run (kind 'none')")


def effects(
    table: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per intervention × category (and `all`): the paired effects with intervals; and per
    intervention × pair of categories: the interaction (effect on a − effect on b) with its
    interval. Returns (effects, interactions), plain JSON-ready rows."""
    check_table(table)
    table = table.copy()
    table["category"] = table["category"].fillna("unknown").astype(str)
    clean = table[table["kind"] == "none"].drop_duplicates("id").set_index("id")
    cats = sorted(clean["category"].unique())
    # Problems in id order, so the resamples do not depend on the table's row order.
    ids = {c: np.sort(clean.index[clean["category"] == c].to_numpy()) for c in cats}
    boot = _weights(ids, n_boot, seed)
    # `all`: the categories' resamples together (a stratified bootstrap of the pooled mean).
    all_ids = np.concatenate([ids[c] for c in cats])

    labels = [x for x in dict.fromkeys(table["intervention"]) if x != "none"]
    rows = table[table["kind"] != "none"]
    describe = [c for c in DESCRIBE if c in table.columns]
    info = rows.drop_duplicates("intervention").set_index("intervention")[describe]

    pivots: dict[str, pd.DataFrame] = {}

    def matrix(column: str, cat_ids: np.ndarray, clean_minus: bool) -> np.ndarray:
        """[I, n]: per intervention and problem, the paired value (NaN where absent)."""
        if column not in rows.columns:
            return np.full((len(labels), len(cat_ids)), np.nan)
        if column not in pivots:
            values = pd.to_numeric(rows[column].astype(object).where(rows[column].notna()))
            frame = pd.DataFrame(
                {"intervention": rows["intervention"], "id": rows["id"], "v": values}
            )
            pivots[column] = frame.pivot_table(
                index="intervention", columns="id", values="v", aggfunc="first", dropna=False
            ).reindex(index=labels, columns=all_ids)
        piv = pivots[column].reindex(columns=cat_ids).to_numpy(dtype=np.float64)
        if clean_minus:
            base = pd.to_numeric(clean[column].reindex(cat_ids)).to_numpy(dtype=np.float64)
            piv = base[None, :] - piv
        return piv

    measures = {
        "accuracy": ("correct", False),
        "drop": ("correct", True),
        "logp_drop": ("logp_gold", True),
        "changed": ("changed", False),
        "follows_source": ("follows_source", False),
    }
    per_cat: dict[str, dict[str, np.ndarray]] = {}  # category → measure → [I, R]
    means: dict[str, dict[str, np.ndarray]] = {}  # category → measure → [I]
    counts: dict[str, np.ndarray] = {}
    for cat in [*cats, ALL]:
        cat_ids = all_ids if cat == ALL else ids[cat]
        W = np.concatenate([boot.weights[c] for c in cats], 1) if cat == ALL else boot.weights[cat]
        per_cat[cat], means[cat] = {}, {}
        for name, (column, paired) in measures.items():
            X = matrix(column, cat_ids, paired)
            present = ~np.isnan(X)
            counts.setdefault(cat, present.sum(1))
            Xz = np.where(present, X, 0.0)
            # Bootstrap mean over the problems present (patch rows exist only where a source does).
            with np.errstate(invalid="ignore", divide="ignore"):
                per_cat[cat][name] = (Xz @ W.T) / (present.astype(np.float64) @ W.T)
                means[cat][name] = Xz.sum(1) / present.sum(1)
        clean_acc = clean["correct"].reindex(cat_ids).astype(np.float64).mean()
        per_cat[cat]["_clean_accuracy"] = np.full(len(labels), clean_acc)

    out: list[dict[str, Any]] = []
    for i, label in enumerate(labels):
        for cat in [*cats, ALL]:
            row: dict[str, Any] = {"intervention": label, "category": cat}
            row.update({k: _py(v, k) for k, v in info.loc[label].items()})
            row["n"] = int(counts[cat][i])
            row["accuracy_clean"] = _num(per_cat[cat]["_clean_accuracy"][i])
            for name in measures:
                row[name] = _num(means[cat][name][i])
                row[f"{name}_ci"] = list(_interval(per_cat[cat][name][i], level))
            out.append(row)

    inter: list[dict[str, Any]] = []
    for i, label in enumerate(labels):
        for a, b in itertools.combinations(cats, 2):
            row = {"intervention": label, "a": a, "b": b}
            for name in ("drop", "logp_drop", "changed", "follows_source"):
                diff = per_cat[a][name][i] - per_cat[b][name][i]
                row[name] = _num(means[a][name][i] - means[b][name][i])
                row[f"{name}_ci"] = list(_interval(diff, level))
            inter.append(row)
    return out, inter


def _py(v: Any, name: str = "") -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    if name in ("layer", "thoughts"):  # integer columns that held a null read back as float
        return int(v)
    return v


def excludes_zero(ci: list[float | None]) -> bool:
    """Whether an interval lies wholly on one side of 0 (a detected effect)."""
    lo, hi = ci
    return lo is not None and hi is not None and (lo > 0 or hi < 0)


METHODS = {
    "effects": "Per intervention and category: the mean over problems of the clean run's value "
    "minus the intervened run's on the same problem (accuracy drop, gold-answer log-prob drop), "
    "the share of answers that changed, and for patching the share that became the source's "
    "gold answer; 95% percentile bootstrap intervals over problems, resampled within category, "
    "the same resamples for every intervention.",
    "interactions": "Effect on category a minus effect on category b, with the bootstrap "
    "interval of that difference (categories resampled independently): an operation-specific "
    "effect is one whose interval excludes 0.",
    "log_prob": "log p of the gold answer's value tokens and EOS, teacher-forced after the "
    "(intervened) thoughts through the answer prompt of training: eot [eos] 'The answer is: N' "
    "eos.",
    "multiple_tests": "A sweep makes many comparisons: at 95%, about 2.5% of intervals exclude "
    "0 on each side by chance when nothing has an effect; the findings give those counts.",
}

VERB = {
    "zero": "Zero-ablating",
    "mean": "Mean-ablating",
    "resample": "Resampling",
    "patch": "Patching the partner's state into",
}
ABLATIONS = ("zero", "mean", "resample")


def _f(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "n/a"
    s = f"{x:.{digits}f}"
    if s.startswith("-") and float(s) == 0:
        s = s[1:]
    return s.replace("-", "−")


def _ci(ci: list[float | None]) -> str:
    return f"CI {_f(ci[0])}…{_f(ci[1])}"


def _cat(name: str) -> str:
    return "all problems" if name == ALL else name.replace("_", " ")


def _site(e: dict[str, Any]) -> str:
    return f"{e['position']} at layer {e['layer']}"


def findings(result: dict[str, Any]) -> dict[str, Any]:
    """The "Causal tests" section: sentences computed from interventions.json's numbers."""
    eff = result["effects"]
    pooled = [e for e in eff if e["category"] == ALL]
    clean = result["clean"][ALL]
    s: list[str] = []
    per_cat = "; ".join(
        f"{_cat(c)} {_f(result['clean'][c]['accuracy'])}" for c in result["categories"]
    )
    s.append(
        f"Clean run: the model answers {_f(clean['accuracy'])} of the {clean['n']} problems "
        f"correctly (Wilson {_ci(clean['ci'])}; {per_cat})."
    )
    if clean["accuracy"] is not None and clean["accuracy"] < 0.05:
        s.append(
            "With so few correct answers, accuracy can hardly drop: expect no accuracy effects; "
            "the gold answer's log-probability is the measure that can still move."
        )

    curve = sorted(
        (t for t in result.get("thoughts", []) if t["category"] == ALL), key=lambda t: t["thoughts"]
    )
    trunc = sorted((e for e in pooled if e["kind"] == "truncate"), key=lambda e: e["thoughts"])
    if trunc and curve:
        points = ", ".join(f"{t['thoughts']}: {_f(t['accuracy'])}" for t in curve)
        s.append(f"Accuracy by number of thoughts kept ({result['num_latent']} = all): {points}.")
        zero = trunc[0]
        if excludes_zero(zero["drop_ci"]):
            verdict = "lowers" if zero["drop"] > 0 else "raises"
        else:
            verdict = "does not detectably change"
        s.append(
            f"Going from {result['num_latent']} thoughts to {zero['thoughts']} {verdict} "
            f"accuracy (drop {_f(zero['drop'])}, {_ci(zero['drop_ci'])}; gold log-prob drop "
            f"{_f(zero['logp_drop'])}, {_ci(zero['logp_drop_ci'])})."
        )

    single = [e for e in pooled if e["kind"] in ABLATIONS and e.get("position") is not None]
    if single:
        hits = sorted(
            (e for e in single if e["drop_ci"][0] is not None and e["drop_ci"][0] > 0),
            key=lambda e: -e["drop"],
        )
        chance = 0.025 * len(single)
        if hits:
            for e in hits[:3]:
                s.append(
                    f"{VERB[e['kind']]} {_site(e)} lowers accuracy by {_f(e['drop'])} "
                    f"({_ci(e['drop_ci'])}; answers changed {_f(e['changed'])})."
                )
            s.append(
                f"{len(hits)} of {len(single)} single-site ablations lower accuracy with an "
                f"interval above 0 (about {_f(chance, 1)} would by chance if none mattered)."
            )
        else:
            big = max(single, key=lambda e: abs(e["drop"] or 0))
            s.append(
                f"No single-site ablation changed accuracy by more than {_f(abs(big['drop']))}, "
                f"and none detectably (largest: {VERB[big['kind']].lower()} {_site(big)}, "
                f"{_f(big['drop'])}, {_ci(big['drop_ci'])})."
            )
        lp = [e for e in single if e["logp_drop"] is not None]
        if lp:
            top = max(lp, key=lambda e: e["logp_drop"])
            n_lp = sum(
                1 for e in lp if e["logp_drop_ci"][0] is not None and e["logp_drop_ci"][0] > 0
            )
            s.append(
                f"The gold answer's log-probability drops most when {VERB[top['kind']].lower()} "
                f"{_site(top)} ({_f(top['logp_drop'])} nats, {_ci(top['logp_drop_ci'])}); "
                f"{n_lp} of {len(lp)} single-site ablations lower it with an interval above 0."
            )

    patch = [e for e in pooled if e["kind"] == "patch" and e["follows_source"] is not None]
    if patch:
        best = max(patch, key=lambda e: e["follows_source"])
        where = _site(best) if best.get("position") else best["intervention"]
        s.append(
            f"Patching a counterfactual partner's state makes the model give the partner's "
            f"answer in at most {_f(best['follows_source'])} of problems ({where}, "
            f"{_ci(best['follows_source_ci'])}; {best['n']} problems with a partner)."
        )

    tested = [
        x
        for x in result["interactions"]
        if any(
            e["intervention"] == x["intervention"] and e["kind"] in (*ABLATIONS, "patch")
            for e in pooled
        )
    ]
    if tested:
        by_label = {(e["intervention"], e["category"]): e for e in eff}
        hits = sorted(
            (x for x in tested if excludes_zero(x["drop_ci"])), key=lambda x: -abs(x["drop"])
        )
        for x in hits[:3]:
            a, b = by_label[x["intervention"], x["a"]], by_label[x["intervention"], x["b"]]
            hi, lo = (a, b) if x["drop"] > 0 else (b, a)
            lo_ci, hi_ci = x["drop_ci"]
            diff_ci = [lo_ci, hi_ci] if x["drop"] > 0 else [-hi_ci, -lo_ci]  # larger − smaller
            what = (
                f"{VERB[a['kind']]} {_site(a)}" if a.get("position") else f"`{x['intervention']}`"
            )
            s.append(
                f"{what} lowers accuracy on {_cat(hi['category'])} by {_f(hi['drop'])} "
                f"({_ci(hi['drop_ci'])}) and on {_cat(lo['category'])} by {_f(lo['drop'])} "
                f"({_ci(lo['drop_ci'])}); the difference, {_f(abs(x['drop']))} "
                f"({_ci(diff_ci)}), is operation-specific."
            )
        chance = 0.05 * len(tested)
        if hits:
            s.append(
                f"{len(hits)} of {len(tested)} category-pair comparisons of accuracy drops "
                f"exclude 0 (about {_f(chance, 1)} would by chance)."
            )
        else:
            s.append(
                f"No effect is operation-specific: none of {len(tested)} category-pair "
                "comparisons of accuracy drops has an interval excluding 0."
            )

    steer = [e for e in pooled if e["kind"] == "steer" and e["alpha"] is not None]
    if steer:
        amax = max(abs(e["alpha"]) for e in steer)
        for e in sorted(steer, key=lambda e: (e["direction"] != "diff", e["alpha"])):
            if abs(e["alpha"]) != amax or e["direction"] != "diff":
                continue
            ctrl = next(
                (r for r in steer if r["direction"] == "random" and r["alpha"] == e["alpha"]
                 and r["sites"] == e["sites"]),
                None,
            )  # fmt: skip
            text = (
                f"Steering {e['sites']} by α = {_f(e['alpha'], 1)} along the category direction "
                f"changes {_f(e['changed'])} of answers (accuracy drop {_f(e['drop'])}, "
                f"{_ci(e['drop_ci'])})"
            )
            if ctrl is not None:
                text += (
                    f"; a random direction of the same length changes {_f(ctrl['changed'])} "
                    f"(drop {_f(ctrl['drop'])}, {_ci(ctrl['drop_ci'])})"
                )
            s.append(text + ".")
    return {"title": "Causal tests", "sentences": s}
