"""Sentences on the step-count confound, the step-matched sample, the random-weights model and
the binary operation-family probes."""

from __future__ import annotations

from opcircuits.analysis.claims import claimed, member_name
from opcircuits.markdown import code, plain_label
from opcircuits.report.findings.text import Section, ci, diff_text, named_list, num, pval


def _best_row(rows: list[dict], key: str = "accuracy") -> dict:
    return max(rows, key=lambda r: (r[key], -rows.index(r)))


def step_confound(report: dict) -> Section | None:
    sc = report.get("step_confound") or {}
    if not sc.get("available"):
        return None
    means = ", ".join(
        f"{plain_label(c)} {num(m, 1)}" for c, m in sc["mean_steps_by_category"].items()
    )
    s = [
        f"Solution steps per category (mean): {means}"
        + ("; the categories' step histograms are identical." if sc["input_matched"] else ".")
    ]
    if sc.get("incremental"):
        r = _best_row(sc["incremental"], "view")  # any row: sentences name each claim
        added = [
            code(x["view"])
            for x in sc["incremental"]
            if claimed(report, "beyond_confound_features", member_name("logreg", x["view"]))
        ]
        r = max(sc["incremental"], key=lambda x: x["difference"]["value"])
        s.append(
            f"Adding the states to the confound features (steps and question length) helps in "
            f"{len(added)} of {len(sc['incremental'])} main views after the family-wise "
            f"correction{named_list(added)}; largest on {code(r['view'])}: "
            f"{num(r['confound_plus_states']['accuracy'])} vs "
            f"{num(r['confound_alone']['accuracy'])} for the features alone "
            f"({diff_text(r['difference'])})."
        )
    strata = next((x for x in sc["within_strata"] if x["view"] == "mean"), None)
    if strata:
        s.append(
            f"Within n_steps strata, logistic regression on `mean` scores "
            f"{num(strata['accuracy'])}, against {num(strata['step_only_ceiling'])} for the best "
            "any function of the step count alone can do in each stratum (descriptive)."
        )
    m = sc.get("step_matched")
    if m:
        rows = m["probes"]
        ok = [
            code(r["view"])
            for r in rows
            if claimed(report, "step_matched", member_name("logreg", r["view"]))
        ]
        r = _best_row(rows)
        s.append(
            f"On a step-matched subsample of the store ({m['n_problems']} problems, every category "
            f"with the same step histogram, majority rate {num(m['majority_rate'])}), "
            f"{len(ok)} of {len(rows)} main views beat the majority class after the family-wise "
            f"correction{named_list(ok)}; the best, {code(r['view'])}, scores {num(r['accuracy'])} "
            f"({ci(r['ci_low'], r['ci_high'])}, selected)."
        )
    d = sc.get("n_steps_decoding")
    if d:
        r = _best_row(d["probes"])
        ok = claimed(report, "other_labels", f"n_steps/{member_name('logreg', r['view'])}")
        s.append(
            f"The states {'decode' if ok else 'do not demonstrably decode'} the step count itself "
            f"(bins {', '.join(d['bins'])}): best {code(r['view'])} {num(r['accuracy'])} against "
            f"the majority bin's {num(d['majority_rate'])} "
            f"({diff_text(r['gain_over_majority'], 'gain')})."
        )
    return {"title": "The step-count confound", "sentences": s}


def step_matched_sample(report: dict) -> Section | None:
    m = report.get("step_matched_sample")
    if not m:
        return None
    r = _best_row(m["probes"])
    ok = [
        code(x["view"])
        for x in m["probes"]
        if claimed(report, "step_matched_sample", member_name("logreg", x["view"]))
    ]
    return {
        "title": "On a step-matched sample",
        "sentences": [
            f"A separately drawn step-matched sample ({m['n_problems']} problems, mean steps "
            + ", ".join(
                f"{plain_label(c)} {num(v, 1)}"
                for c, v in (m["mean_steps_by_category"] or {}).items()
            )
            + f"): logistic regression on {code(r['view'])} reaches {num(r['accuracy'])} "
            f"({ci(r['ci_low'], r['ci_high'])}, selected; family-wise {pval(r['p_family'])}).",
            f"{len(ok)} of {len(m['probes'])} main views beat that sample's strongest baseline "
            f"control after the family-wise correction{named_list(ok)}: on these data the step "
            "count cannot explain what they decode."
            if ok
            else "On these data, where the step count cannot explain a decoding, no view beats "
            "that sample's strongest baseline control after the family-wise correction.",
        ],
    }


def random_model(report: dict) -> Section | None:
    m = report.get("random_model")
    if not m:
        return None
    r = max(m["probes"], key=lambda x: x["trained_minus_random"]["value"])
    ok = [
        code(x["view"])
        for x in m["probes"]
        if claimed(report, "trained_vs_random", member_name("logreg", x["view"]))
    ]
    return {
        "title": "Against the same architecture with random weights",
        "sentences": [
            f"With re-initialized weights (same architecture, same problems), logistic "
            f"regression on {code(r['view'])} scores {num(r['accuracy'])} against "
            f"{num(r['trained_accuracy'])} for the trained model "
            f"({diff_text(r['trained_minus_random'])}).",
            f"The trained model's thoughts beat the random model's on {len(ok)} of "
            f"{len(m['probes'])} main views after the family-wise correction{named_list(ok)}.",
        ],
    }


def binary_probes(report: dict) -> Section | None:
    tasks = report.get("binary_probes") or []
    if not tasks:
        return None
    labels = {"uses_mul_div": "uses × or ÷", "uses_add_sub": "uses + or −"}
    s = []
    for t in tasks:
        r = _best_row(t["probes"])
        ok = claimed(report, "other_labels", f"{t['task']}/{member_name('logreg', r['view'])}")
        text = ""
        if t.get("question_text"):
            text = (
                "; a TF-IDF classifier of the question scores "
                f"{num(t['question_text']['accuracy'])} "
                f"({diff_text(r['gain_over_question_text'], 'gain')})"
            )
        s.append(
            f"“{labels[t['task']]}?” over all {t['n_problems']} problems with known operations "
            f"({t['positives']} yes): best {code(r['view'])} {num(r['accuracy'])} "
            f"({ci(r['ci_low'], r['ci_high'])}, selected) against the majority's "
            f"{num(t['majority_rate'])} — "
            + ("decoded after the family-wise correction" if ok else "not demonstrably decoded")
            + f"{text}."
        )
    return {"title": "The two operation families", "sentences": s}
