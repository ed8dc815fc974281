"""Sentences of concept erasure in the "Causal tests" section: per erased site, whether the
category is *decodable* there (the analysis report's family-wise claim for the probe of that
(position, layer) cell, when the report has that cell), *used* (LEACE's accuracy or gold
log-prob drop beyond its random-subspace control claimed family-wise, `analysis.causal_erasure`),
both, or neither. Every word follows from those two booleans and the numbers beside them."""

from __future__ import annotations

from typing import Any

from opcircuits.analysis.claims import claimed, member_name
from opcircuits.markdown import code
from opcircuits.report.findings.text import num, pval

VERDICT = {
    (True, True): "decodable and used",
    (True, False): "decodable but not shown to be used",
    (False, True): "used but not claimed decodable",
    (False, False): "neither claimed decodable nor shown to be used",
}


def _ci(ci: list[float | None]) -> str:
    return f"CI {num(ci[0])}…{num(ci[1])}"


def decodable(report: dict | None, row: dict[str, Any]) -> bool | None:
    """The probe's verdict at the row's cell: None when the report has no probe of that cell."""
    if not report or row.get("position") is None:
        return None
    cell = f"{row['position']}@{row['layer']}"
    cells = {f"{c['position']}@{c['layer']}" for c in report.get("token_layer_map") or []}
    if cell not in cells:
        return None
    return claimed(report, "decoding", member_name("logreg", cell))


def sentences(result: dict[str, Any], report: dict | None = None) -> list[str]:
    rows = result.get("erasure") or []
    if not rows:
        return []
    s = [
        f"Concept erasure at {len(rows)} site(s): LEACE of the category (cross-fitted, so no "
        "problem's own label fits its eraser) against a random subspace of the same rank; "
        "'used' needs the difference of their drops claimed family-wise over both measures of "
        f"these {len(rows)} sites, 'decodable' the probe's family-wise claim at that cell."
    ]
    for r in rows:
        dec = decodable(report, r)
        used = bool(r["used_claimed"])
        where = f"{code(r['site'])}"
        numbers = (
            f"erasing drops accuracy by {num(r.get('drop_erase'))} against "
            f"{num(r.get('drop_random'))} for the random subspace (difference "
            f"{num(r['beyond'])}, {_ci(r['beyond_ci'])}, family-wise "
            f"{pval(r.get('beyond_p_family'))}) and the gold log-prob by "
            f"{num(r.get('logp_drop_erase'))} against {num(r.get('logp_drop_random'))} nats "
            f"(difference {num(r['logp_beyond'])}, {_ci(r['logp_beyond_ci'])}, family-wise "
            f"{pval(r.get('logp_beyond_p_family'))})"
        )
        if dec is None:
            verdict = "used" if used else "not shown to be used"
            s.append(f"{where}: {verdict} (no probe of this cell in the report); {numbers}.")
        else:
            s.append(f"{where}: {VERDICT[dec, used]}; {numbers}.")
    return s
