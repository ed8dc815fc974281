"""What the report may claim: every test of the report gathered into families, and the procedure
of `inference.decide` applied: strong family-wise error control at α over every member of every
family (the gate on the primary family, then one graph over all members, Bretz et al. 2009).

Primary family: every probe refitted on the permutations (logistic regression on every view and
token × layer cell; the random forest and MLP too with `permute_all_probes`), each with its
max-statistic p-value; with `primary = "probe:view"` that one probe is pre-registered and its
uncorrected permutation p-value opens the gate instead. Secondary families (`p_value`: Holm
within, descriptive; `p_final`: the pooled procedure, what a claim needs): gain
over the strongest baseline control, the incremental test over the confound features, the
step-matched subsample, latent steps vs `bot`, the other labels (step count, binary operation
probes), similarity, silhouette, the logit lens, correct vs incorrect answers, the trained vs the
re-initialized model.
"""

from __future__ import annotations

from typing import Any

from opcircuits.analysis.inference import ALPHA, decide, holm
from opcircuits.errors import OpcircuitsError


def member_name(probe: str, view: str) -> str:
    return f"{probe}:{view}"


def _family(name: str, members: list[tuple[str, float | None]], adjust: bool = True) -> dict:
    ps = [p for _, p in members]
    adjusted = holm(ps) if adjust else ps
    return {
        "family": name,
        "members": [
            {"name": n, "p_raw": p, "p_value": a}
            for (n, p), a in zip(members, adjusted, strict=True)
        ],
    }


def _views_family(name: str, rows: list[dict], key: str) -> dict:
    """A family of logistic-regression views, each tested by the p-value of `row[key]`."""
    return _family(name, [(member_name("logreg", r["view"]), r[key]["p_value"]) for r in rows])


def _primary(report: dict[str, Any], primary: str | None) -> dict:
    tests = report["permutation_tests"]
    members = [(member_name(t["probe"], t["view"]), t["p_family"]) for t in tests]
    if primary is not None:
        chosen = next((t for t in tests if member_name(t["probe"], t["view"]) == primary), None)
        if chosen is None:
            raise OpcircuitsError(
                f"{primary!r} is not a permutation-tested probe (give probe:view, e.g. "
                "logreg:mean; the random forest and MLP need permute_all_probes, and their "
                "view in nonlinear_views)",
                field="primary",
            )
        # The pre-registered probe needs no correction; it alone opens the gate.
        return {
            "family": "decoding",
            "members": [
                {"name": primary, "p_raw": chosen["p_value"], "p_value": chosen["p_value"]}
            ],
            "others": [{"name": n, "p_value": p} for n, p in members if n != primary],
        }
    return _family("decoding", members, adjust=False)


def _decoding_families(report: dict[str, Any]) -> list[dict]:
    """Beyond the baseline, beyond the confound features, the step-matched tests, vs `bot`."""
    main = [p for p in report["probes"] if p["view_kind"] == "main"]
    beyond = [
        (member_name(p["probe"], p["view"]), p["gain_over_baseline"]["p_value"]) for p in main
    ]
    beyond += [
        (member_name("logreg", f"{c['position']}@{c['layer']}"), c["gain_over_baseline"]["p_value"])
        for c in report["token_layer_map"]
    ]
    fams = [_family("beyond_baseline", beyond)]
    steps = report.get("step_confound") or {}
    if steps.get("incremental"):
        fams.append(_views_family("beyond_confound_features", steps["incremental"], "difference"))
    if steps.get("step_matched"):
        rows = steps["step_matched"]["probes"]
        fams.append(_views_family("step_matched", rows, "gain_over_majority"))
    sample = report.get("step_matched_sample") or {}
    if sample.get("probes"):
        # Beyond that sample's strongest baseline control (its step-count lookup included).
        fams.append(_views_family("step_matched_sample", sample["probes"], "gain_over_baseline"))
    if report["pre_thought"]:
        rows = [(r["position"], r["minus_pre_thought"]["p_value"]) for r in report["pre_thought"]]
        fams.append(_family("latent_vs_bot", rows))
    return fams


