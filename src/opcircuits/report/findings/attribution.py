"""Attribution patching's sentences, from attribution.json's numbers only: how well the
first-order estimates rank the verified components, and which components' exact patch is
confirmed over pairs (sign flips, Holm over the verified components)."""

from __future__ import annotations

from typing import Any

from opcircuits.report.findings.text import num


def component_name(c: dict[str, Any]) -> str:
    """`head 2.1 at latent_3`, `mlp 4 at answer`, `resid 0 at question token −3`."""
    where = c["segment"]
    if c.get("token") is not None:
        where += f" token {num(c['token'], 0)}"
    if c["kind"] == "head":
        return f"head {c['layer']}.{c['head']} at {where}"
    return f"{c['kind']} {c['layer']} at {where}"


def attribution_sentences(result: dict[str, Any]) -> list[str]:
    check = result["check"]
    n, v = result["n_pairs"], check["n_verified"]
    out = [
        f"Attribution patching scored {result['n_components']} components on {n} pairs; the "
        f"{v} with the largest |estimate| were patched exactly, one at a time."
    ]
    if check["spearman"] is not None:
        out.append(
            f"Over them, the estimates' Spearman ρ with the exact effects is "
            f"{num(check['spearman'])}."
        )
    confirmed = [c for c in check["components"] if c["confirmed"]]
    if not v:
        return out
    if not confirmed:
        out.append(
            f"No verified component's exact effect is confirmed (sign flips over pairs, Holm over "
            f"the {v} at family-wise {num(result['alpha'], 2)})."
        )
        return out
    named = "; ".join(
        f"{component_name(c)} ({num(c['exact'])}, p = {c['p_holm']:.2g})" for c in confirmed[:10]
    )
    more = f" and {len(confirmed) - 10} more" if len(confirmed) > 10 else ""
    out.append(
        f"Patched alone from the partner, {len(confirmed)} of the {v} move the normalized logit "
        f"difference beyond chance (sign flips over pairs, Holm over the {v} at family-wise "
        f"{num(result['alpha'], 2)}): {named}{more}."
    )
    return out
