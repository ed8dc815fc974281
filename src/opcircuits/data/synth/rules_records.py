"""The `rules` kind in words and as files: the rule phrasings, a plan's question and solution,
its record, and a balanced, step-matched set of problems with their partners."""

from __future__ import annotations

import random
from typing import Any

from opcircuits.data.annotations import CATEGORIES, category_of
from opcircuits.data.synth.language import FRAMES, NAMES, OBJECTS, PRONOUNS, heldout_frame
from opcircuits.data.synth.plans import OPS
from opcircuits.data.synth.records import value_partner_record
from opcircuits.data.synth.rules import (
    RULE_SETS,
    Pool,
    RulePlan,
    build_pool,
    rule_partner,
    rule_value_partner,
)
from opcircuits.errors import OpcircuitsError
from opcircuits.options import SynthOptions

# --- the language --------------------------------------------------------------------------------
# Each number's neighbours are the same words in every rule set ("by {b}", "for {s} rounds"), so
# a word pair with a number in it says no more than the number alone.

# (predicate holds, predicate fails) per divisor k.
PREDICATES: dict[int, tuple[str, str]] = {
    2: ("even", "odd"),
    3: ("a multiple of 3", "not a multiple of 3"),
    4: ("a multiple of 4", "not a multiple of 4"),
    5: ("a multiple of 5", "not a multiple of 5"),
    6: ("a multiple of 6", "not a multiple of 6"),
    7: ("a multiple of 7", "not a multiple of 7"),
}
# What a branch does, as a clause about the count.
ACTIONS: dict[tuple[str, int | None], str] = {
    ("/", 2): "the count is halved",
    ("/", 3): "the count is cut to a third",
    ("*", 2): "the count is doubled",
    ("*", 3): "the count is tripled",
    ("+", None): "the count goes up by {b}",
    ("-", None): "the count goes down by {b}",
}
# Why a step applies its branch, in the solution.
BECAUSE: dict[int, tuple[str, str]] = {
    k: (f"is {t}", f"is {f}") for k, (t, f) in PREDICATES.items()
}

# Rule phrasings: (rule sentence, rounds sentence). {cm}/{am}: the predicate and action of the
# multiplicative branch, {ca}/{aa}: those of the additive branch. The last one (index ≡ 3 mod 4)
# is held out: only the test split uses it.
PHRASINGS: tuple[tuple[str, str], ...] = (
    ("Every round, if the number of {obj} is {cm}, {am}; if it is {ca}, {aa}.",
     "{Name} plays {s} rounds."),
    ("In every round {aa} when the number of {obj} is {ca}, and {am} when it is {cm}.",
     "This goes on for {s} rounds."),
    ("{Name} follows one rule each round: when the count is {cm}, {am}; otherwise {aa}.",
     "{he} keeps at it for {s} rounds."),
    ("Whenever the number of {obj} is {ca} at the start of a round, {aa}; in every other round, "
     "{am}.", "After {s} rounds {he} stops."),
)  # fmt: skip
HELDOUT_PHRASING_MOD = 4


def heldout_phrasing(phrasing: int) -> bool:
    """Rule phrasings only the test split uses."""
    return phrasing % HELDOUT_PHRASING_MOD == HELDOUT_PHRASING_MOD - 1


def _clauses(plan: RulePlan) -> dict[str, str]:
    rs = RULE_SETS[plan.rule]
    holds, fails = PREDICATES[rs.k]
    cm, ca = (holds, fails) if rs.mult_when_multiple else (fails, holds)
    return {
        "cm": cm,
        "ca": ca,
        "am": ACTIONS[(rs.mult_op, rs.mult_operand)],
        "aa": ACTIONS[(rs.add_op, None)].format(b=plan.operand),
    }


def _fill(template: str, plan: RulePlan, **extra: Any) -> str:
    name, gender = NAMES[plan.name]
    he, him, his = PRONOUNS[gender]
    values = {"Name": name, "he": he, "him": him, "his": his, "obj": OBJECTS[plan.obj]}
    text = template.format(a=plan.start, s=plan.applications, **values, **extra)
    return text[0].upper() + text[1:]


def render(plan: RulePlan) -> tuple[str, str]:
    """(question, GSM8K-style solution: one annotation per applied step, then `#### N`)."""
    setting, opening, ask = FRAMES[plan.frame]
    rule, rounds = PHRASINGS[plan.phrasing]
    sentences = [_fill(setting, plan)] if setting else []
    sentences += [_fill(opening, plan), _fill(rule, plan, **_clauses(plan))]
    sentences += [_fill(rounds, plan), _fill(ask, plan)]
    question = " ".join(sentences)

    rs = RULE_SETS[plan.rule]
    name, _ = NAMES[plan.name]
    obj = OBJECTS[plan.obj]
    lines = [f"{name} starts with {plan.start} {obj}."]
    trace = plan.trace()
    for k, (value, op, b, result) in enumerate(trace, start=1):
        why = BECAUSE[rs.k][0 if value % rs.k == 0 else 1]
        expr = f"{value}{op}{b}"
        lines.append(f"Round {k}: {value} {why}, so {expr}=<<{expr}={result}>>{result}.")
    lines.append(f"#### {trace[-1][3]}")
    return question, "\n".join(lines)


