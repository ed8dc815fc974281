"""The summary's sentences, one function per report section, each computed from the numbers in
analysis_report.json: which control a probe beats, whether an interval includes zero, which cell
is best. Nothing is written that the numbers do not say.

Each section function takes the report dict and returns {"title", "sentences"} or None when the
report lacks that section. A new section (e.g. "Causal tests" from `report["causal_tests"]`) is
one more such function placed in `SECTIONS`. Names from the data (positions, views, categories)
are written through `opcircuits.markdown`, so the sentences are safe Markdown as well as text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opcircuits.markdown import code, plain_label

Section = dict[str, Any]

PROBE_LABELS = {"logreg": "logistic regression", "random_forest": "random forest", "mlp": "MLP"}
CONTROL_LABELS = {
    "majority": "majority-class",
    "shuffled_labels": "shuffled-label",
    "question_text": "question-text",
    "confound": "confound (steps and length)",
    "pre_thought": "pre-thought (`bot`)",
}


def num(x: float | None, digits: int = 2) -> str:
    """Format with a real minus sign; None → 'n/a'."""
    if x is None:
        return "n/a"
    s = f"{x:.{digits}f}"
    if s.startswith("-") and float(s) == 0:
        s = s[1:]
    return s.replace("-", "−")


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def ci(lo: float | None, hi: float | None) -> str:
    return f"CI {num(lo)}…{num(hi)}"


def verdict(diff: dict) -> str:
    """'beats' / 'is worse than' / 'does not beat' from a paired difference's interval."""
    if diff["ci_low"] is not None and diff["ci_low"] > 0:
        return "beats"
    if diff["ci_high"] is not None and diff["ci_high"] < 0:
        return "is worse than"
    return "does not beat"


def _sel(diff: dict) -> str:
    return f"selectivity {num(diff['value'])}, {ci(diff['ci_low'], diff['ci_high'])}"


def control(report: dict, name: str) -> dict | None:
    return next((c for c in report["controls"] if c["name"] == name), None)


def best_main_probe(report: dict) -> dict | None:
    """The main-view probe with the highest accuracy (the first listed on ties)."""
    main = [p for p in report["probes"] if p["view_kind"] == "main"]
    return max(main, key=lambda p: (p["accuracy"], -main.index(p))) if main else None


# --- sections -------------------------------------------------------------------------------------


def data(report: dict) -> Section:
    d = report["data"]
    counts = ", ".join(f"{plain_label(k)} {v}" for k, v in d["class_counts"].items())
    return {
        "title": "Data",
        "sentences": [
            f"{d['n_problems']} problems in {len(d['categories'])} categories ({counts}); "
            f"chance is {num(d['chance'])} and always guessing the largest category scores "
            f"{num(d['majority_rate'])}.",
            f"Every probe and control is scored on the same {d['folds']}-fold stratified "
            f"cross-validation repeated {d['repeats']} times ({d['n_fold_scores']} fold scores); "
            "intervals are 95% corrected resampled t-intervals.",
        ],
    }


