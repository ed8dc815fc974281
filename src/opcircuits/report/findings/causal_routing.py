"""Sentences on what routes the answer, from the sweep's routing controls (`interventions.json`):
the two truncations (natural and position-preserved positions) and the position effect between
them, the joint content ablations at fixed positions, the attention knockouts, path patching and
the normalized recovery of patching.

The words follow the tests: "the thoughts are needed" only where a content ablation at fixed
positions lowers accuracy at family-wise α (step-down max-T over the sweep); "dispensable" only
where two one-sided tests bound the accuracy drop within ±δ (δ = `DISPENSABLE`, Holm over the
sweep); "lowers accuracy" for an edge only when claimed the same way. Anything else is "neither
shown to matter nor shown dispensable".
"""

from __future__ import annotations

import re
from typing import Any

from opcircuits.analysis.causal_stats import DISPENSABLE
from opcircuits.markdown import code
from opcircuits.report.findings.text import num, pval

ALL = "all"
ALPHA = 0.05
JOINT = re.compile(r"latent_(\d+)(?:-(\d+))?@(0|0-\d+)$")
ABLATIONS = ("mean", "zero", "resample")
FLOOR = 0.05  # a clean accuracy below this leaves nothing for an ablation to lower


def _ci(ci: list[float | None]) -> str:
    return f"CI {num(ci[0])}…{num(ci[1])}"


def claimed(e: dict[str, Any]) -> bool:
    p = e.get("drop_p_family")
    return p is not None and p < ALPHA and (e.get("drop") or 0) > 0


def dispensable(e: dict[str, Any]) -> bool:
    return bool(e.get("drop_dispensable"))


def _drop(e: dict[str, Any]) -> str:
    return f"drop {num(e['drop'])}, {_ci(e['drop_ci'])}, family-wise {pval(e.get('drop_p_family'))}"


def _equiv(e: dict[str, Any]) -> str:
    return f"within ±{num(DISPENSABLE)}, TOST {pval(e.get('drop_equiv_p'))}"


def _verdict(e: dict[str, Any]) -> str:
    if claimed(e):
        return f"lowers accuracy ({_drop(e)})"
    if dispensable(e):
        return f"leaves accuracy unchanged ({_drop(e)}; {_equiv(e)})"
    return f"is neither shown to matter nor shown dispensable ({_drop(e)})"


def sentences(result: dict[str, Any], pooled: list[dict[str, Any]]) -> list[str]:
    """The routing sentences of the "Causal tests" section (none for a sweep without them).
    With the clean run's accuracy near 0 an unchanged accuracy says nothing, so nothing is then
    called dispensable from it."""
    floor: list[str] = []
    clean = (result.get("clean") or {}).get(ALL, {}).get("accuracy")
    if clean is not None and clean < FLOOR and any(dispensable(e) for e in pooled):
        pooled = [{**e, "drop_dispensable": False} for e in pooled]
        floor = [
            f"The clean run answers {num(clean)} correctly, so an unchanged accuracy cannot show "
            "that a thought, an edge or a path is dispensable: none is called so here."
        ]
    return floor + (
        _truncations(result, pooled)
        + _content(result, pooled)
        + _edges(pooled)
        + _paths(result, pooled)
    )


def _curve(result: dict[str, Any], positions: str) -> str:
    pts = sorted(
        (
            t
            for t in result.get("thoughts", [])
            if t["category"] == ALL and t.get("positions", "natural") == positions
        ),
        key=lambda t: t["thoughts"],
    )
    return ", ".join(f"{t['thoughts']}: {num(t['accuracy'])}" for t in pts)


