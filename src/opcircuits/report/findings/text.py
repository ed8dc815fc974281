"""Number formatting and shared phrases of the summary's sentences."""

from __future__ import annotations

from typing import Any

from opcircuits.analysis.claims import member_name
from opcircuits.markdown import code

Section = dict[str, Any]

PROBE_LABELS = {
    "logreg": "logistic regression",
    "random_forest": "random forest",
    "mlp": "MLP",
}
CONTROL_LABELS = {
    "majority": "majority-class",
    "shuffled_labels": "shuffled-label",
    "question_text": "TF-IDF question-text",
    "confound": "confound (steps and length)",
    "step_lookup": "step-count lookup",
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


def pval(p: float | None) -> str:
    """'p = 0.012', 'p < 0.001', 'p n/a'."""
    return "p n/a" if p is None else ("p < 0.001" if p < 0.001 else f"p = {num(p, 3)}")


def diff_text(diff: dict, what: str = "difference") -> str:
    """'difference 0.12, CI 0.05…0.19, p = 0.004 uncorrected'."""
    return (
        f"{what} {num(diff['value'])}, {ci(diff['ci_low'], diff['ci_high'])}, "
        f"{pval(diff.get('p_value'))} uncorrected"
    )


def control(report: dict, name: str) -> dict | None:
    return next((c for c in report["controls"] if c["name"] == name), None)


def probe_phrase(p: dict) -> str:
    return f"{PROBE_LABELS.get(p['probe'], p['probe'])} on the {code(p['view'])} view"


def headline_probe(report: dict) -> dict | None:
    """The probe the headline is about: the pre-registered one, else the most accurate
    main-view probe of the permutation family (else the most accurate main-view probe)."""
    main = [p for p in report.get("probes", []) if p.get("view_kind", "main") == "main"]
    if not main:
        return None
    primary = (report.get("options") or {}).get("primary")
    if primary:
        chosen = [p for p in main if member_name(p["probe"], p["view"]) == primary]
        if chosen:
            return chosen[0]
    tested = [p for p in main if p.get("p_family") is not None] or main
    return max(tested, key=lambda p: (p["accuracy"], -tested.index(p)))


def gate_sentence(report: dict) -> str:
    inf = report.get("inference")
    if not inf or inf["primary"]["p_family"] is None:
        return (
            "No permutation test was run (--permutations 0): nothing below is claimed as an effect."
        )
    n = len(inf["claims"])
    tested = sum(
        1
        for f in [inf["primary"], *inf["secondary"]]
        for m in f["members"]
        if m.get("p_final") is not None
    )
    return (
        f"Effects are claimed only where the family-wise error rate over all {tested} tested "
        f"members of the report is held at {num(inf['alpha'])} in the strong sense (whatever "
        "mix of real and null effects): the decoding test opens the gate, then the decoding "
        "probes and every other test share α in one Holm-type graph (Bretz et al. 2009); each "
        "claim below survives that correction for all of them: "
        + (f"{n} claim(s) pass." if n else "no effect passes.")
    )


def named_list(items: list[str], limit: int = 8) -> str:
    return ": " + ", ".join(items[:limit]) + (" …" if len(items) > limit else "") if items else ""