def probes(report: dict) -> Section | None:
    main = [p for p in report["probes"] if p["view_kind"] == "main"]
    best = best_main_probe(report)
    if best is None:
        return None
    label = PROBE_LABELS.get(best["probe"], best["probe"])
    s = [
        f"The best probe on the continuous thoughts, {label} on the {code(best['view'])} view, "
        f"reaches accuracy {num(best['accuracy'])} ({ci(best['ci_low'], best['ci_high'])}, "
        f"macro F1 {num(best['f1_macro'])})."
    ]
    for name in ("question_text", "confound", "majority"):
        c = control(report, name)
        if c is None:
            continue
        diff = best["selectivity_vs"][name]
        s.append(
            f"It {verdict(diff)} the {CONTROL_LABELS[name]} control "
            f"(accuracy {num(c['accuracy'])}; {_sel(diff)})."
        )
    if best["selectivity_vs_pre_thought"] is not None:
        diff = best["selectivity_vs_pre_thought"]
        pre = control(report, "pre_thought")
        s.append(
            f"It {verdict(diff)} the pre-thought probe on `bot` (accuracy "
            f"{num(pre['accuracy'])}; difference {num(diff['value'])}, "
            f"{ci(diff['ci_low'], diff['ci_high'])})."
        )
    lr = next((p for p in main if p["view"] == best["view"] and p["probe"] == "logreg"), None)
    if lr is not None and lr["p_value"] is not None:
        n_perm = report["options"]["permutations"]
        s.append(
            f"The logistic-regression probe on {code(best['view'])} "
            + ("scores above" if lr["p_value"] < 0.05 else "is not distinguishable from")
            + f" probes trained on permuted labels (p = {num(lr['p_value'], 3)}, "
            f"{n_perm} permutations)."
        )
    bc = report["best_control"]
    winners = [
        p for p in main if p["selectivity"]["ci_low"] is not None and p["selectivity"]["ci_low"] > 0
    ]
    s.append(
        f"{len(winners)} of {len(main)} probes on the main views beat the strongest "
        f"baseline control, the {CONTROL_LABELS[bc]} control "
        f"(accuracy {num(control(report, bc)['accuracy'])})."
    )
    if winners:
        s.append(
            "So in this store the thoughts carry operation-category information "
            f"beyond what the {CONTROL_LABELS[bc]} control captures."
        )
    else:
        s.append(
            "So these data do not show that the thoughts encode the operation category "
            f"beyond what the {CONTROL_LABELS[bc]} control already captures."
        )
    return {"title": "Do the thoughts encode the operations?", "sentences": s}


def _cell(c: dict) -> str:
    return code(f"{c['position']}@{c['layer']}")


def token_layer(report: dict) -> Section | None:
    cells = report["token_layer_map"]
    if not cells:
        return None
    majority = report["data"]["majority_rate"]
    bestc = max(cells, key=lambda c: c["accuracy"])
    worst = min(cells, key=lambda c: c["accuracy"])
    s = [
        f"Of {len(cells)} single (position, layer) cells, the best is {code(bestc['position'])} "
        f"at layer {bestc['layer']} with accuracy {num(bestc['accuracy'])} "
        f"({ci(bestc['ci_low'], bestc['ci_high'])}); the worst is {code(worst['position'])} at "
        f"layer {worst['layer']} ({num(worst['accuracy'])})."
    ]
    above = [c for c in cells if c["ci_low"] is not None and c["ci_low"] > majority]
    s.append(
        f"{len(above)} of {len(cells)} cells have a lower CI bound above the majority "
        f"rate {num(majority)}."
    )
    if cells[0].get("selectivity"):
        sel = [
            c
            for c in cells
            if c.get("selectivity")
            and c["selectivity"]["ci_low"] is not None
            and c["selectivity"]["ci_low"] > 0
        ]
        bc = CONTROL_LABELS[cells[0]["selectivity"]["control"]]
        named = ", ".join(_cell(c) for c in sel[:8])
        s.append(
            f"{len(sel)} of {len(cells)} cells beat the {bc} control (selectivity "
            "interval above 0, not corrected for comparing many cells)"
            + (f": {named}" + (" …" if len(sel) > 8 else "") if sel else "")
            + "."
        )
    return {"title": "Where: token × layer", "sentences": s}


def pre_thought(report: dict) -> Section | None:
    pre = control(report, "pre_thought")
    rows = report["pre_thought"]
    if pre is None or not rows:
        return None
    better = [r["position"] for r in rows if (r["minus_pre_thought"]["ci_low"] or 0) > 0]
    worse = [
        r["position"]
        for r in rows
        if r["minus_pre_thought"]["ci_high"] is not None and r["minus_pre_thought"]["ci_high"] < 0
    ]
    top = max(rows, key=lambda r: r["minus_pre_thought"]["value"])
    s = [
        f"Before any latent step, the `bot` state alone gives accuracy {num(pre['accuracy'])} "
        f"({ci(pre['ci_low'], pre['ci_high'])})."
    ]
    if better:
        s.append(
            f"{len(better)} of {len(rows)} latent steps beat it: "
            + ", ".join(code(b) for b in better)
            + "."
        )
    else:
        m = top["minus_pre_thought"]
        s.append(
            f"None of the {len(rows)} latent steps beats it; the largest difference is "
            f"{code(top['position'])}, {num(m['value'])} ({ci(m['ci_low'], m['ci_high'])})."
        )
    if worse:
        s.append(
            f"{len(worse)} latent steps score below it: " + ", ".join(code(w) for w in worse) + "."
        )
    return {"title": "Before vs during thinking", "sentences": s}