def _truncations(result: dict[str, Any], pooled: list[dict[str, Any]]) -> list[str]:
    kept = sorted((e for e in pooled if e["kind"] == "truncate_pos"), key=lambda e: e["thoughts"])
    if not kept:
        return []
    K = result["num_latent"]
    s = [
        f"Accuracy by thoughts kept ({K} = all) with eot and the answer at the position ids they "
        f"have after {K} thoughts (position-preserved): {_curve(result, 'preserved')}; at the "
        f"natural positions, right after the kept thoughts: {_curve(result, 'natural')}."
    ]
    enough = [e for e in kept if e["thoughts"] >= 1 and dispensable(e)]
    if enough:
        e = enough[0]
        s.append(
            f"With the answer's positions kept, {e['thoughts']} of the {K} thoughts answer as "
            f"well as all {K}: the drop is {num(e['drop'])} ({_ci(e['drop_ci'])}; {_equiv(e)})."
        )
    for e in kept:
        if e["thoughts"] in (0, 1) and e not in enough[:1]:
            n = e["thoughts"]
            s.append(
                f"Keeping {n} thought{'' if n == 1 else 's'} at preserved positions {_verdict(e)}."
            )
    effect = (result.get("routing") or {}).get("position_effect") or []
    natural = {e["thoughts"]: e for e in pooled if e["kind"] == "truncate"}
    moved = [
        r
        for r in effect
        if r["difference_ci"][0] is not None
        and r["difference_ci"][0] > 0
        and claimed(natural.get(r["thoughts"], {}))
    ]
    if moved:
        parts = ", ".join(
            f"k = {r['thoughts']}: +{num(r['difference'])} ({_ci(r['difference_ci'])})"
            for r in moved
        )
        s.append(
            "Part of the natural truncation's drop is a position effect (eot and the answer fed "
            f"at earlier position ids), not the missing thoughts: moving them back to their "
            f"{K}-thought positions restores accuracy by {parts}."
        )
    return s


def _thought_range(first: int, last: int) -> str:
    """`latent_a … latent_b together`, or `latent_b alone` for one thought."""
    return f"latent_{last} alone" if first == last else f"latent_{first} … latent_{last} together"


def _joint(pooled: list[dict[str, Any]], K: int) -> list[tuple[int, bool, dict[str, Any]]]:
    """(first thought, at every layer?, effect) of the joint ablations of latent_a … latent_K."""
    out = []
    for e in pooled:
        m = JOINT.fullmatch(e.get("sites") or "")
        if e["kind"] not in ABLATIONS or not m:
            continue
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if last == K:
            out.append((first, m.group(3) != "0", e))
    return out


def _content(result: dict[str, Any], pooled: list[dict[str, Any]]) -> list[str]:
    K = result["num_latent"]
    joint = [j for j in _joint(pooled, K) if j[2]["kind"] == "mean"] or _joint(pooled, K)
    kind = joint[0][2]["kind"] if joint else "mean"
    inputs = [
        e
        for e in pooled
        if e["kind"] == kind
        and (e.get("position") or "").startswith("latent_")
        and e.get("layer") == 0
    ]
    if not (joint or inputs):
        return []
    s = []
    hits = [e for e in inputs if claimed(e)]
    needed = [j for j in joint if claimed(j[2])]
    if hits:
        names = ", ".join(code(e["position"]) for e in hits)
        top = max(hits, key=lambda e: e["drop"])
        only = "only " if len(hits) == 1 else ""
        s.append(
            f"The thoughts' content is needed, at fixed positions: {kind}-ablating a thought's "
            f"input alone lowers accuracy for {len(hits)} of {len(inputs)} thoughts ({names}; "
            f"largest {code(top['position'])}: {_drop(top)}), so {names} is the {only}thought"
            f"{'s' if len(hits) > 1 else ''} whose own content is shown to matter."
        )
    if needed:
        first, every, e = max(needed, key=lambda j: (j[0], not j[1]))
        s.append(
            f"{kind.capitalize()}-ablating {_thought_range(first, K)} "
            f"{'at every layer' if every else 'at the input'}, positions unchanged, lowers "
            f"accuracy ({_drop(e)})."
        )
    spare = [j for j in joint if dispensable(j[2])]
    if spare:
        first = min(j[0] for j in spare)
        both = [j for j in joint if j[0] == first]
        where = "; ".join(
            f"{'every layer' if every else 'input'}: {_drop(e)}, {_equiv(e)}"
            for _, every, e in both
        )
        s.append(
            f"The content of latent_{first} … latent_{K} is dispensable: {kind}-ablating them "
            f"together at fixed positions leaves accuracy within ±{num(DISPENSABLE)} ({where})."
        )
    if not (hits or needed):
        s.append(
            "No content ablation at fixed positions lowers accuracy: nothing here shows that the "
            "answer needs the thoughts' content."
        )
    return s


