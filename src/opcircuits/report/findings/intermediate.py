"""The intermediate-values sentences: where each step's result r_j is decoded, by the logit lens
(the CODI paper's Table 3 metric, cited beside ours) and by value probes. A position is said to
hold r_j only where the section's family-wise test (step-down maxT over its cells) rejects."""

from __future__ import annotations

from opcircuits.markdown import code
from opcircuits.report.findings.text import Section, named_list, num, pval


def _pct1(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _survives(cell: dict, alpha: float) -> bool:
    return cell.get("p_family") is not None and cell["p_family"] <= alpha


def _held(h: dict) -> str:
    if h["best"] is None:
        return f"r_{h['step']} at none"
    b = h["best"]
    return (
        f"r_{h['step']} at {len(h['positions'])} position(s), best {code(b['position'])} "
        f"layer {b['layer']} (R² {num(b['r2'])})"
    )


def intermediate_values(report: dict) -> Section | None:
    sec = report.get("intermediate_values")
    if not sec or not sec.get("available") or not sec.get("n_problems"):
        return None
    alpha, s = sec["alpha"], []
    paper = sec["paper_table3"]
    lens = sec.get("lens") or {}
    if lens.get("available"):
        rows = lens["by_steps"]
        ours = "; ".join(
            f"{r['n_steps']}-step problems {_pct1(r['step_rate'])} of steps (chance "
            f"{_pct1(r['null_step_rate'])}, {pval(r['p_value'])} uncorrected; every step of the "
            f"problem: {_pct1(r['all_steps_rate'])}; n = {r['n_problems']})"
            for r in rows
        )
        s.append(
            f"Logit lens (final layer, top-{lens['top_k']}): a step's result r_j is among the "
            f"decoded tokens of some latent thought for {ours}. The CODI paper reports "
            f"{paper['1']} / {paper['2']} / {paper['3']}% for 1/2/3-step problems (top-5, "
            f"{sec['paper']}); chance is the same rate with another problem's results of the same "
            "step count."
        )
        for j in sorted({c["step"] for c in lens["cells"]}):
            ok = [c for c in lens["cells"] if c["step"] == j and _survives(c, alpha)]
            if ok:
                best = max(ok, key=lambda c: c["rate"])
                names = [f"{code(c['position'])} {_pct1(c['rate'])}" for c in ok]
                s.append(
                    f"The lens shows r_{j}'s token beyond chance family-wise at {len(ok)} "
                    f"position(s){named_list(names)}; most often at {code(best['position'])}."
                )
            else:
                s.append(f"The lens shows r_{j}'s token at no position beyond chance family-wise.")
    for j in sorted({c["step"] for c in lens.get("layer_cells") or []}):
        ok = [c for c in lens["layer_cells"] if c["step"] == j and _survives(c, alpha)]
        if ok:
            best = max(ok, key=lambda c: c["rate"])
            s.append(
                f"At every stored layer, the lens shows r_{j}'s token beyond chance family-wise in "
                f"{len(ok)} (position, layer) cell(s); most often at {code(best['position'])}, "
                f"layer {best['layer']} ({_pct1(best['rate'])})."
            )
    probes = (sec.get("probes") or {}).get("cells") or []
    if probes and not sec["permutations"]:
        s.append("No permutation tests were run (--permutations 0): no position is said to hold a "
                 "step's result.")  # fmt: skip
    elif probes:
        for h in [h for h in sec["holds"] if h["n_steps"] is None]:
            j = h["step"]
            n = max((c["n"] for c in probes if c["step"] == j), default=0)
            if h["best"] is None:
                s.append(f"Value probes: r_{j} is held at no (position, layer) family-wise "
                         f"(n = {n}).")  # fmt: skip
                continue
            b = h["best"]
            s.append(
                f"Value probes: r_{j} is held family-wise at {len(h['positions'])} position(s)"
                f"{named_list([code(p) for p in h['positions']])}; highest at "
                f"{code(b['position'])}, layer {b['layer']} (out-of-fold R² {num(b['r2'])}, "
                f"n = {n}, the best of the tested cells: selected)."
            )
        for n_steps in sorted({h["n_steps"] for h in sec["holds"]} - {None}):
            parts = [_held(h) for h in sec["holds"] if h["n_steps"] == n_steps]
            s.append(
                f"On the {n_steps}-step problems alone (r_{n_steps} is their answer), value probes "
                f"hold {'; '.join(parts)} family-wise."
            )
        s.append(
            "Results of one problem's steps are correlated with each other and with the answer, so "
            "a probe that reads r_j shows the value is linearly available there, not that it is "
            "stored as r_j rather than as something it determines."
        )
    return {"title": "Intermediate values", "sentences": s}
