"""Sentences of the decoding sections: data, the headline probe, token × layer, pre-thought."""

from __future__ import annotations

from opcircuits.analysis.claims import claimed, final_p, member_name
from opcircuits.markdown import code, plain_label
from opcircuits.report.findings.text import (
    CONTROL_LABELS,
    Section,
    ci,
    control,
    diff_text,
    gate_sentence,
    headline_probe,
    named_list,
    num,
    probe_phrase,
    pval,
)


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
            gate_sentence(report),
        ],
    }


def _permutation_text(report: dict, best: dict) -> str:
    """What the headline probe's permutation test says, and what it guarantees."""
    n_perm = report["options"]["permutations"]
    tests = report["permutation_tests"]
    strata = (tests[0].get("strata") if tests else None) or "fold"
    within = "within folds × n_steps strata" if strata != "fold" else "within folds"
    beyond = ", beyond what the step count explains" if strata != "fold" else ""
    member = member_name(best["probe"], best["view"])
    if report["options"].get("primary"):
        test = f"uncorrected permutation {pval(best['p_value'])} ({n_perm} permutations {within})"
    else:
        test = (
            f"step-down max-statistic {pval(best['p_family'])} over {len(tests)} "
            f"permutation-tested probes and cells ({n_perm} permutations {within})"
        )
    final = final_p(report, "decoding", member)
    if claimed(report, "decoding", member):
        verdict = f"decodes the category above chance{beyond}"
    elif claimed(report, "decoding"):
        verdict = (
            "is part of a family that decodes the category (the global test passes), but this "
            "probe itself is not claimed at the report's level"
        )
    else:
        verdict = "is not claimed to decode the category"
    return f"It {verdict}: {test}; the report's adjusted {pval(final)}."


def _against_controls(report: dict, best: dict) -> list[str]:
    # "Outperforms" is a claim: only when the probe beats the strongest of these controls under
    # the report's procedure. An interval above zero without it is said to be uncorrected.
    beats_all = claimed(report, "beyond_baseline", member_name(best["probe"], best["view"]))
    s = []
    for name in ("question_text", "confound", "step_lookup", "majority"):
        c = control(report, name)
        if c is None:
            continue
        diff = best["gain_vs"][name]
        what = (
            "a TF-IDF classifier of the question"
            if name == "question_text"
            else (f"the {CONTROL_LABELS[name]} control")
        )
        if beats_all and (diff["ci_low"] or 0) > 0:
            verb = "It outperforms"
        elif (diff["ci_low"] or 0) > 0:
            verb = "Only uncorrected (no family-wise claim), it scores above"
        else:
            verb = "It does not outperform"
        s.append(f"{verb} {what} (accuracy {num(c['accuracy'])}; {diff_text(diff, 'gain')}).")
    return s


def _selectivity(report: dict, best: dict) -> list[str]:
    s = []
    if best.get("selectivity") is not None:
        ct = best["control_task"]
        s.append(
            f"On a control task (labels fixed by the question's first word, real class sizes) the "
            f"same probe scores {num(ct['accuracy'])}: selectivity "
            f"{diff_text(best['selectivity'], '(Hewitt & Liang)')}."
        )
    if best["gain_vs_pre_thought"] is not None:
        pre = control(report, "pre_thought")
        s.append(
            f"Against the same probe on `bot` (before any latent step, accuracy "
            f"{num(pre['accuracy'])}): {diff_text(best['gain_vs_pre_thought'])}."
        )
    return s


def _only_at_bot(report: dict) -> bool:
    """Whether every claimed decoding member reads `bot` alone (the view, or a cell `bot@L`)."""
    prefix = "decoding: "
    members = [
        c.removeprefix(prefix) for c in report["inference"]["claims"] if c.startswith(prefix)
    ]
    views = [m.split(":", 1)[-1].split("@")[0] for m in members]
    return bool(views) and all(v == "bot" for v in views)


