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
of that difference (the categories are resampled independently) and the category-label
permutation test of `causal_stats` (which also holds the sweep's family-wise p-values and TOST).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from opcircuits.analysis import causal_stats
from opcircuits.analysis.causal_check import check_result
from opcircuits.analysis.causal_erasure import METHOD as ERASURE_METHOD
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


MATRICES = {  # measure → (column, paired with the clean run)
    "accuracy": ("correct", False),
    "drop": ("correct", True),
    "logp_drop": ("logp_gold", True),
    "changed": ("changed", False),
    "follows_source": ("follows_source", False),
}
ALPHA = 0.05


@dataclass
class Sweep:
    """The table as matrices: interventions in table order, problems in id order (so resamples
    do not depend on the table's row order), grouped by category."""

    labels: list[str]
    cats: list[str]
    ids: dict[str, np.ndarray]
    all_ids: np.ndarray
    clean: pd.DataFrame
    rows: pd.DataFrame
    info: pd.DataFrame
    pivots: dict[str, pd.DataFrame]

    def matrix(self, column: str, cat_ids: np.ndarray, clean_minus: bool) -> np.ndarray:
        """[I, n]: per intervention and problem, the (paired) value, NaN where absent."""
        if column not in self.rows.columns:
            return np.full((len(self.labels), len(cat_ids)), np.nan)
        if column not in self.pivots:
            rows = self.rows
            values = pd.to_numeric(rows[column].astype(object).where(rows[column].notna()))
            frame = pd.DataFrame(
                {"intervention": rows["intervention"], "id": rows["id"], "v": values}
            )
            self.pivots[column] = frame.pivot_table(
                index="intervention", columns="id", values="v", aggfunc="first", dropna=False
            ).reindex(index=self.labels, columns=self.all_ids)
        piv = self.pivots[column].reindex(columns=cat_ids).to_numpy(dtype=np.float64)
        if clean_minus:
            base = pd.to_numeric(self.clean[column].reindex(cat_ids)).to_numpy(dtype=np.float64)
            piv = base[None, :] - piv
        return piv


def sweep(table: pd.DataFrame) -> Sweep:
    check_table(table)
    table = table.copy()
    table["category"] = table["category"].fillna("unknown").astype(str)
    clean = table[table["kind"] == "none"].drop_duplicates("id").set_index("id")
    cats = sorted(clean["category"].unique())
    ids = {c: np.sort(clean.index[clean["category"] == c].to_numpy()) for c in cats}
    labels = [x for x in dict.fromkeys(table["intervention"]) if x != "none"]
    rows = table[table["kind"] != "none"]
    describe = [c for c in DESCRIBE if c in table.columns]
    info = rows.drop_duplicates("intervention").set_index("intervention")[describe]
    all_ids = np.concatenate([ids[c] for c in cats])
    return Sweep(labels, cats, ids, all_ids, clean, rows, info, {})


def _aggregate(sw: Sweep, boot: Boot) -> tuple[dict, dict, dict]:
    """Per category (and `all`, the categories' resamples together: a stratified bootstrap of
    the pooled mean): bootstrap means [I, R] and means [I] of every measure, and counts."""
    per_cat: dict[str, dict[str, np.ndarray]] = {}
    means: dict[str, dict[str, np.ndarray]] = {}
    counts: dict[str, np.ndarray] = {}
    for cat in [*sw.cats, ALL]:
        cat_ids = sw.all_ids if cat == ALL else sw.ids[cat]
        W = (
            np.concatenate([boot.weights[c] for c in sw.cats], 1)
            if cat == ALL
            else boot.weights[cat]
        )
        per_cat[cat], means[cat] = {}, {}
        for name, (column, paired) in MATRICES.items():
            X = sw.matrix(column, cat_ids, paired)
            present = ~np.isnan(X)
            counts.setdefault(cat, present.sum(1))
            Xz = np.where(present, X, 0.0)
            # Bootstrap mean over the problems present (patch rows exist only where a source does).
            with np.errstate(invalid="ignore", divide="ignore"):
                per_cat[cat][name] = (Xz @ W.T) / (present.astype(np.float64) @ W.T)
                means[cat][name] = Xz.sum(1) / present.sum(1)
        clean_acc = sw.clean["correct"].reindex(cat_ids).astype(np.float64).mean()
        per_cat[cat]["_clean_accuracy"] = np.full(len(sw.labels), clean_acc)
    return per_cat, means, counts


def _pooled_tests(sw: Sweep, n_boot: int, seed: int) -> dict[str, list]:
    """Per pooled intervention: family-wise p (step-down studentized sign flips) and TOST (at
    the sweep's "no effect" bound, and at the tighter `DISPENSABLE` bound of the accuracy drop
    that "dispensable" needs)."""
    out: dict[str, list] = {}
    for name in ("drop", "logp_drop"):
        X = sw.matrix(MATRICES[name][0], sw.all_ids, True)
        out[f"{name}_p_family"] = [_num(v) for v in causal_stats.family_p(X, n_boot, seed)]
        out[f"{name}_tost_p"], out[f"{name}_no_effect"] = causal_stats.no_effect(X, name, ALPHA)
        if name == "drop":
            delta = causal_stats.DISPENSABLE
            families = [
                causal_stats.routing_family(
                    str(sw.info.loc[x, "kind"]), _py(sw.info.loc[x].get("sites"))
                )
                for x in sw.labels
            ]
            tost, within = causal_stats.no_effect(X, name, ALPHA, delta, families)
            out["drop_equiv_p"], out["drop_dispensable"] = tost, within
    return out


def routing(
    table: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """The routing controls' own measures (`causal_routing`): normalized recovery of the
    patching interventions (pooled, per category, per changed step) and the position effect of
    truncation, with the same bootstrap resamples as `effects`."""
    from opcircuits.analysis import causal_routing

    sw = sweep(table)
    boot = _weights(sw.ids, n_boot, seed)
    W_all = np.concatenate([boot.weights[c] for c in sw.cats], 1)
    return {
        "dispensable_delta": causal_stats.DISPENSABLE,
        "recovery": causal_routing.recovery(sw, boot.weights, level),
        "position_effect": causal_routing.position_effect(sw, W_all, level),
    }


def erasure(
    table: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> list[dict[str, Any]]:
    """Per erased site: LEACE's effect beyond its random-subspace control (`causal_erasure`),
    with the sweep's resamples; [] without erasure rows."""
    from opcircuits.analysis import causal_erasure

    sw = sweep(table)
    boot = _weights(sw.ids, n_boot, seed)
    W_all = np.concatenate([boot.weights[c] for c in sw.cats], 1)
    return causal_erasure.erasure(sw, W_all, n_boot, seed, level)


def effects(
    table: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per intervention × category (and `all`): the paired effects with intervals, and pooled
    the family-wise p-values and equivalence tests; per intervention × pair of categories: the
    interaction (effect on a − effect on b) with its interval and its permutation test.
    Returns (effects, interactions), plain JSON-ready rows."""
    sw = sweep(table)
    boot = _weights(sw.ids, n_boot, seed)
    per_cat, means, counts = _aggregate(sw, boot)
    pooled = _pooled_tests(sw, n_boot, seed)
    out: list[dict[str, Any]] = []
    for i, label in enumerate(sw.labels):
        for cat in [*sw.cats, ALL]:
            row: dict[str, Any] = {"intervention": label, "category": cat}
            row.update({k: _py(v, k) for k, v in sw.info.loc[label].items()})
            row["n"] = int(counts[cat][i])
            row["accuracy_clean"] = _num(per_cat[cat]["_clean_accuracy"][i])
            for name in MATRICES:
                row[name] = _num(means[cat][name][i])
                row[f"{name}_ci"] = list(_interval(per_cat[cat][name][i], level))
            if cat == ALL:
                row.update({k: v[i] for k, v in pooled.items()})
            out.append(row)
    return out, _interactions(sw, per_cat, means, level, n_boot, seed)


def _interactions(
    sw: Sweep, per_cat: dict, means: dict, level: float, n_perm: int, seed: int
) -> list[dict[str, Any]]:
    cat_index = {c: k for k, c in enumerate(sw.cats)}
    codes = np.array([cat_index[sw.clean.loc[i, "category"]] for i in sw.all_ids], dtype=np.int64)
    # The accuracy drop on the problems the clean run answers correctly: the break rate.
    right = sw.clean["correct"].reindex(sw.all_ids).astype(bool).to_numpy()
    drop = sw.matrix("correct", sw.all_ids, True)[:, right]
    tests = {
        "drop": causal_stats.interaction_p(drop, codes[right], len(sw.cats), n_perm, seed),
        "logp_drop": causal_stats.interaction_p(
            sw.matrix("logp_gold", sw.all_ids, True), codes, len(sw.cats), n_perm, seed
        ),
    }
    inter: list[dict[str, Any]] = []
    for i, label in enumerate(sw.labels):
        for k, (a, b) in enumerate(itertools.combinations(sw.cats, 2)):
            row: dict[str, Any] = {"intervention": label, "a": a, "b": b}
            for name in ("drop", "logp_drop", "changed", "follows_source"):
                diff = per_cat[a][name][i] - per_cat[b][name][i]
                row[name] = _num(means[a][name][i] - means[b][name][i])
                row[f"{name}_ci"] = list(_interval(diff, level))
            for name, (d, p) in tests.items():
                row[f"{name}_correct" if name == "drop" else f"{name}_diff"] = _num(d[i, k])
                row[f"{name}_p_family"] = _num(p[i, k])
                row[f"{name}_claimed"] = bool(p[i, k] < ALPHA)
            inter.append(row)
    # Claimed with an opposite-sign claimed partner on the same pair: a double dissociation.
    cross = {
        (r["intervention"], r["a"], r["b"]): r["partners"] for r in causal_stats.crossovers(inter)
    }
    for row in inter:
        row["drop_crossover"] = cross.get((row["intervention"], row["a"], row["b"]), [])
    return inter


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
    "interval of that difference (categories resampled independently, descriptive). The test: "
    "category labels permuted across problems (the same permutation for every intervention), "
    "Welch t of the difference, step-down max-statistic over interventions × category pairs "
    "(`drop_p_family`: on the problems the clean run answers correctly, the break rate; "
    "`logp_drop_p_family`: on all problems). An operation-specific effect is one that passes "
    "(`drop_claimed`); `drop_crossover` names interventions that pass with the opposite sign on "
    "the same pair (a double dissociation).",
    "routing": "Routing controls. Truncation twice: eot and the answer right after the k kept "
    "thoughts (natural positions) and at the position ids they have after K thoughts "
    "(`truncate_pos`, the skipped steps leave no keys), so only the thoughts differ; their paired "
    "difference is the position effect. Joint content ablations: latent_{k+1} … latent_K "
    "mean/zero/resampled together at the input (layer 0: the fed-back vector only, the target's "
    "position embedding kept) and at every layer, positions unchanged. Attention knockouts: the "
    "attention logits of a query segment (eot + answer tokens, a thought, all thoughts) to a key "
    "set (question, bot, a thought, all thoughts) set to -inf, on every layer or named ones, every "
    "head or named ones. Path patching: the partner's prompt (question + bot keys and values, "
    "and bot's final state) read by the thoughts only, the answer only, or all segments. "
    "'Dispensable' needs TOST within ±0.02 accuracy (`drop_equiv_p`; `drop_dispensable`: Holm "
    "within the control's family — the joint content ablations, the position-preserved "
    "truncations, the knockouts, the paths, each other kind); 'needed' a family-wise claim "
    "(step-down max-T over the whole sweep).",
    "recovery": "Logit difference LD = log p(partner's answer) − log p(problem's answer), "
    "teacher-forced (whole answer; and at the first answer token where they differ). Normalized "
    "recovery of a patching intervention = (LD − LD_clean) / (LD_partner − LD_clean), means over "
    "problems first (Heimersheim & Nanda 2024): 0 = the problem's own run, 1 = the partner's "
    "own run (measured in its own batch); with the problem as the clean run it is the damage of "
    "noising with the partner's states. Bootstrap intervals with the sweep's resamples; pooled, "
    "per category and per changed step.",
    "erasure": ERASURE_METHOD,
    "log_prob": "log p of the gold answer's value tokens and EOS, teacher-forced after the "
    "(intervened) thoughts through the answer prompt of training: eot [eos] 'The answer is: N' "
    "eos.",
    "multiple_tests": "Pooled over categories, each intervention has a family-wise p-value for "
    "its accuracy drop and for its log-prob drop (`*_p_family`): Westfall & Young's step-down "
    "max-statistic over the whole sweep on studentized paired differences (t of the mean), the "
    "signs of a problem's differences flipped together (as many flips as bootstrap resamples). "
    "The null is that an intervention leaves each problem's paired difference symmetric about "
    "0 (no systematic change of that measure), not that nothing changes. An effect with "
    "p_family < 0.05 is claimed with the sweep's family-wise error rate held at 5% in the "
    "strong sense. 'No effect' (`*_no_effect`) is said only where Schuirmann's two one-sided "
    "tests (`*_tost_p`) bound the mean within ±δ (δ = 0.05 accuracy, 0.1 nats), Holm over the "
    "sweep.",
}


def load_result(path: str | Path) -> dict[str, Any]:
    """interventions.json of a finished `opcircuits intervene` (the file or its folder), for the
    analysis report's Causal tests section, with every field the report reads checked
    (`causal_check`): read before the analysis, so a bad file stops it before any work."""
    from opcircuits.files import read_json_object

    path = Path(path)
    file = path / "interventions.json" if path.is_dir() else path
    if not file.is_file():
        raise OpcircuitsError(
            "no interventions.json: not a finished `opcircuits intervene` output",
            path=path,
            field="interventions",
        )
    result = read_json_object(file)
    missing = [k for k in SECTION_KEYS if k not in result]
    if missing:
        raise OpcircuitsError(
            f"not an interventions.json (lacks {', '.join(missing)})", path=file,
            field="interventions",
        )  # fmt: skip
    check_result(result, file)
    return result


# What the analysis report keeps of interventions.json (not its figures: they are redrawn into
# the report's folder; not its creation time: the report has no timestamps).
SECTION_KEYS = (
    "provenance", "options", "num_latent", "num_layers", "positions", "categories", "clean",
    "thoughts", "effects", "interactions", "notes", "methods",
)  # fmt: skip
# Kept when present (sweeps from before the routing controls lack them).
OPTIONAL_KEYS = ("routing", "erasure")


def report_section(result: dict[str, Any], source: str, manifest: dict[str, Any]) -> dict:
    """The report's `causal_tests`: interventions.json's numbers, where they came from, and
    whether they came from the analyzed store's model and problems (hashes compared)."""
    section = {k: result[k] for k in SECTION_KEYS}
    section.update({k: result[k] for k in OPTIONAL_KEYS if k in result})
    section["provenance"] = {k: v for k, v in result["provenance"].items() if k != "created"}
    prov = section["provenance"]
    same = {
        "model": prov.get("weights_sha256") == manifest.get("weights_sha256"),
        "problems": prov.get("data_sha256") == manifest.get("dataset_sha256"),
    }
    section["source"] = source
    section["same_as_store"] = same
    return section
