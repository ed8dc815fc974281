"""The `rules` kind: a rule stated once, applied s times, whose operation at each step depends on
the current value, so the sequence of operations is fixed only by computing the results.

A rule set has a predicate ("even", "a multiple of 3") and two branches, one multiplicative
(÷2, ÷3 or ×2) and one additive (+b or −b, b the problem's operand). A problem is
(rule set, start, operand, applications); its category comes from the operations actually
applied (`category_of`).

Why the question does not give the category away: the whole pool of valid problems of the split
is enumerated with its category, and problems are drawn with weights found by iterative
proportional fitting (raking) so that the distribution of every variable the question shows
(rule set, start, operand, applications) is the same in every category; values that cannot reach
every category get weight 0. The wording (frame, name, object, phrasing) is drawn independently
of the computation. So each single word or number of the question is independent of the category,
and a linear bag-of-words model reads it near chance (docs/guide/data.md has the measurement).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace

import numpy as np

from opcircuits.data.annotations import CATEGORIES, category_of
from opcircuits.errors import OpcircuitsError
from opcircuits.options import SynthOptions

# Share of all computations reserved for the test split. Larger than the chain kind's 20%: only
# a few hundred pure-multiplication problems exist (3-5 multiplicative steps within 1..60), and
# with 20% the test split has too few of them for any balanced weights to exist.
RULES_TEST_PERCENT = 30
RAKING_ROUNDS = 1000
MAX_DEVIATION = 0.01  # largest per-value difference between categories the raking may leave
WEIGHT_SCALE = 10**9  # raked weights are rounded to integers, so draws never hang on float noise


@dataclass(frozen=True)
class RuleSet:
    """When (value % k == 0) == mult_when_multiple, apply `mult_op mult_operand`; else
    `add_op b`."""

    k: int
    mult_when_multiple: bool
    mult_op: str
    mult_operand: int
    add_op: str


RULE_SETS: tuple[RuleSet, ...] = (
    RuleSet(2, True, "/", 2, "+"),  # even: halved; odd: + b
    RuleSet(2, True, "/", 2, "-"),  # even: halved; odd: − b
    RuleSet(3, True, "/", 3, "+"),  # multiple of 3: a third; else + b
    RuleSet(3, True, "/", 3, "-"),  # multiple of 3: a third; else − b
    RuleSet(3, False, "*", 2, "+"),  # not a multiple of 3: doubled; else + b
    RuleSet(3, False, "*", 2, "-"),  # not a multiple of 3: doubled; else − b
    RuleSet(2, True, "*", 2, "+"),  # even: doubled; odd: + b
    RuleSet(2, True, "*", 2, "-"),  # even: doubled; odd: − b
    RuleSet(3, True, "*", 2, "+"),  # multiple of 3: doubled; else + b
    RuleSet(3, True, "*", 2, "-"),  # multiple of 3: doubled; else − b
    RuleSet(2, False, "*", 3, "+"),  # odd: tripled; even: + b
    RuleSet(2, False, "*", 3, "-"),  # odd: tripled; even: − b
    RuleSet(4, True, "/", 2, "+"),  # multiple of 4: halved; else + b
    RuleSet(4, True, "/", 2, "-"),  # multiple of 4: halved; else − b
    RuleSet(5, False, "*", 2, "+"),  # not a multiple of 5: doubled; else + b
    RuleSet(5, False, "*", 2, "-"),  # not a multiple of 5: doubled; else − b
    RuleSet(5, False, "*", 3, "+"),  # not a multiple of 5: tripled; else + b
    RuleSet(5, False, "*", 3, "-"),  # not a multiple of 5: tripled; else − b
    RuleSet(7, False, "*", 2, "+"),  # not a multiple of 7: doubled; else + b
    RuleSet(7, False, "*", 2, "-"),  # not a multiple of 7: doubled; else − b
    RuleSet(6, True, "/", 2, "+"),  # multiple of 6: halved; else + b
    RuleSet(6, True, "/", 2, "-"),  # multiple of 6: halved; else − b
    RuleSet(6, True, "/", 3, "+"),  # multiple of 6: a third; else + b
    RuleSet(6, True, "/", 3, "-"),  # multiple of 6: a third; else − b
    RuleSet(4, True, "*", 2, "+"),  # multiple of 4: doubled; else + b
    RuleSet(4, True, "*", 2, "-"),  # multiple of 4: doubled; else − b
    RuleSet(5, True, "*", 2, "+"),  # multiple of 5: doubled; else + b
    RuleSet(5, True, "*", 2, "-"),  # multiple of 5: doubled; else − b
)
# Rule sets come in pairs (+b / −b) and with both mappings of predicate to branch, so that every
# start number that can begin a pure-multiplication chain (1-7, 8, 16, 24, 27, 32, ...) can also
# begin an additive and a mixed one under some rule set: without that, no weights exist under
# which the rule set and the start are both independent of the category. The later ones widen the
# pool the raking can spread its weight over (with the first 16 the test split's draws
# concentrate on about 20 computations per category; with all 28, on 33-68).


@dataclass(frozen=True)
class RulePlan:
    """Everything a rules problem is rendered from: its computation and its wording."""

    rule: int
    start: int
    operand: int
    applications: int
    frame: int = 0
    name: int = 0
    obj: int = 0
    phrasing: int = 0

    def trace(self) -> list[tuple[int, str, int, int]]:
        """Every applied step as (value before, op, operand, result)."""
        rs = RULE_SETS[self.rule]
        out, value = [], self.start
        for _ in range(self.applications):
            if (value % rs.k == 0) == rs.mult_when_multiple:
                op, b = rs.mult_op, rs.mult_operand
            else:
                op, b = rs.add_op, self.operand
            result = _apply(value, op, b)
            out.append((value, op, b, result))
            value = result
        return out

    def ops(self) -> tuple[str, ...]:
        return tuple(op for _, op, _, _ in self.trace())

    def valid(self, max_result: int) -> bool:
        return all(1 <= r <= max_result for *_, r in self.trace())

    def category(self) -> str:
        return category_of(set(self.ops()))

    def computation(self) -> str:
        """What the question specifies: rule set, start, operand and applications. (Hashing the
        applied arithmetic instead would leave the test split almost no pure-multiplication
        problems: only a few dozen chains of 3-5 multiplicative steps stay within 1..60.)"""
        return f"rule{self.rule}:{self.start}:{self.operand}:{self.applications}"

    def chain(self) -> str:
        """The applied arithmetic, spelled as the chain kind spells its computations."""
        return f"{self.start}" + "".join(f"{op}{b}" for _, op, b, _ in self.trace())


def _apply(value: int, op: str, b: int) -> int:
    if op == "+":
        return value + b
    if op == "-":
        return value - b
    if op == "*":
        return value * b
    return value // b  # exact: the predicate guarantees divisibility


def rule_split(plan: RulePlan) -> str:
    """The split of a problem's computation by a fixed hash (the chain kind's, with
    RULES_TEST_PERCENT): the same for every file and seed, so a test question never repeats the
    computation of any train file."""
    digest = hashlib.sha256(plan.computation().encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % 100 < RULES_TEST_PERCENT else "train"


# --- the pool and its raking ---------------------------------------------------------------------


@dataclass
class Pool:
    """Every valid computation of the split with its category and raked weight."""

    plans: list[RulePlan]
    category: np.ndarray  # index into CATEGORIES
    weight: np.ndarray  # integer weights after raking (0: never drawn)
    deviation: float  # largest |P(value | category) − P(value | other category)| after raking

    def variables(self) -> dict[str, np.ndarray]:
        return _variables(self.plans)


def _variables(plans: list[RulePlan]) -> dict[str, np.ndarray]:
    return {
        "rule": np.array([p.rule for p in plans]),
        "start": np.array([p.start for p in plans]),
        "operand": np.array([p.operand for p in plans]),
        "applications": np.array([p.applications for p in plans]),
    }


def enumerate_pool(options: SynthOptions) -> tuple[list[RulePlan], np.ndarray]:
    """Every (rule set, start, operand, applications) of the split whose results all lie in
    1..max_result, with its category."""
    plans, cats = [], []
    for rule in range(len(RULE_SETS)):
        for s in options.step_counts():
            for start in range(1, options.max_result + 1):
                for b in range(options.min_operand, options.max_operand + 1):
                    plan = RulePlan(rule, start, b, s)
                    if plan.valid(options.max_result) and rule_split(plan) == options.split:
                        plans.append(plan)
                        cats.append(CATEGORIES.index(plan.category()))
    return plans, np.array(cats, dtype=np.int64)


def _marginals(codes: np.ndarray, n_codes: int, cats: np.ndarray, w: np.ndarray) -> np.ndarray:
    """P(code | category) as a (categories × codes) array (rows of zero weight stay zero)."""
    m = np.zeros((len(CATEGORIES), n_codes))
    for c in range(len(CATEGORIES)):
        sel = cats == c
        m[c] = np.bincount(codes[sel], weights=w[sel], minlength=n_codes)
    return m / np.maximum(m.sum(axis=1, keepdims=True), 1e-300)


def rake(plans: list[RulePlan], cats: np.ndarray, uniform: tuple[str, ...]) -> Pool:
    """Weights under which every variable has the same distribution in every category (raking to
    a common target: the normalized geometric mean of the categories' distributions, zero where
    any category has none); the variables in `uniform` are raked to a uniform target instead
    (the step counts: every category gets the same number of each)."""
    variables = _variables(plans)
    codes = {k: np.unique(v, return_inverse=True)[1] for k, v in variables.items()}
    sizes = {k: int(c.max()) + 1 if len(c) else 0 for k, c in codes.items()}
    w = np.ones(len(plans))
    for _ in range(RAKING_ROUNDS):
        for name, code in codes.items():
            m = _marginals(code, sizes[name], cats, w)
            if name in uniform:
                target = (m.min(axis=0) > 0).astype(float)
            else:
                target = np.exp(np.mean(np.log(np.maximum(m, 1e-300)), axis=0))
                target[m.min(axis=0) <= 0] = 0.0
            target /= max(target.sum(), 1e-300)
            factor = np.divide(target, m, out=np.zeros_like(m), where=m > 0)
            w = w * factor[cats, code]
    for c in range(len(CATEGORIES)):  # every category sums to one
        sel = cats == c
        w[sel] /= max(w[sel].sum(), 1e-300)
    weight = np.rint(w * WEIGHT_SCALE).astype(np.int64)
    deviation = max(
        float(np.ptp(_marginals(code, sizes[name], cats, weight.astype(float)), axis=0).max())
        for name, code in codes.items()
    )
    return Pool(plans, cats, weight, deviation)


def build_pool(options: SynthOptions) -> Pool:
    """The raked pool of the split; an error when no balanced weights exist for the options."""
    plans, cats = enumerate_pool(options)
    pool = rake(plans, cats, uniform=("applications",))
    ranges = (
        f"operands {options.min_operand}..{options.max_operand}, results <= "
        f"{options.max_result}, steps {options.step_counts()}, {options.split} split"
    )
    missing = [c for i, c in enumerate(CATEGORIES) if not np.any(cats == i)]
    if missing:
        raise OpcircuitsError(
            f"no {missing[0]} problem exists ({ranges}); change --steps or widen the ranges",
            field="steps",
        )
    if pool.deviation > MAX_DEVIATION or not all(
        pool.weight[pool.category == i].sum() for i in range(len(CATEGORIES))
    ):
        raise OpcircuitsError(
            f"no weights balance rule set, start, operand and steps across the categories "
            f"({ranges}; largest difference {pool.deviation:.3f}); widen the ranges",
            field="max_result",
        )
    return pool


# --- partners ------------------------------------------------------------------------------------


def rule_partner(plan: RulePlan, options: SynthOptions) -> tuple[RulePlan, int] | None:
    """A partner with the same rule set, applications and wording, and one number changed (the
    start or the operand) so that exactly one step's operation changes, all results valid.
    Returns (partner, changed step index) or None."""
    ops = plan.ops()
    candidates = [("start", v) for v in range(1, options.max_result + 1) if v != plan.start]
    candidates += [
        ("operand", v)
        for v in range(options.min_operand, options.max_operand + 1)
        if v != plan.operand
    ]
    local = random.Random(f"rule-partner:{plan}")  # a fixed order per plan, not the main stream
    local.shuffle(candidates)
    for field, value in candidates:
        other = replace(plan, **{field: value})
        if not other.valid(options.max_result):
            continue
        diff = [i for i, (x, y) in enumerate(zip(ops, other.ops(), strict=True)) if x != y]
        if len(diff) == 1:
            return other, diff[0]
    return None


def rule_value_partner(plan: RulePlan, options: SynthOptions) -> RulePlan | None:
    """A value partner: the same rule set, operand, applications and wording and the same
    sequence of operations, but another start in 1..max_result, so that every intermediate
    result r_1 … r_n differs while no operation changes (the counterfactual of "the result of
    step j" for DAS). None when no other start keeps the operations with every result valid."""
    trace = plan.trace()
    ops = tuple(op for _, op, _, _ in trace)
    starts = [v for v in range(1, options.max_result + 1) if v != plan.start]
    random.Random(f"rule-value-partner:{plan}").shuffle(starts)  # not the main stream
    for start in starts:
        other = replace(plan, start=start)
        if not other.valid(options.max_result):
            continue
        theirs = other.trace()
        # (every applied operation is injective, so equal ops imply all results differ; checked
        # anyway, it costs nothing and the file's promise does not rest on that argument)
        if tuple(op for _, op, _, _ in theirs) == ops and all(
            a[3] != b[3] for a, b in zip(trace, theirs, strict=True)
        ):
            return other
    return None