def _verdict(report: dict, main: list[dict]) -> list[str]:
    bc = report["best_control"]
    beyond = [
        p for p in main if claimed(report, "beyond_baseline", member_name(p["probe"], p["view"]))
    ]
    s = [
        f"{len(beyond)} of {len(main)} main-view probes beat the strongest baseline control, the "
        f"{CONTROL_LABELS[bc]} control (accuracy {num(control(report, bc)['accuracy'])}), under "
        "the report's family-wise procedure."
    ]
    if claimed(report, "decoding") and _only_at_bot(report):
        # bot reads the question before any thought: decoding there is not the thoughts'
        s.append(
            "So in this store the operation category is decoded only at `bot` (the state that "
            "reads the question, before any thought), at no latent step"
            + (
                f"; beyond what the {CONTROL_LABELS[bc]} control captures."
                if beyond
                else f", and not demonstrably beyond what the {CONTROL_LABELS[bc]} control "
                "captures."
            )
        )
    elif claimed(report, "decoding"):
        s.append(
            "So in this store the thoughts carry operation-category information"
            + (
                f", beyond what the {CONTROL_LABELS[bc]} control captures."
                if beyond
                else ", but not demonstrably beyond what the "
                f"{CONTROL_LABELS[bc]} control captures."
            )
        )
    else:
        s.append("So these data do not show that the thoughts encode the operation category.")
    return s


def probes(report: dict) -> Section | None:
    best = headline_probe(report)
    if best is None:
        return None
    main = [p for p in report["probes"] if p["view_kind"] == "main"]
    selected = (
        "pre-registered"
        if report["options"].get("primary")
        else (f"selected as the best of {len(main)} main-view probes, so optimistic")
    )
    s = [
        f"The headline probe, {probe_phrase(best)}, reaches accuracy {num(best['accuracy'])} "
        f"({ci(best['ci_low'], best['ci_high'])}; {selected}; macro F1 {num(best['f1_macro'])})."
    ]
    recall = best.get("recall_per_category")
    if recall:
        per = ", ".join(
            f"{plain_label(c)} {num(r)}"
            for c, r in zip(report["data"]["categories"], recall, strict=True)
        )
        s.append(f"Per category (recall): {per}.")
    if best.get("p_family") is not None:
        s.append(_permutation_text(report, best))
    else:
        s.append("It was not permutation-tested, so no effect is claimed for it.")
    untested = [p for p in main if p.get("p_family") is None and p["accuracy"] > best["accuracy"]]
    if untested and not report["options"].get("primary"):
        top = max(untested, key=lambda p: p["accuracy"])
        s.append(
            f"{probe_phrase(top)} scores higher ({num(top['accuracy'])}) but is not in the "
            "permutation family (set permute_all_probes to test it)."
        )
    s += _against_controls(report, best) + _selectivity(report, best) + _verdict(report, main)
    return {"title": "Do the thoughts encode the operations?", "sentences": s}


def _cell(c: dict) -> str:
    return code(f"{c['position']}@{c['layer']}")


def _cell_member(c: dict) -> str:
    return member_name("logreg", f"{c['position']}@{c['layer']}")


def token_layer(report: dict) -> Section | None:
    cells = report["token_layer_map"]
    if not cells:
        return None
    bestc = max(cells, key=lambda c: c["accuracy"])
    worst = min(cells, key=lambda c: c["accuracy"])
    s = [
        f"Of {len(cells)} single (position, layer) cells, the best is {code(bestc['position'])} "
        f"at layer {bestc['layer']} with accuracy {num(bestc['accuracy'])} "
        f"({ci(bestc['ci_low'], bestc['ci_high'])}; selected as the best cell; family-wise "
        f"{pval(bestc.get('p_family'))}); the worst is {code(worst['position'])} at layer "
        f"{worst['layer']} ({num(worst['accuracy'])})."
    ]
    if bestc.get("p_family") is not None:
        above = [_cell(c) for c in cells if claimed(report, "decoding", _cell_member(c))]
        s.append(
            f"{len(above)} of {len(cells)} cells decode the category above chance under the "
            f"report's family-wise procedure{named_list(above)}."
        )
    beyond = [_cell(c) for c in cells if claimed(report, "beyond_baseline", _cell_member(c))]
    bc = CONTROL_LABELS[report["best_control"]]
    s.append(
        f"{len(beyond)} of {len(cells)} cells beat the {bc} control after the family-wise "
        f"correction{named_list(beyond)}."
    )
    return {"title": "Where: token × layer", "sentences": s}


