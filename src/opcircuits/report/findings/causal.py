"""Sentences of the "Causal tests" section, computed from an intervention sweep's numbers
(`interventions.json` of `opcircuits intervene`, or the analysis report's `causal_tests`).

An effect is claimed ("lowers accuracy") only when its family-wise p-value over the whole sweep
(`analysis.causal_stats`: step-down maxT on studentized sign-flip statistics) is below 0.05; an
operation-specific effect only when its interaction passes the category-label permutation test;
"no effect" only when TOST bounds it within ±δ. Intervals that merely exclude 0 are reported as
uncorrected. When nothing passes, the section says so and gives the largest effect.
"""

from __future__ import annotations

from typing import Any

from opcircuits.analysis.causal_stats import DELTA, DISPENSABLE
from opcircuits.markdown import code, plain_label
from opcircuits.report.findings import causal_erasure, causal_routing
from opcircuits.report.findings.text import Section, num, pval

ALL = "all"  # analysis.causal.ALL: the pooled category
ALPHA = 0.05
VERB = {
    "zero": "Zero-ablating",
    "mean": "Mean-ablating",
    "resample": "Resampling",
    "patch": "Patching the partner's state into",
}
ABLATIONS = ("zero", "mean", "resample")


def _ci(ci: list[float | None]) -> str:
    return f"CI {num(ci[0])}…{num(ci[1])}"


def _cat(name: str) -> str:
    return "all problems" if name == ALL else plain_label(name)


def _site(e: dict[str, Any]) -> str:
    return f"{code(e['position'])} at layer {e['layer']}"


def _what(e: dict[str, Any]) -> str:
    if e.get("position") is not None and e["kind"] in VERB:
        return f"{VERB[e['kind']]} {_site(e)}"
    return code(e["intervention"])


def _above(ci: list[float | None]) -> bool:
    return ci[0] is not None and ci[0] > 0


def _outside(ci: list[float | None]) -> bool:
    lo, hi = ci
    return lo is not None and hi is not None and (lo > 0 or hi < 0)


def _claimed(e: dict[str, Any], measure: str = "drop") -> bool:
    p = e.get(f"{measure}_p_family")
    return p is not None and p < ALPHA and (e[measure] or 0) > 0


def causal_tests(report: dict) -> Section | None:
    """The analysis report's section, from `report["causal_tests"]` (None without one)."""
    result = report.get("causal_tests")
    atp = report.get("attribution")
    if not result:  # attribution patching alone still makes the section
        return {"title": "Causal tests", "sentences": _attribution(atp)} if atp else None
    section = sentences(result, report)
    section["sentences"] += _attribution(atp)
    same = result.get("same_as_store") or {}
    differ = [k for k in ("model", "problems") if same.get(k) is False]
    if differ:
        section["sentences"].insert(
            0,
            f"These interventions ran on another {' and other '.join(differ)} than the thoughts "
            "analyzed above (their hashes differ): read them as a separate experiment.",
        )
    return section


def sentences(result: dict[str, Any], report: dict | None = None) -> Section:
    """{"title": "Causal tests", "sentences": [...]} from interventions.json's numbers (and,
    given the analysis report, its probes' claims for erasure's "decodable")."""
    eff = result["effects"]
    pooled = [e for e in eff if e["category"] == ALL]
    s = _clean(result) + [
        f"An effect is claimed below only when its family-wise p-value over this sweep's "
        f"{len(pooled)} interventions is under {num(ALPHA)} (step-down max-statistic on "
        "studentized paired differences, signs flipped by problem: strong family-wise error "
        "control within the sweep, a family of its own apart from the probes' claims); 'no "
        f"effect' only where two one-sided tests bound it within ±{num(DELTA['drop'])} accuracy "
        f"(±{num(DELTA['logp_drop'], 1)} nats), Holm over the sweep; 'dispensable' only where "
        f"they bound the accuracy drop within ±{num(DISPENSABLE)}, Holm within the control's "
        "family (joint content ablations, position-preserved truncations, knockouts, paths); "
        "anything else is 'not claimed', and other intervals are uncorrected."
    ]
    s += _thoughts(result, pooled) + causal_routing.sentences(result, pooled)
    s += _ablations(pooled) + _patching(pooled)
    s += _interactions(result, eff, pooled) + _steering(pooled)
    s += causal_erasure.sentences(result, report)
    return {"title": "Causal tests", "sentences": s}


def _attribution(atp: dict[str, Any] | None) -> list[str]:
    """Attribution patching's sentences (`opcircuits attribute`, its own family: Holm over its
    verified components), or none without its attribution.json."""
    if not atp:
        return []
    from opcircuits.report.findings.attribution import attribution_sentences

    how = " with AtP*'s GradDrop" if atp.get("graddrop") else ""
    head = f"Attribution patching{how} ({code(atp['source'])}), a family of its own:"
    return [head, *attribution_sentences(atp)]