def clustering(report: dict) -> Section | None:
    if not report["clustering"]:
        return None
    s = []
    for r in report["clustering"]:
        sil = r["silhouette"]
        if sil is None:
            continue
        shape = (
            "no cluster structure"
            if sil < 0.1
            else "weak clusters"
            if sil < 0.25
            else "clear clusters"
        )
        s.append(
            f"{code(r['view'])}: silhouette {num(sil)} (in the 2-D PCA plane "
            f"{num(r['silhouette_pca2'])}; PC1+PC2 explain "
            f"{pct(sum(r['explained_variance_ratio']))} of the variance) — categories "
            f"form {shape}."
        )
    return {"title": "Clustering", "sentences": s}


def similarity(report: dict) -> Section | None:
    sims = report["similarity"]
    if not sims:
        return None
    r = next((x for x in sims if x["view"] == "mean"), sims[0])
    c, raw = r["centred"], r["raw"]
    closer = c["p_value"] is not None and c["p_value"] < 0.05 and c["difference"] > 0
    s = [
        f"In the {code(r['view'])} view, raw cosine similarity is {num(raw['within'])} within "
        f"categories and {num(raw['between'])} between them"
        + (
            " — both high, dominated by a direction all thoughts share."
            if min(raw["within"], raw["between"]) > 0.5
            else "."
        ),
        "After subtracting the mean thought, same-category thoughts are "
        + ("more similar" if closer else "not detectably more similar")
        + f" than different-category ones (within {num(c['within'])} vs between "
        f"{num(c['between'])}, permutation p = {num(c['p_value'], 3)}).",
    ]
    sig = [
        x["view"]
        for x in sims
        if x["centred"]["p_value"] is not None
        and x["centred"]["p_value"] < 0.05
        and x["centred"]["difference"] > 0
    ]
    s.append(f"Mean-centred within > between holds (p < 0.05) in {len(sig)} of {len(sims)} views.")
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
        significant = m["p_value"] < 0.05
        cmp = (
            "not distinguishable from"
            if not significant
            else "more often than"
            if m["match_rate"] > m["baseline_rate"]
            else "less often than"
        )
        s.append(
            f"When an operator is read off a latent step ({m['n_operator_reads']} reads), "
            f"the solution uses it {pct(m['match_rate'])} of the time, {cmp} the "
            f"{pct(m['baseline_rate'])} expected if operators were unrelated to the "
            f"problem (binomial p = {num(m['p_value'], 3)})."
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
        s.append(
            f"The logistic-regression probe on `mean` is {num(cc['accuracy'])} accurate "
            f"on problems answered correctly (n={cc['n_problems']}) and "
            f"{num(ii['accuracy'])} on those answered incorrectly "
            f"(n={ii['n_problems']})."
        )
    return {"title": "The model's answers", "sentences": s}


def notes(report: dict) -> Section | None:
    return {"title": "Notes", "sentences": list(report["notes"])} if report["notes"] else None


# In the order the summary shows them; a new section goes before `notes`.
SECTIONS: list[Callable[[dict], Section | None]] = [
    data,
    probes,
    token_layer,
    pre_thought,
    clustering,
    similarity,
    logit_lens,
    model,
    notes,
]


def findings(report: dict) -> list[Section]:
    """Sections of sentences, each derived from the report's numbers."""
    return [s for section in SECTIONS if (s := section(report)) is not None]