def pre_thought(report: dict) -> Section | None:
    pre = control(report, "pre_thought")
    rows = report["pre_thought"]
    if pre is None or not rows:
        return None
    better = [code(r["position"]) for r in rows if claimed(report, "latent_vs_bot", r["position"])]
    top = max(rows, key=lambda r: r["minus_pre_thought"]["value"])
    return {
        "title": "Before vs during thinking",
        "sentences": [
            f"Before any latent step, the `bot` state alone gives accuracy "
            f"{num(pre['accuracy'])} ({ci(pre['ci_low'], pre['ci_high'])}).",
            f"{len(better)} of {len(rows)} latent steps beat it after the family-wise "
            f"correction{named_list(better)}; the largest difference is {code(top['position'])}, "
            f"{diff_text(top['minus_pre_thought'])}.",
        ],
    }


def _step_member(entry: dict, view: str) -> str:
    return f"step{entry['step']}/{member_name('logreg', view)}"


def step_operations(report: dict) -> Section | None:
    """Per step j: where its operation (×/÷ or +/−) is decoded beyond the question text, at its
    own thought `latent_j` and at `bot`, and whether `latent_j` beats `bot`."""
    entries = report.get("step_operations") or []
    if not entries:
        return None
    s, own_steps = [], []
    for e in entries:
        rows = {r["view"]: r for r in e["positions"]}
        base = (
            f"the question-text control's {num(e['question_text']['accuracy'])}"
            if e["baseline"] == "question_text"
            else f"the majority's {num(e['majority_rate'])}"
        )
        where = [code(v) for v in rows if claimed(report, "step_operations", _step_member(e, v))]
        parts = [
            f"Step {e['step']}'s operation ({e['n_problems']} problems with ≥ {e['step']} steps, "
            f"{e['mul_div']} × or ÷): decoded beyond {base} at {len(where)} of {len(rows)} "
            f"positions after the family-wise correction{named_list(where)}"
        ]
        own = rows.get(e["own_thought"])
        if own is not None:
            parts.append(
                f"its own thought {code(e['own_thought'])} {num(own['accuracy'])} "
                f"({ci(own['ci_low'], own['ci_high'])})"
            )
        bot = rows.get("bot")
        if bot is not None:
            parts.append(f"`bot` {num(bot['accuracy'])} ({ci(bot['ci_low'], bot['ci_high'])})")
        if own is not None and own["minus_bot"] is not None:
            better = claimed(report, "step_op_own_thought_vs_bot", _step_member(e, own["view"]))
            parts.append(
                f"{code(e['own_thought'])} − `bot` {num(own['minus_bot']['value'])} "
                f"({ci(own['minus_bot']['ci_low'], own['minus_bot']['ci_high'])}, "
                + ("claimed" if better else "not claimed")
                + ")"
            )
            bot_decodes = bot is not None and claimed(
                report, "step_operations", _step_member(e, "bot")
            )
            own_decodes = claimed(report, "step_operations", _step_member(e, own["view"]))
            if better and own_decodes and not bot_decodes:
                own_steps.append(str(e["step"]))
        s.append("; ".join(parts) + ".")
    s.append(
        (
            f"Steps decoded at their own thought beyond the question text, better there than at "
            f"`bot`, and not demonstrably at `bot`: {', '.join(own_steps)} of "
            f"{len(entries)}."
        )
        if own_steps
        else f"No step's operation is decoded at its own thought, beyond the question text, "
        f"better than at `bot` and not at `bot` ({len(entries)} steps tested)."
    )
    return {"title": "Each step's operation", "sentences": s}