def _clean(result: dict[str, Any]) -> list[str]:
    clean = result["clean"][ALL]
    per_cat = "; ".join(
        f"{_cat(c)} {num(result['clean'][c]['accuracy'])}" for c in result["categories"]
    )
    s = [
        f"Clean run: the model answers {num(clean['accuracy'])} of the {clean['n']} problems "
        f"correctly (Wilson {_ci(clean['ci'])}; {per_cat})."
    ]
    if clean["accuracy"] is not None and clean["accuracy"] < 0.05:
        s.append(
            "With so few correct answers, accuracy can hardly drop: expect no accuracy effects; "
            "the gold answer's log-probability is the measure that can still move."
        )
    return s


def _thoughts(result: dict[str, Any], pooled: list[dict[str, Any]]) -> list[str]:
    curve = sorted(
        (
            t
            for t in result.get("thoughts", [])
            if t["category"] == ALL and t.get("positions", "natural") == "natural"
        ),
        key=lambda t: t["thoughts"],
    )
    trunc = sorted((e for e in pooled if e["kind"] == "truncate"), key=lambda e: e["thoughts"])
    if not (trunc and curve):
        return []
    K = result["num_latent"]
    points = ", ".join(f"{t['thoughts']}: {num(t['accuracy'])}" for t in curve)
    s = [f"Accuracy by number of thoughts kept ({K} = all), natural positions: {points}."]
    zero = trunc[0]
    if _claimed(zero):
        verdict = "lowers"
    elif _outside(zero["drop_ci"]):
        verdict = "lowers (uncorrected)" if zero["drop"] > 0 else "raises (uncorrected)"
    elif zero.get("drop_no_effect"):
        verdict = f"changes by less than ±{num(DELTA['drop'])} (TOST)"
    else:
        verdict = "is not claimed to change"
    s.append(
        f"Going from {K} thoughts to {zero['thoughts']} (natural positions) {verdict} accuracy "
        f"(drop "
        f"{num(zero['drop'])}, {_ci(zero['drop_ci'])}, family-wise "
        f"{pval(zero.get('drop_p_family'))}; gold log-prob drop {num(zero['logp_drop'])}, "
        f"{_ci(zero['logp_drop_ci'])})."
    )
    # The fewest thoughts from which on no truncation's drop is claimed.
    needed = min(
        (
            e["thoughts"]
            for e in trunc
            if not any(_claimed(f) for f in trunc if f["thoughts"] >= e["thoughts"])
        ),
        default=None,
    )
    if needed is not None and _claimed(zero):
        at = next(e for e in trunc if e["thoughts"] == needed)
        s.append(
            f"With {needed} or more of the {K} thoughts kept (natural positions), no accuracy "
            f"drop is claimed (at {needed}: drop {num(at['drop'])}, {_ci(at['drop_ci'])}); a "
            "truncation moves eot's position ids as well as removing thoughts."
        )
    return s


def _ablations(pooled: list[dict[str, Any]]) -> list[str]:
    single = [e for e in pooled if e["kind"] in ABLATIONS and e.get("position") is not None]
    if not single:
        return []
    s: list[str] = []
    claimed = sorted((e for e in single if _claimed(e)), key=lambda e: -e["drop"])
    uncorrected = [e for e in single if _above(e["drop_ci"])]
    for e in claimed[:4]:
        s.append(
            f"{_what(e)} lowers accuracy by {num(e['drop'])} ({_ci(e['drop_ci'])}, family-wise "
            f"{pval(e['drop_p_family'])}; answers changed {num(e['changed'])})."
        )
    if claimed:
        s.append(
            f"{len(claimed)} of {len(single)} single-site ablations lower accuracy at "
            f"family-wise α = {num(ALPHA)}; {len(uncorrected)} have an uncorrected interval "
            f"above 0 (about {num(0.025 * len(single), 1)} would by chance)."
        )
    else:
        big = max(single, key=lambda e: abs(e["drop"] or 0))
        s.append(
            f"No single-site ablation lowers accuracy at family-wise α = {num(ALPHA)} "
            f"({len(single)} tested; {len(uncorrected)} uncorrected intervals above 0, about "
            f"{num(0.025 * len(single), 1)} expected by chance). The largest change: "
            f"{_what(big).lower()}, {num(big['drop'])} ({_ci(big['drop_ci'])})."
        )
    flat = [e for e in single if e.get("drop_no_effect")]
    s.append(
        f"{len(flat)} of {len(single)} single-site ablations are shown to leave accuracy within "
        f"±{num(DELTA['drop'])} (TOST, Holm over the sweep); the others are neither claimed to "
        "matter nor shown not to."
    )
    lp = [e for e in single if e["logp_drop"] is not None]
    if lp:
        top = max(lp, key=lambda e: e["logp_drop"])
        n_lp = sum(1 for e in lp if _claimed(e, "logp_drop"))
        s.append(
            f"The gold answer's log-probability drops most when {_what(top).lower()} "
            f"({num(top['logp_drop'])} nats, {_ci(top['logp_drop_ci'])}, family-wise "
            f"{pval(top.get('logp_drop_p_family'))}); {n_lp} of {len(lp)} single-site "
            f"ablations lower it at family-wise α = {num(ALPHA)}."
        )
    return s