def _other_labels(report: dict[str, Any]) -> list[dict]:
    """The step count, the binary operation labels and each step's operation, decoded by the same
    probes."""
    steps = report.get("step_confound") or {}
    other = []
    if steps.get("n_steps_decoding"):
        other += [
            (f"n_steps/{member_name('logreg', r['view'])}", r["gain_over_majority"]["p_value"])
            for r in steps["n_steps_decoding"]["probes"]
        ]
    for task in report.get("binary_probes") or []:
        other += [
            (
                f"{task['task']}/{member_name('logreg', r['view'])}",
                r["gain_over_majority"]["p_value"],
            )
            for r in task["probes"]
        ]
    fams = [_family("other_labels", other)] if other else []
    steps = report.get("step_operations") or []
    # Where each step's operation is decoded beyond the question text, and whether the step's
    # own thought holds it better than `bot` (the one comparison per step fixed in advance).
    decoded = [
        (f"step{e['step']}/{member_name('logreg', r['view'])}", r["gain_over_baseline"]["p_value"])
        for e in steps
        for r in e["positions"]
    ]
    own = [
        (f"step{e['step']}/{member_name('logreg', r['view'])}", r["minus_bot"]["p_value"])
        for e in steps
        for r in e["positions"]
        if r["view"] == e["own_thought"] and r["minus_bot"] is not None
    ]
    if decoded:
        fams.append(_family("step_operations", decoded))
    if own:
        fams.append(_family("step_op_own_thought_vs_bot", own))
    return fams


def _descriptive_families(report: dict[str, Any]) -> list[dict]:
    """Similarity, silhouette, the logit lens, answers, the trained vs the random model."""
    fams = []
    if report["similarity"]:
        rows = [(r["view"], r["centred"]["p_value"]) for r in report["similarity"]]
        fams.append(_family("similarity", rows))
    if report["clustering"]:
        rows = [(r["view"], r["silhouette_p"]) for r in report["clustering"]]
        fams.append(_family("silhouette", rows))
    match = (report["logit_lens"] or {}).get("operator_match_latent")
    if match:
        fams.append(_family("logit_lens", [("operator_match_latent", match["p_value"])]))
    model = report["model"]
    if model.get("available"):
        split = next(
            (
                x
                for x in model["probe_by_correctness"]
                if (x["view"], x["probe"]) == ("mean", "logreg")
            ),
            None,
        )
        if split is not None:
            fams.append(
                _family("answers", [(member_name("logreg", "mean"), split["difference_p"])])
            )
    baseline = report.get("random_model") or {}
    if baseline.get("probes"):
        fams.append(_views_family("trained_vs_random", baseline["probes"], "trained_minus_random"))
    return fams


def decide_claims(report: dict[str, Any], primary: str | None = None) -> dict:
    """The `inference` section of the report: every family, and `inference.decide` over them."""
    fams = _decoding_families(report) + _other_labels(report) + _descriptive_families(report)
    fams = [f for f in fams if any(m["p_value"] is not None for m in f["members"])]
    return decide(_primary(report, primary), fams, ALPHA)


def claimed(report: dict[str, Any], family: str, member: str | None = None) -> bool:
    """Whether the report claims `member` of `family`; with None, the family's own claim (for the
    primary: some probe or cell decodes the category, the gate)."""
    inf = report.get("inference")
    if not inf:
        return False
    fams = [inf["primary"], *inf["secondary"]]
    fam = next((f for f in fams if f["family"] == family), None)
    if fam is None:
        return False
    if member is None:  # the primary: the gate (H_P rejected); a secondary family: any member
        return bool(fam["claimed"])
    return any(m["claimed"] for m in fam["members"] if m["name"] == member)


def final_p(report: dict[str, Any], family: str, member: str) -> float | None:
    inf = report.get("inference")
    if not inf:
        return None
    for fam in [inf["primary"], *inf["secondary"]]:
        if fam["family"] == family:
            for m in fam["members"]:
                if m["name"] == member:
                    return m["p_final"]
    return None
