"""The summary's sentences, one function per report section, each computed from the numbers in
analysis_report.json. Nothing is written that the numbers do not say: an effect is stated as a
finding only when the report's `inference` section claims it (family-wise error rate 5% over
the whole report, see `analysis/claims.py`); every other comparison is given with its interval
and labelled uncorrected, and a selected winner's accuracy is labelled as selected.

Each section function takes the report dict and returns {"title", "sentences"} or None when the
report lacks that section. A new section (e.g. "Causal tests" from `report["causal_tests"]`) is
one more such function placed in `SECTIONS`. Names from the data (positions, views, categories)
are written through `opcircuits.markdown`, so the sentences are safe Markdown as well as text.
"""

from __future__ import annotations

from collections.abc import Callable

from opcircuits.markdown import code
from opcircuits.report.findings.causal import causal_tests
from opcircuits.report.findings.confound import (
    binary_probes,
    random_model,
    step_confound,
    step_matched_sample,
)
from opcircuits.report.findings.decoding import (
    data,
    pre_thought,
    probes,
    step_operations,
    token_layer,
)
from opcircuits.report.findings.descriptive import clustering, logit_lens, model, similarity
from opcircuits.report.findings.intermediate import intermediate_values
from opcircuits.report.findings.text import (
    CONTROL_LABELS,
    PROBE_LABELS,
    Section,
    ci,
    control,
    headline_probe,
    named_list,
    num,
    pct,
)
from opcircuits.report.findings.tuned_lens import tuned_lens


def claims(report: dict) -> Section | None:
    inf = report.get("inference")
    if not inf:
        return None
    families = [inf["primary"], *inf["secondary"]]
    s = []
    for fam in families:
        names = [code(m["name"]) for m in fam["members"] if m["claimed"]]
        if names:
            s.append(f"{code(fam['family'])} ({len(names)}){named_list(names)}.")
    return {
        "title": "Claims (family-wise α = 0.05)",
        "sentences": s or ["No effect is claimed."],
    }


def notes(report: dict) -> Section | None:
    return {"title": "Notes", "sentences": list(report["notes"])} if report["notes"] else None


# In the order the summary shows them; a new section goes before `claims`.
SECTIONS: list[Callable[[dict], Section | None]] = [
    data,
    probes,
    token_layer,
    step_confound,
    step_matched_sample,
    random_model,
    pre_thought,
    binary_probes,
    step_operations,
    clustering,
    similarity,
    logit_lens,
    tuned_lens,
    model,
    intermediate_values,
    causal_tests,
    claims,
    notes,
]


def findings(report: dict) -> list[Section]:
    """Sections of sentences, each derived from the report's numbers."""
    return [s for section in SECTIONS if (s := section(report)) is not None]


__all__ = [
    "CONTROL_LABELS",
    "PROBE_LABELS",
    "SECTIONS",
    "Section",
    "ci",
    "control",
    "findings",
    "headline_probe",
    "num",
    "pct",
]