def _patching(pooled: list[dict[str, Any]]) -> list[str]:
    patch = [e for e in pooled if e["kind"] == "patch" and e["follows_source"] is not None]
    if not patch:
        return []
    best = max(patch, key=lambda e: e["follows_source"])
    where = _site(best) if best.get("position") else code(best["intervention"])
    s = [
        f"Patching a counterfactual partner's state makes the model give the partner's answer "
        f"in at most {num(best['follows_source'])} of problems ({where}, "
        f"{_ci(best['follows_source_ci'])}; {best['n']} problems with a partner)."
    ]
    moved = sorted((e for e in patch if _claimed(e)), key=lambda e: -e["drop"])
    if moved:
        sites = ", ".join(_site(e) for e in moved[:6] if e.get("position"))
        s.append(
            f"Patching lowers accuracy on the original problem at family-wise α = {num(ALPHA)} "
            f"at {len(moved)} of {len(patch)} sites{': ' + sites if sites else ''}."
        )
    return s


def _interactions(
    result: dict[str, Any], eff: list[dict[str, Any]], pooled: list[dict[str, Any]]
) -> list[str]:
    kinds = {e["intervention"]: e["kind"] for e in pooled}
    tested = [
        x for x in result["interactions"] if kinds.get(x["intervention"]) in (*ABLATIONS, "patch")
    ]
    if not tested:
        return []
    if "drop_claimed" not in tested[0]:  # a sweep from before the interaction test
        return [
            f"The {len(tested)} category-pair comparisons of this sweep have no permutation test: "
            "no operation-specific effect is claimed."
        ]
    by_label = {(e["intervention"], e["category"]): e for e in eff}
    hits = sorted(
        (x for x in tested if x["drop_claimed"]), key=lambda x: -abs(x["drop_correct"] or 0)
    )
    s = []
    for x in hits[:3]:
        a, b = by_label[x["intervention"], x["a"]], by_label[x["intervention"], x["b"]]
        hi, lo = (a, b) if x["drop_correct"] > 0 else (b, a)
        cross = x.get("drop_crossover") or []
        s.append(
            f"{_what(a)} breaks more of the correctly answered {_cat(hi['category'])} problems "
            f"than of the {_cat(lo['category'])} ones (break rates differ by "
            f"{num(abs(x['drop_correct']))}; family-wise {pval(x['drop_p_family'])}, category "
            f"labels permuted; accuracy drops {num(hi['drop'])} vs {num(lo['drop'])}, "
            f"the difference, {num(abs(x['drop'] or 0))}, {_ci(x['drop_ci'])})"
            + (
                f"; a double dissociation: {', '.join(code(c) for c in cross[:3])} "
                "does the opposite on the same pair."
                if cross
                else "."
            )
        )
    if hits:
        s.append(
            f"{len(hits)} of {len(tested)} intervention × category-pair comparisons pass the "
            f"interaction test at family-wise α = {num(ALPHA)} (step-down max-statistic over all "
            "of them, category labels permuted across the correctly answered problems): these "
            "are the operation-specific effects claimed."
        )
    else:
        chance = sum(1 for x in tested if _outside(x["drop_ci"]))
        s.append(
            f"No operation-specific effect is claimed: none of {len(tested)} intervention × "
            f"category-pair comparisons passes the interaction test at family-wise α = "
            f"{num(ALPHA)} ({chance} uncorrected intervals of the difference exclude 0)."
        )
    return s


def _steering(pooled: list[dict[str, Any]]) -> list[str]:
    steer = [e for e in pooled if e["kind"] == "steer" and e["alpha"] is not None]
    if not steer:
        return []
    amax = max(abs(e["alpha"]) for e in steer)
    s = []
    for e in sorted(steer, key=lambda e: e["alpha"]):
        if abs(e["alpha"]) != amax or e["direction"] != "diff":
            continue
        ctrl = next(
            (r for r in steer if r["direction"] == "random" and r["alpha"] == e["alpha"]
             and r["sites"] == e["sites"]),
            None,
        )  # fmt: skip
        text = (
            f"Steering {code(e['sites'])} by α = {num(e['alpha'], 1)} along the category "
            f"direction changes {num(e['changed'])} of answers (accuracy drop {num(e['drop'])}, "
            f"{_ci(e['drop_ci'])}, family-wise {pval(e.get('drop_p_family'))})"
        )
        if ctrl is not None:
            text += (
                f"; a random direction of the same length changes {num(ctrl['changed'])} (drop "
                f"{num(ctrl['drop'])}, {_ci(ctrl['drop_ci'])})"
            )
        s.append(text + ".")
    return s
