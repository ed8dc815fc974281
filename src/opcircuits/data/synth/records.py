"""A plan in words: the question, the GSM8K-style solution, and the problem record."""

from __future__ import annotations

from typing import Any

from opcircuits.data.annotations import category_of
from opcircuits.data.synth.language import (
    ADD_VERBS,
    CONNECTORS,
    FRAMES,
    NAMES,
    OBJECTS,
    PHRASES,
    PRONOUNS,
    SUB_VERBS,
    heldout_frame,
)
from opcircuits.data.synth.plans import OPS, Plan, Step


def _fill(template: str, plan: Plan, step: Step | None = None) -> str:
    name, gender = NAMES[plan.name]
    he, him, his = PRONOUNS[gender]
    values = {
        "Name": name,
        "he": he,
        "him": him,
        "his": his,
        "obj": OBJECTS[plan.obj],
        "a": plan.start,
        "b": step.operand if step else "",
        "add": ADD_VERBS[step.verb % len(ADD_VERBS)] if step else "",
        "sub": SUB_VERBS[step.verb % len(SUB_VERBS)] if step else "",
    }
    text = template.format(**values)
    return text[0].upper() + text[1:]


def render(plan: Plan) -> tuple[str, str]:
    """(question, GSM8K-style solution with annotations and `#### N`)."""
    setting, opening, ask = FRAMES[plan.frame]
    sentences = [_fill(setting, plan)] if setting else []
    sentences.append(_fill(opening, plan))
    for step in plan.steps:
        phrases = PHRASES[step.op]
        body = _fill(phrases[step.phrase % len(phrases)], plan, step)
        connector = CONNECTORS[step.connector]
        sentences.append(f"{connector}, {body[0].lower()}{body[1:]}")
    sentences.append(_fill(ask, plan))
    question = " ".join(sentences)

    name, gender = NAMES[plan.name]
    obj = OBJECTS[plan.obj]
    lines = [f"{name} starts with {plan.start} {obj}."]
    value = plan.start
    for k, (step, result) in enumerate(zip(plan.steps, plan.results(), strict=True), start=1):
        expr = f"{value}{step.op}{step.operand}"
        lines.append(f"After step {k} there are {expr}=<<{expr}={result}>>{result} {obj}.")
        value = result
    lines.append(f"#### {value}")
    return question, "\n".join(lines)


def record(pid: str, plan: Plan, split: str) -> dict[str, Any]:
    """A problem record in the data stage's shape (RECORD_FIELDS order), plus the frame."""
    question, answer = render(plan)
    results = plan.results()
    steps, value = [], plan.start
    for step, result in zip(plan.steps, results, strict=True):
        steps.append({"expr": f"{value}{step.op}{step.operand}", "result": str(result)})
        value = result
    ops = [s.op for s in plan.steps]
    return {
        "id": pid,
        "split": split,
        "question": question,
        "answer": answer,
        "final_answer": str(results[-1]),
        "final_value": results[-1],
        "steps": steps,
        "category": category_of(set(ops)),
        "n_steps": len(ops),
        "operators": {op: ops.count(op) for op in OPS},
        "frame_id": plan.frame,
        "heldout_frame": heldout_frame(plan.frame),
    }


def value_partner_record(i: int, pid: str, record: dict[str, Any]) -> dict[str, Any]:
    """A value partner's record (either kind): linked to its problem `pid` by `partner_of`, with
    what changed (`changed_value`: the start) and a pair_id of its own, so that no reader of the
    operation pairs (`pair_id`, `changed_step`) takes it for one of them."""
    return {**record, "id": f"synth_vp_{i}", "pair_id": f"value_pair_{i}",
            "changed_value": "start", "partner_of": pid}  # fmt: skip
