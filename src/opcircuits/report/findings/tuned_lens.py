"""The tuned-lens section's sentences: where the tuned lens (trained by `opcircuits lens train`)
reads the final layer's prediction off a layer better than the logit lens, and by how much."""

from __future__ import annotations

from opcircuits.markdown import code
from opcircuits.report.findings.text import Section, num


def _times(logit: float, tuned: float) -> str:
    return f", {num(logit / tuned, 1)}× lower" if tuned > 0 else ""


def tuned_lens(report: dict) -> Section | None:
    sec = report.get("tuned_lens")
    if not sec:
        return None
    best, n, n_better = sec["best"], sec["n_compared"], sec["n_tuned_better"]
    s = [
        f"On {sec['n_held_out']} held-out problems, the tuned lens's KL to the final layer's "
        f"next-token distribution is below the logit lens's at {n_better} of the {n} layers "
        f"before the final one (layer {sec['final_layer']})."
    ]
    if best["gain"] > 0:
        s.append(
            f"It gains most at layer {best['layer']}: {num(best['tuned'], 3)} nats against "
            f"{num(best['logit'], 3)} for the logit lens ({num(best['gain'], 3)} nats lower"
            f"{_times(best['logit'], best['tuned'])})."
        )
    else:
        s.append("It gains at no layer: the logit lens is as close to the final layer or closer.")
    latents = [
        t
        for t in sec["top_tokens"]
        if t["layer"] == best["layer"] and t["position"].startswith("latent_") and t["top1"]
    ]
    if latents:
        reads = "; ".join(
            f"{code(t['position'])} {code(t['top1'][0][0])} ({t['top1'][0][1]}×)" for t in latents
        )
        s.append(f"Its most frequent top-1 token there, per thought (held-out problems): {reads}.")
    return {"title": "Tuned lens", "sentences": s}