def _edges(pooled: list[dict[str, Any]]) -> list[str]:
    knock = {
        e["intervention"].removeprefix("knockout "): e for e in pooled if e["kind"] == "knockout"
    }
    if not knock:
        return []
    s = []
    q = knock.get("answer>question")
    if q is not None:
        if claimed(q):
            s.append(
                "The answer reads the question directly: blocking the attention of eot and the "
                f"answer tokens to the question (every layer) lowers accuracy ({_drop(q)}) — a "
                "direct question → answer path, beside any through the thoughts."
            )
        else:
            s.append(f"Blocking the answer's attention to the question {_verdict(q)}.")
    for name, what in (("answer>bot", "to bot"), ("answer>thoughts", "to all thoughts")):
        if name in knock:
            s.append(f"Blocking the answer's attention {what} {_verdict(knock[name])}.")
    single = sorted(
        (n for n in knock if re.fullmatch(r"answer>latent_\d+", n)), key=lambda n: int(n[14:])
    )
    if single:
        hit = [n[7:] for n in single if claimed(knock[n])]
        spare = [n[7:] for n in single if dispensable(knock[n])]
        s.append(
            f"Of the answer's attention to each thought, blocking it lowers accuracy for "
            f"{', '.join(map(code, hit)) or 'none'}; it is shown dispensable (±{num(DISPENSABLE)})"
            f" for {', '.join(map(code, spare)) or 'none'} of {len(single)}."
        )
    reads = [n for n in knock if re.fullmatch(r"(latent_\d+|thoughts)>question", n)]
    if reads:
        hit = [n.split(">")[0] for n in reads if claimed(knock[n])]
        s.append(
            "Blocking the thoughts' attention to the question lowers accuracy for "
            f"{', '.join(map(code, hit)) or 'none'} of {len(reads)} thought knockouts."
        )
    return s


def _paths(result: dict[str, Any], pooled: list[dict[str, Any]]) -> list[str]:
    paths = {e["intervention"]: e for e in pooled if e["kind"] == "path"}
    if not paths:
        return _by_step(result, pooled)
    rec = {
        r["intervention"]: r
        for r in (result.get("routing") or {}).get("recovery", [])
        if r["by"] == "category" and r["group"] == ALL and r["measure"] == "ld_answer"
    }

    def text(label: str) -> str:
        e, r = paths[label], rec.get(label)
        out = f"the answer becomes the partner's in {num(e['follows_source'])} of problems"
        if r is not None and r["recovery"] is not None:
            out += f", normalized recovery {num(r['recovery'])} ({_ci(r['recovery_ci'])})"
        return out

    s = []
    if "path answer" in paths and "path thoughts" in paths:
        every = (
            f"; read by every segment (the partner's own run), {text('path all')}"
            if "path all" in paths
            else ""
        )
        s.append(
            "Path patching the partner's prompt (question + bot): read by the answer only, "
            f"{text('path answer')}; read by the thoughts only, {text('path thoughts')}{every}."
        )
    s += _by_step(result, pooled)
    patch = [r for r in rec.values() if paths.get(r["intervention"]) is None]
    best = max((r for r in patch if r["recovery"] is not None), key=lambda r: r["recovery"],
               default=None)  # fmt: skip
    if best is not None:
        s.append(
            f"Patching a single set of the partner's thought states recovers at most "
            f"{num(best['recovery'])} of the way to the partner's answer "
            f"({code(best['intervention'])}, {_ci(best['recovery_ci'])}; logit difference of "
            "the whole answer, 0 = the problem's own run, 1 = the partner's)."
        )
    return s


def _by_step(result: dict[str, Any], pooled: list[dict[str, Any]]) -> list[str]:
    """Step-resolved: per changed step, the layer where patching the thought that should hold
    it (`patch_step`) recovers most of the way to the partner's answer."""
    kinds = {e["intervention"]: e["kind"] for e in pooled}
    rows = [
        r
        for r in (result.get("routing") or {}).get("recovery", [])
        if r["by"] == "changed_step" and r["measure"] == "ld_answer"
        and kinds.get(r["intervention"]) == "patch_step" and r["recovery"] is not None
    ]  # fmt: skip
    if not rows:
        return []
    parts = []
    for step in sorted({r["group"] for r in rows}, key=int):
        best = max((r for r in rows if r["group"] == step), key=lambda r: r["recovery"])
        layer = best["intervention"].rsplit("@", 1)[-1]
        parts.append(
            f"step {step}: {num(best['recovery'])} at layer {layer} ({_ci(best['recovery_ci'])}, "
            f"{best['n']} problems)"
        )
    return [
        "By the step whose operation the partner changes, patching the partner's state into the "
        "thought of that step recovers at most (normalized, whole-answer logit difference): "
        + "; ".join(parts)
        + "."
    ]
