"""One problem as a plan (a start number and its steps): drawing a valid one, its split by a
fixed hash of its computation, and its counterfactual partner."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace

from opcircuits.data.annotations import ADDITIVE, CATEGORIES, category_of
from opcircuits.data.synth.language import ADD_VERBS, CONNECTORS, NAMES, OBJECTS, PHRASES
from opcircuits.errors import OpcircuitsError
from opcircuits.options import SynthOptions

OPS: tuple[str, ...] = ("+", "-", "*", "/")
# Share of all possible computations (start, operations, operands) reserved for the test split.
TEST_COMPUTATION_PERCENT = 20
# Operation sequences drawn per problem (each with up to 200 number draws) before giving up. The
# hardest ranges measured need up to ~50,000 draws (6 pure-multiplication steps within 1..20); a
# million stop within seconds where the ranges allow a problem only in principle (impossible
# ranges are refused before any draw: `check_feasible`).
MAX_DRAWS = 5_000
# Candidates `check_feasible` may try per (category, steps) before leaving the question to the
# draws: ranges where no problem exists are small enough to be searched whole well within it.
FEASIBILITY_BUDGET = 200_000
_POOLS = {"pure_addition": "+-", "pure_multiplication": "*/", "mixed": "+-*/"}


@dataclass(frozen=True)
class Step:
    op: str
    operand: int
    phrase: int  # index into PHRASES[op] (taken modulo its length)
    verb: int  # index into ADD_VERBS / SUB_VERBS
    connector: int


@dataclass(frozen=True)
class Plan:
    """Everything a problem is rendered from."""

    frame: int
    name: int
    obj: int
    start: int
    steps: tuple[Step, ...]

    def results(self) -> list[int | None]:
        """Every intermediate result, None from the first step that is not an exact integer."""
        out: list[int | None] = []
        value: int | None = self.start
        for s in self.steps:
            value = None if value is None else apply(value, s.op, s.operand)
            out.append(value)
        return out

    def computation(self) -> str:
        return f"{self.start}" + "".join(f"{s.op}{s.operand}" for s in self.steps)


def apply(value: int, op: str, operand: int) -> int | None:
    if op == "+":
        return value + operand
    if op == "-":
        return value - operand
    if op == "*":
        return value * operand
    q, r = divmod(value, operand)
    return q if r == 0 else None


def valid(plan: Plan, options: SynthOptions) -> bool:
    return all(r is not None and 1 <= r <= options.max_result for r in plan.results())


def computation_split(plan: Plan) -> str:
    """The split a computation belongs to: a fixed hash, the same for every file and seed."""
    digest = hashlib.sha256(plan.computation().encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % 100 < TEST_COMPUTATION_PERCENT else "train"


def draw_ops(rng: random.Random, category: str, n_steps: int) -> list[str]:
    """Operations uniformly among the sequences of the category."""
    pool = {"pure_addition": "+-", "pure_multiplication": "*/", "mixed": "+-*/"}[category]
    while True:
        ops = [rng.choice(pool) for _ in range(n_steps)]
        if category_of(set(ops)) == category:
            return ops


def _ranges_text(options: SynthOptions) -> str:
    return (
        f"--min-operand {options.min_operand} --max-operand {options.max_operand} "
        f"--max-result {options.max_result}, {options.split} split"
    )


def _operands(value: int, op: str, lo: int, hi: int, top: int) -> range:
    """The operands b in lo..hi for which `value op b` is an integer in 1..top (division: a
    superset, the divisors are picked by `apply`)."""
    if op == "+":
        return range(lo, min(hi, top - value) + 1)
    if op == "-":
        return range(lo, min(hi, value - 1) + 1)
    if op == "*":
        return range(lo, min(hi, top // value) + 1)
    return range(lo, min(hi, value) + 1)


def problem_exists(
    category: str, n_steps: int, options: SynthOptions, budget: int = FEASIBILITY_BUDGET
) -> bool | None:
    """Whether any problem `draw_plan` accepts exists (results in 1..max_result, the category,
    the split, a partner), searched exhaustively over start, operations and operands: True or
    False, or None when `budget` candidates did not settle it (then the draws do)."""
    lo, hi, top = options.min_operand, options.max_operand, options.max_result
    pool = _POOLS[category]
    left = budget

    def search(value: int, steps: tuple[Step, ...], start: int) -> bool:
        nonlocal left
        if len(steps) == n_steps:
            plan = Plan(frame=0, name=0, obj=0, start=start, steps=steps)
            return (
                category_of({st.op for st in steps}) == category
                and computation_split(plan) == options.split
                and partner(plan, options) is not None
            )
        for op in pool:
            for b in _operands(value, op, lo, hi, top):
                left -= 1
                if left < 0:
                    raise _Unsettled
                result = apply(value, op, b)
                if result is None or not 1 <= result <= top:
                    continue
                if search(result, (*steps, Step(op, b, 0, 0, 0)), start):
                    return True
        return False

    try:
        return any(search(s, (), s) for s in range(lo, min(hi, top) + 1))
    except _Unsettled:
        return None


class _Unsettled(Exception):
    pass


def check_feasible(options: SynthOptions, slots: list[tuple[str, int]]) -> None:
    """Before anything is drawn: every (category, steps) the file needs has at least one problem
    within the ranges, so an impossible request fails at once instead of after 40M draws."""
    for category, n_steps in sorted(set(slots), key=lambda s: (CATEGORIES.index(s[0]), s[1])):
        if problem_exists(category, n_steps, options) is False:
            raise OpcircuitsError(
                f"no {category} problem with {n_steps} steps exists within "
                f"{_ranges_text(options)} (every number from the operand range, every "
                "intermediate and final result a whole number in 1..max-result, and one "
                "step's operation changeable for a partner); widen --min-operand/--max-operand "
                "or raise --max-result",
                field="max_result",
            )


def draw_plan(
    rng: random.Random, category: str, n_steps: int, frame: int, options: SynthOptions
) -> Plan:
    """A valid problem of the category: operations first, then numbers until all results fit."""
    lo, hi = options.min_operand, options.max_operand
    for _ in range(MAX_DRAWS):
        ops = draw_ops(rng, category, n_steps)
        for _ in range(200):
            plan = Plan(
                frame=frame,
                name=rng.randrange(len(NAMES)),
                obj=rng.randrange(len(OBJECTS)),
                start=rng.randint(lo, hi),
                steps=tuple(
                    Step(
                        op=op,
                        operand=rng.randint(lo, hi),
                        phrase=rng.randrange(len(PHRASES[op])),
                        verb=rng.randrange(len(ADD_VERBS)),
                        connector=rng.randrange(len(CONNECTORS)),
                    )
                    for op in ops
                ),
            )
            if (
                valid(plan, options)
                and computation_split(plan) == options.split
                and partner(plan, options) is not None
            ):
                return plan
    raise OpcircuitsError(
        f"could not draw a valid {category} problem with {n_steps} steps within "
        f"{_ranges_text(options)} in {MAX_DRAWS * 200:,} draws; widen the ranges",
        field="max_result",
    )


def partner(plan: Plan, options: SynthOptions) -> tuple[Plan, int] | None:
    """The counterfactual partner: one step's operation changed, everything else the same, all
    results valid and a different answer. Changes across + − ↔ × ÷ are tried first (they change
    what kind of operation the problem needs). Returns (partner, changed step index) or None."""
    final = plan.results()[-1]
    cross, same = [], []
    for i, s in enumerate(plan.steps):
        for op in OPS:
            if op != s.op:
                family_changes = (s.op in ADDITIVE) != (op in ADDITIVE)
                (cross if family_changes else same).append((i, op))
    # a fixed per-plan order, not the main stream: the partner never changes what is drawn next
    local = random.Random(f"partner:{plan}")
    local.shuffle(cross)
    local.shuffle(same)
    for i, op in cross + same:
        steps = list(plan.steps)
        steps[i] = replace(steps[i], op=op)
        other = replace(plan, steps=tuple(steps))
        if valid(other, options) and other.results()[-1] != final:
            return other, i
    return None


def value_partner(plan: Plan, options: SynthOptions) -> Plan | None:
    """A value partner: the same frame, name, object, operations, operands and wording, but
    another start number in the start range (min_operand..max_operand), so that every
    intermediate result differs while no operation changes. None when no other start keeps
    every result a whole number in 1..max_result (division exact)."""
    mine = plan.results()
    starts = [v for v in range(options.min_operand, options.max_operand + 1) if v != plan.start]
    random.Random(f"value-partner:{plan}").shuffle(starts)  # a fixed order, not the main stream
    for start in starts:
        other = replace(plan, start=start)
        if valid(other, options) and all(
            a != b for a, b in zip(mine, other.results(), strict=True)
        ):
            return other
    return None
