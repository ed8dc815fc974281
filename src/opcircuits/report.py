"""Render an analysis report (the dict in analysis_report.json) as ANALYSIS_SUMMARY.md and one
self-contained report.html (figures embedded as base64, all text escaped by jinja2).

Every sentence is computed from the numbers: which control a probe beats, whether an interval
includes zero, which cell is best. Nothing is written that the numbers do not say.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import jinja2

from opcircuits.files import write_text_atomic

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


def _control(report: dict, name: str) -> dict | None:
    return next((c for c in report["controls"] if c["name"] == name), None)


def findings(report: dict) -> list[dict[str, Any]]:
    """Sections of sentences, each derived from the report's numbers."""
    d = report["data"]
    out: list[dict[str, Any]] = []
    counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in d["class_counts"].items())
    out.append(
        {
            "title": "Data",
            "sentences": [
                f"{d['n_problems']} problems in {len(d['categories'])} categories ({counts}); "
                f"chance is {num(d['chance'])} and always guessing the largest category scores "
                f"{num(d['majority_rate'])}.",
                f"Every probe and control is scored on the same {d['folds']}-fold stratified "
                f"cross-validation repeated {d['repeats']} times "
                f"({d['n_fold_scores']} fold scores); "
                "intervals are 95% corrected resampled t-intervals.",
            ],
        }
    )

    main = [p for p in report["probes"] if p["view_kind"] == "main"]
    if main:
        best = max(main, key=lambda p: (p["accuracy"], -main.index(p)))
        label = PROBE_LABELS.get(best["probe"], best["probe"])
        s = [
            f"The best probe on the continuous thoughts, {label} on the `{best['view']}` view, "
            f"reaches accuracy {num(best['accuracy'])} ({ci(best['ci_low'], best['ci_high'])}, "
            f"macro F1 {num(best['f1_macro'])})."
        ]
        for name in ("question_text", "confound", "majority"):
            c = _control(report, name)
            if c is None:
                continue
            diff = best["selectivity_vs"][name]
            s.append(
                f"It {verdict(diff)} the {CONTROL_LABELS[name]} control "
                f"(accuracy {num(c['accuracy'])}; {_sel(diff)})."
            )
        if best["selectivity_vs_pre_thought"] is not None:
            diff = best["selectivity_vs_pre_thought"]
            pre = _control(report, "pre_thought")
            s.append(
                f"It {verdict(diff)} the pre-thought probe on `bot` (accuracy "
                f"{num(pre['accuracy'])}; difference {num(diff['value'])}, "
                f"{ci(diff['ci_low'], diff['ci_high'])})."
            )
        lr = next((p for p in main if p["view"] == best["view"] and p["probe"] == "logreg"), None)
        if lr is not None and lr["p_value"] is not None:
            n_perm = report["options"]["permutations"]
            alpha_ok = lr["p_value"] < 0.05
            s.append(
                f"The logistic-regression probe on `{best['view']}` "
                + ("scores above" if alpha_ok else "is not distinguishable from")
                + f" probes trained on permuted labels (p = {num(lr['p_value'], 3)}, "
                f"{n_perm} permutations)."
            )
        bc = report["best_control"]
        winners = [
            p
            for p in main
            if p["selectivity"]["ci_low"] is not None and p["selectivity"]["ci_low"] > 0
        ]
        s.append(
            f"{len(winners)} of {len(main)} probes on the main views beat the strongest "
            f"baseline control, the {CONTROL_LABELS[bc]} control "
            f"(accuracy {num(_control(report, bc)['accuracy'])})."
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
        out.append({"title": "Do the thoughts encode the operations?", "sentences": s})

    cells = report["token_layer_map"]
    if cells:
        bestc = max(cells, key=lambda c: c["accuracy"])
        worst = min(cells, key=lambda c: c["accuracy"])
        s = [
            f"Of {len(cells)} single (position, layer) cells, the best is `{bestc['position']}` "
            f"at layer {bestc['layer']} with accuracy {num(bestc['accuracy'])} "
            f"({ci(bestc['ci_low'], bestc['ci_high'])}); the worst is `{worst['position']}` at "
            f"layer {worst['layer']} ({num(worst['accuracy'])})."
        ]
        above = [c for c in cells if c["ci_low"] is not None and c["ci_low"] > d["majority_rate"]]
        s.append(
            f"{len(above)} of {len(cells)} cells have a lower CI bound above the majority "
            f"rate {num(d['majority_rate'])}."
        )
        sel = [
            c
            for c in cells
            if c.get("selectivity")
            and c["selectivity"]["ci_low"] is not None
            and c["selectivity"]["ci_low"] > 0
        ]
        if cells[0].get("selectivity"):
            bc = CONTROL_LABELS[cells[0]["selectivity"]["control"]]
            named = ", ".join(f"`{c['position']}@{c['layer']}`" for c in sel[:8])
            s.append(
                f"{len(sel)} of {len(cells)} cells beat the {bc} control (selectivity "
                "interval above 0, not corrected for comparing many cells)"
                + (f": {named}" + (" …" if len(sel) > 8 else "") if sel else "")
                + "."
            )
        out.append({"title": "Where: token × layer", "sentences": s})

    pre = _control(report, "pre_thought")
    if pre is not None and report["pre_thought"]:
        rows = report["pre_thought"]
        better = [
            r["position"]
            for r in rows
            if r["minus_pre_thought"]["ci_low"] is not None and r["minus_pre_thought"]["ci_low"] > 0
        ]
        worse = [
            r["position"]
            for r in rows
            if r["minus_pre_thought"]["ci_high"] is not None
            and r["minus_pre_thought"]["ci_high"] < 0
        ]
        top = max(rows, key=lambda r: r["minus_pre_thought"]["value"])
        s = [
            f"Before any latent step, the `bot` state alone gives accuracy {num(pre['accuracy'])} "
            f"({ci(pre['ci_low'], pre['ci_high'])})."
        ]
        if better:
            s.append(
                f"{len(better)} of {len(rows)} latent steps beat it: "
                + ", ".join(f"`{b}`" for b in better)
                + "."
            )
        else:
            m = top["minus_pre_thought"]
            s.append(
                f"None of the {len(rows)} latent steps beats it; the largest difference is "
                f"`{top['position']}`, {num(m['value'])} ({ci(m['ci_low'], m['ci_high'])})."
            )
        if worse:
            s.append(
                f"{len(worse)} latent steps score below it: "
                + ", ".join(f"`{w}`" for w in worse)
                + "."
            )
        out.append({"title": "Before vs during thinking", "sentences": s})

    if report["clustering"]:
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
                f"`{r['view']}`: silhouette {num(sil)} (in the 2-D PCA plane "
                f"{num(r['silhouette_pca2'])}; PC1+PC2 explain "
                f"{pct(sum(r['explained_variance_ratio']))} of the variance) — categories "
                f"form {shape}."
            )
        out.append({"title": "Clustering", "sentences": s})

    sims = report["similarity"]
    if sims:
        r = next((x for x in sims if x["view"] == "mean"), sims[0])
        c, raw = r["centred"], r["raw"]
        closer = c["p_value"] is not None and c["p_value"] < 0.05 and c["difference"] > 0
        s = [
            f"In the `{r['view']}` view, raw cosine similarity is {num(raw['within'])} within "
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
        s.append(
            f"Mean-centred within > between holds (p < 0.05) in {len(sig)} of {len(sims)} views."
        )
        out.append({"title": "Similarity", "sentences": s})

    lens = report["logit_lens"]
    if lens.get("available"):
        lat = [p for p in lens["positions"] if p.startswith("latent")] or lens["positions"]
        rows = [
            x for x in lens["shares"] if x["category"] == "all" and x["position"] in lat and x["n"]
        ]
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
                f"`{top['position']}` ({pct(top['operator'])})."
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
        out.append({"title": "Logit lens", "sentences": s})

    model = report["model"]
    if model.get("available"):
        acc = model["answer_accuracy"]
        overall = next(a for a in acc if a["category"] == "all")
        per = "; ".join(
            f"{a['category'].replace('_', ' ')} {num(a['accuracy'])} (n={a['n']})"
            for a in acc
            if a["category"] != "all"
        )
        s = [
            f"The model answers {num(overall['accuracy'])} of problems correctly "
            f"({ci(overall['ci_low'], overall['ci_high'])}); per category: {per}."
        ]
        split = next(
            (
                x
                for x in model["probe_by_correctness"]
                if x["view"] == "mean" and x["probe"] == "logreg"
            ),
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
        out.append({"title": "The model's answers", "sentences": s})

    if report["notes"]:
        out.append({"title": "Notes", "sentences": list(report["notes"])})
    return out


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("opcircuits", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = num
    env.filters["pct"] = pct
    env.globals["probe_label"] = lambda p: PROBE_LABELS.get(p, p)
    return env


def render_markdown(report: dict) -> str:
    env = _env()
    env.autoescape = False
    return env.get_template("summary.md.j2").render(r=report, sections=findings(report))


def render_html(report: dict, out_dir: Path) -> str:
    figures = []
    for f in report.get("figures", []):
        data = (Path(out_dir) / f["file"]).read_bytes()
        figures.append({**f, "uri": "data:image/png;base64," + base64.b64encode(data).decode()})
    return (
        _env()
        .get_template("report.html.j2")
        .render(r=report, sections=findings(report), figures=figures)
    )


def write_reports(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ANALYSIS_SUMMARY.md and report.html (figures read from out_dir) atomically."""
    out_dir = Path(out_dir)
    md, html = out_dir / "ANALYSIS_SUMMARY.md", out_dir / "report.html"
    write_text_atomic(md, render_markdown(report))
    write_text_atomic(html, render_html(report, out_dir))
    return md, html


# --- headline: the few numbers `opcircuits run` prints at the end -------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _with_ci(value: float, entry: dict[str, Any], sign: str = "") -> str:
    text = f"{value:{sign}.3f}"
    lo, hi = entry.get("ci_low"), entry.get("ci_high")
    if _is_number(lo) and _is_number(hi):
        text += f" (95% CI {lo:{sign}.3f} to {hi:{sign}.3f})"
    return text


def headline(report: dict[str, Any]) -> list[str]:
    """The few numbers printed at the end of a run, read from analysis_report.json."""
    lines: list[str] = []
    probes = [p for p in report.get("probes", []) if _is_number(p.get("accuracy"))]
    main = [p for p in probes if p.get("view_kind", "main") == "main"] or probes
    if main:
        best = max(main, key=lambda p: p["accuracy"])
        text = f"best probe: {best.get('probe')} on {best.get('view')}: accuracy "
        text += _with_ci(best["accuracy"], best)
        if _is_number(best.get("p_value")):
            text += f", permutation p = {best['p_value']:.3g}"
        lines.append(text)
        sel = best.get("selectivity")
        if isinstance(sel, dict) and _is_number(sel.get("value")):
            lines.append(
                f"selectivity vs the best control ({sel.get('control')}): "
                + _with_ci(sel["value"], sel, "+")
            )
    controls = [c for c in report.get("controls", []) if _is_number(c.get("accuracy"))]
    if controls:
        top = max(controls, key=lambda c: c["accuracy"])
        lines.append(f"best control: {top.get('name')}: accuracy {_with_ci(top['accuracy'], top)}")
    cells = [c for c in report.get("token_layer_map", []) if _is_number(c.get("accuracy"))]
    if cells:
        cell = max(cells, key=lambda c: c["accuracy"])
        where = f"{cell.get('position')} @ layer {cell.get('layer')}"
        lines.append(f"best token x layer cell: {where}: {_with_ci(cell['accuracy'], cell)}")
    model = report.get("model")
    if isinstance(model, dict):
        overall = [a for a in model.get("answer_accuracy") or [] if a.get("category") == "all"]
        if overall and _is_number(overall[0].get("accuracy")):
            a = overall[0]
            lines.append(
                f"model answer accuracy: {a['accuracy']:.3f} ({a.get('correct')}/{a.get('n')})"
            )
    return lines