def rule_record(pid: str, plan: RulePlan, split: str) -> dict[str, Any]:
    """A problem record in the data stage's shape, plus the frame, rule set and phrasing."""
    question, answer = render(plan)
    trace = plan.trace()
    ops = [op for _, op, _, _ in trace]
    return {
        "id": pid,
        "split": split,
        "question": question,
        "answer": answer,
        "final_answer": str(trace[-1][3]),
        "final_value": trace[-1][3],
        "steps": [{"expr": f"{v}{op}{b}", "result": str(r)} for v, op, b, r in trace],
        "category": category_of(set(ops)),
        "n_steps": len(ops),
        "operators": {op: ops.count(op) for op in OPS},
        "frame_id": plan.frame,
        "heldout_frame": heldout_frame(plan.frame),
        "kind": "rules",
        "rule_id": plan.rule,
        "start": plan.start,
        "operand": plan.operand,
        "phrasing_id": plan.phrasing,
        "heldout_phrasing": heldout_phrasing(plan.phrasing),
        "step_ops": ops,
    }


# --- a file's problems ---------------------------------------------------------------------------


def _draw(
    rng: random.Random, pool: Pool, members: list[int], cum: list[int], options: SynthOptions
) -> RulePlan:
    """One computation of a (category, steps) slot by its raked weight, then its wording."""
    computation = pool.plans[rng.choices(members, cum_weights=cum)[0]]
    test = options.split == "test"
    held_frame = test and rng.random() < options.heldout_share
    held_phrasing = test and rng.random() < options.heldout_share
    frames = [f for f in range(len(FRAMES)) if heldout_frame(f) == held_frame]
    phrasings = [p for p in range(len(PHRASINGS)) if heldout_phrasing(p) == held_phrasing]
    return RulePlan(
        rule=computation.rule,
        start=computation.start,
        operand=computation.operand,
        applications=computation.applications,
        frame=rng.choice(frames),
        name=rng.randrange(len(NAMES)),
        obj=rng.randrange(len(OBJECTS)),
        phrasing=rng.choice(phrasings),
    )


def generate_rules(
    options: SynthOptions, slots: list[tuple[str, int]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], Pool]:
    """The problems of the slots (category, steps), their partners and value partners where one
    exists, and the pool."""
    rng = random.Random(f"opcircuits-synth-rules:{options.seed}:{options.split}")
    pool = build_pool(options)
    groups: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
    uniform = options.balance == "category"
    for i, (plan, cat) in enumerate(zip(pool.plans, pool.category, strict=True)):
        if uniform or pool.weight[i] > 0:
            members, cum = groups.setdefault((int(cat), plan.applications), ([], []))
            members.append(i)
            cum.append((cum[-1] if cum else 0) + (1 if uniform else int(pool.weight[i])))
    missing = [(c, k) for c, k in set(slots) if (CATEGORIES.index(c), k) not in groups]
    if missing:
        raise OpcircuitsError(
            f"no {missing[0][0]} problem with {missing[0][1]} steps fits the options; widen the "
            "ranges or change --steps",
            field="steps",
        )
    rng.shuffle(slots)
    problems, partners, value_partners = [], [], []
    for i, (category, n_steps) in enumerate(slots):
        members, cum = groups[(CATEGORIES.index(category), n_steps)]
        plan = _draw(rng, pool, members, cum, options)
        pid = f"synth_{i}"
        rec = rule_record(pid, plan, options.split)
        # partners come from fixed per-plan orders: the main file is the same without --pairs
        same_ops = rule_value_partner(plan, options)
        if same_ops is not None:
            theirs = rule_record(f"synth_vp_{i}", same_ops, options.split)
            value_partners.append(value_partner_record(i, pid, theirs))
        found = rule_partner(plan, options)
        if found is None:
            problems.append({**rec, "pair_id": None, "changed_step": None})
            continue
        other, changed = found
        problems.append({**rec, "pair_id": f"pair_{i}", "changed_step": changed + 1})
        partners.append(
            {**rule_record(f"synth_cf_{i}", other, options.split), "pair_id": f"pair_{i}",
             "changed_step": changed + 1, "partner_of": pid}
        )  # fmt: skip
    return problems, partners, value_partners, pool
