"""Sentences of the descriptive sections: clustering, similarity, logit lens, the model's
answers."""

from __future__ import annotations

from opcircuits.analysis.claims import claimed
from opcircuits.markdown import code, plain_label
from opcircuits.report.findings.text import Section, ci, named_list, num, pct, pval

KR = (
    (0.25, "no substantial structure"),
    (0.5, "weak structure"),
    (0.7, "reasonable structure"),
)


def kaufman_rousseeuw(sil: float) -> str:
    return next((name for top, name in KR if sil <= top), "strong structure")


def clustering(report: dict) -> Section | None:
    if not report["clustering"]:
        return None
    s = [
        "Silhouettes in the standardized feature space, read as Kaufman & Rousseeuw do (≤ 0.25 "
        "no substantial structure, 0.26–0.50 weak, 0.51–0.70 reasonable, above strong), against "
        "the 95th percentile under random labels of the same sizes:"
    ]
    clustered = []
    for r in report["clustering"]:
        sil = r["silhouette"]
        if sil is None:
            continue
        if claimed(report, "silhouette", r["view"]):
            clustered.append(code(r["view"]))
        s.append(
            f"{code(r['view'])}: {num(sil)}, {kaufman_rousseeuw(sil)} (random labels "
            f"{num(r.get('silhouette_null_q95'))}, {pval(r.get('silhouette_p'))} uncorrected; 2-D "
            f"PCA plane {num(r['silhouette_pca2'])}, PC1+PC2 explain "
            f"{pct(sum(r['explained_variance_ratio']))} of the variance)."
        )
    s.append(
        f"The categories cluster more than random groups in {len(clustered)} of "
        f"{len(report['clustering'])} views after the family-wise correction"
        f"{named_list(clustered)}."
    )
    return {"title": "Clustering", "sentences": s}


def similarity(report: dict) -> Section | None:
    sims = report["similarity"]
    if not sims:
        return None
    r = next((x for x in sims if x["view"] == "mean"), sims[0])
    c, raw = r["centred"], r["raw"]
    share = raw.get("mean_direction_share")
    s = [
        f"In the {code(r['view'])} view, raw cosine similarity is {num(raw['within'])} within "
        f"categories and {num(raw['between'])} between them; {pct(share)} of the thoughts' "
        "squared norm lies along their mean direction"
        + (
            ", so raw cosine is dominated by that shared direction."
            if share and share > 0.5
            else "."
        ),
        "After subtracting the mean thought, same-category thoughts are "
        + (
            "more similar"
            if claimed(report, "similarity", r["view"])
            else "not detectably more similar"
        )
        + f" than different-category ones (within {num(c['within'])} vs between "
        f"{num(c['between'])}, permutation {pval(c['p_value'])} uncorrected).",
    ]
    sig = [code(x["view"]) for x in sims if claimed(report, "similarity", x["view"])]
    s.append(
        f"Mean-centred within > between holds in {len(sig)} of {len(sims)} views after the "
        f"family-wise correction{named_list(sig)}."
    )
    return {"title": "Similarity", "sentences": s}


def logit_lens(report: dict) -> Section | None:
    lens = report["logit_lens"]
    if not lens.get("available"):
        return None
    lat = [p for p in lens["positions"] if p.startswith("latent")] or lens["positions"]
    rows = [x for x in lens["shares"] if x["category"] == "all" and x["position"] in lat and x["n"]]
    s = []
    if rows:
        tot = sum(x["n"] for x in rows)
        share = {
            k: sum((x[k] or 0) * x["n"] for x in rows) / tot
            for k in ("operator", "number", "other")
        }
        top = max(rows, key=lambda x: x["operator"] or 0)
        s.append(
            f"Across the latent steps, the top-1 logit-lens token is an operator symbol "
            f"{pct(share['operator'])} of the time, a number {pct(share['number'])}, "
            f"other {pct(share['other'])}; operators are most frequent at "
            f"{code(top['position'])} ({pct(top['operator'])})."
        )
    m = lens.get("operator_match_latent")
    if m:
        ok = claimed(report, "logit_lens")
        cmp = (
            "not distinguishable from"
            if not ok
            else "more often than"
            if m["match_rate"] > m["baseline_rate"]
            else "less often than"
        )
        s.append(
            f"When an operator is read off a latent step ({m['n_operator_reads']} reads in "
            f"{m['n_problems']} problems), the solution uses it {pct(m['match_rate'])} of the "
            f"time, {cmp} the {pct(m['baseline_rate'])} expected with the problems' operations "
            f"shuffled across problems (permutation {pval(m['p_value'])} uncorrected)."
        )
    elif lens.get("operator_match") and rows:
        s.append("No operator symbol is read off any latent step.")
    return {"title": "Logit lens", "sentences": s}


def model(report: dict) -> Section | None:
    m = report["model"]
    if not m.get("available"):
        return None
    acc = m["answer_accuracy"]
    overall = next(a for a in acc if a["category"] == "all")
    per = "; ".join(
        f"{plain_label(a['category'])} {num(a['accuracy'])} (n={a['n']})"
        for a in acc
        if a["category"] != "all"
    )
    s = [
        f"The model answers {num(overall['accuracy'])} of problems correctly "
        f"({ci(overall['ci_low'], overall['ci_high'])}); per category: {per}."
    ]
    split = next(
        (x for x in m["probe_by_correctness"] if x["view"] == "mean" and x["probe"] == "logreg"),
        None,
    )
    if split and split["correct"]["n_problems"] and split["incorrect"]["n_problems"]:
        cc, ii = split["correct"], split["incorrect"]
        ok = claimed(report, "answers")
        s.append(
            f"The logistic-regression probe on `mean` is {num(cc['accuracy'])} accurate on "
            f"problems answered correctly (n={cc['n_problems']}) and {num(ii['accuracy'])} on "
            f"those answered incorrectly (n={ii['n_problems']}): "
            + ("a difference" if ok else "no detectable difference")
            + f" (Fisher's exact {pval(split['difference_p'])} uncorrected)."
        )
    return {"title": "The model's answers", "sentences": s}
