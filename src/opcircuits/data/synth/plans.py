"""One problem as a plan (a start number and its steps): drawing a valid one, its split by a
fixed hash of its computation, and its counterfactual partner."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace

from opcircuits.data.annotations import ADDITIVE, category_of
from opcircuits.data.synth.language import ADD_VERBS, CONNECTORS, NAMES, OBJECTS, PHRASES
from opcircuits.errors import OpcircuitsError
from opcircuits.options import SynthOptions

OPS: tuple[str, ...] = ("+", "-", "*", "/")
# Share of all possible computations (start, operations, operands) reserved for the test split.
TEST_COMPUTATION_PERCENT = 20
MAX_DRAWS = 200_000


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
        f"could not draw a valid {category} problem with {n_steps} steps in range "
        f"{lo}..{hi} with results <= {options.max_result}; widen the ranges",
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
