"""Synthetic arithmetic word problems whose operations are known and controlled.

A ground-truth testbed for the method: problems in GSM8K's own record format (`question`,
`answer` with `<<a+b=c>>` annotations and `#### N`), so every stage takes them unchanged, but
with the confounds of GSM8K removed by construction:

- Categories pure_addition (+/−), pure_multiplication (×/÷) and mixed are balanced, and every
  category gets the same number of problems of each step count (`--steps`).
- A problem is a chain: a start number, then n steps `r ← r op b`. Every number in the question
  is drawn uniformly from the same range `[min_operand, max_operand]` in every category; the
  operations are drawn first (uniformly among the sequences the category allows), then the
  numbers, redrawn until every intermediate and final result is an integer in
  `[1, max_result]` (division exact).
- The question is built from a frame (setting, opening and question sentences), a name, an
  object, and one phrasing per step; words such as "each", "total", "them", "friends", "then"
  occur in the phrasings of every operation, so a bag of words reads the operation as poorly as
  the design allows (the question-text control measures how well it still does).
- Held-out frames (every frame id ≡ 4 mod 5) occur only in the test split; and a problem's
  arithmetic (start number, operations, operands) belongs to the train or the test split by a
  fixed hash, so a test problem never repeats a computation of any train file.
- Counterfactual pairs: every problem can have a partner with the same frame, name, object,
  numbers and wording except one step, whose operation is changed (`pair_id`, `changed_step`),
  so its annotations and gold answer (and usually its category) differ. Partners go to a file
  of their own (`<name>.pairs.jsonl`), so the main file stays balanced.

Everything is drawn from `random.Random` seeded with a string, so the same seed and options give
byte-identical files on any machine and Python version.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from opcircuits.data.annotations import ADDITIVE, CATEGORIES, category_of
from opcircuits.errors import OpcircuitsError
from opcircuits.files import manifest_path, sha256_file, write_json_atomic, write_jsonl_atomic
from opcircuits.options import SynthOptions
from opcircuits.versions import __version__

log = logging.getLogger(__name__)

OPS: tuple[str, ...] = ("+", "-", "*", "/")
# Share of all possible computations (start, operations, operands) reserved for the test split.
TEST_COMPUTATION_PERCENT = 20
# A frame is held out (test split only) when its id ≡ 4 (mod 5): 8 of the 40 frames.
HELDOUT_MOD = 5
MAX_DRAWS = 200_000

# --- the language ---------------------------------------------------------------------------
# Placeholders: {Name}, {he}/{him}/{his} (the name's pronouns), {obj} (a plural noun), {a} (the
# start number), {b} (a step's operand), {add}/{sub} (a verb of gaining/losing).

NAMES: tuple[tuple[str, str], ...] = (
    ("Mia", "f"), ("Noah", "m"), ("Ava", "f"), ("Liam", "m"), ("Zoe", "f"), ("Omar", "m"),
    ("Lena", "f"), ("Ravi", "m"), ("Sofia", "f"), ("Ethan", "m"), ("Hana", "f"), ("Leo", "m"),
    ("Nora", "f"), ("Kai", "m"), ("Ines", "f"), ("Jonas", "m"), ("Maya", "f"), ("Diego", "m"),
    ("Chloe", "f"), ("Tariq", "m"), ("Emma", "f"), ("Felix", "m"), ("Aisha", "f"), ("Sam", "m"),
    ("Julia", "f"), ("Marco", "m"), ("Priya", "f"), ("Ben", "m"), ("Yuki", "f"), ("Hugo", "m"),
)  # fmt: skip
PRONOUNS = {"f": ("she", "her", "her"), "m": ("he", "him", "his")}
OBJECTS: tuple[str, ...] = (
    "apples", "marbles", "stickers", "pencils", "coins", "cards", "books", "shells", "stamps",
    "cookies", "beads", "buttons", "candles", "crayons", "eggs", "flowers", "balloons", "rocks",
    "toy cars", "ribbons", "lemons", "plums", "nuts", "keys", "bottles", "cups", "tickets",
    "photos", "leaves", "bricks",
)  # fmt: skip
ADD_VERBS: tuple[str, ...] = ("gets", "finds", "buys", "receives", "wins", "collects")
SUB_VERBS: tuple[str, ...] = ("gives away", "loses", "sells", "donates", "trades away", "uses")
CONNECTORS: tuple[str, ...] = ("Then", "After that", "Next", "Later", "Then", "After a while")

# Several phrasings per operation; "each", "total", "them", "friends", "as many", "one" cross
# operations on purpose.
PHRASES: dict[str, tuple[str, ...]] = {
    "+": (
        "{he} {add} {b} more {obj}.",
        "a friend gives {him} {b} more {obj}.",
        "the total goes up by {b}.",
        "{b} friends each give {him} one more.",
        "{he} {add} one more, {b} times in a row.",
        "{he} has {b} more of them than before.",
    ),
    "-": (
        "{he} {sub} {b} {obj}.",
        "a friend takes {b} of {his} {obj}.",
        "the total goes down by {b}.",
        "{b} friends each take one from {him}.",
        "{he} {sub} one, {b} times in a row.",
        "{he} keeps all but {b} of them.",
    ),
    "*": (
        "{he} ends up with {b} times as many {obj}.",
        "a friend makes the total {b} times as large.",
        "each of {his} {obj} is swapped for {b} new ones.",
        "{his} friends give {him} {b} for each one {he} has, and {he} keeps only those.",
        "{he} has {b} times as many of them as before.",
        "the number of {obj} is multiplied by {b}.",
    ),
    "/": (
        "{he} shares the {obj} equally among {b} friends and keeps one share.",
        "a friend takes all but one of {b} equal parts of the total.",
        "{he} splits them into {b} equal groups and keeps one group.",
        "{he} keeps one out of each {b} {obj}.",
        "{his} {obj} are put into {b} equal bags and {he} keeps one bag.",
        "the number of {obj} is divided by {b}.",
    ),
}

# Frames: (setting sentence or "", opening with the start number, question sentence).
FRAMES: tuple[tuple[str, str, str], ...] = (
    ("", "{Name} has {a} {obj}.", "How many {obj} does {Name} have now?"),
    ("{Name} is getting ready for the school fair.", "{he} starts with {a} {obj}.",
     "How many {obj} does {Name} have in the end?"),
    ("", "At first, {Name} owns {a} {obj}.", "How many {obj} does {he} end up with?"),
    ("{Name} likes to count things.", "{he} collected {a} {obj} last week.",
     "What is the number of {obj} {Name} has at the end?"),
    ("", "In {his} room, {Name} keeps {a} {obj}.", "How many {obj} are in {his} room now?"),
    ("It is a rainy Saturday.", "{Name} opens a box with {a} {obj} in it.",
     "How many {obj} does {Name} have after all of this?"),
    ("", "{Name} is saving {obj} and has {a} so far.", "How many {obj} has {Name} saved now?"),
    ("{Name} sits at {his} desk.", "There are {a} {obj} on the desk.",
     "How many {obj} are on the desk now?"),
    ("", "{Name} brought {a} {obj} to school.", "How many {obj} does {Name} have at the end?"),
    ("{Name} goes to the market with {his} family.", "{his} bag holds {a} {obj}.",
     "How many {obj} are in the bag in the end?"),
    ("", "{Name} counts {a} {obj} in a jar.", "How many {obj} are in the jar now?"),
    ("A new week begins.", "{Name} has a total of {a} {obj}.",
     "What is {Name}'s total number of {obj} now?"),
    ("", "On Monday, {Name} has {a} {obj}.", "How many {obj} does {Name} have by Friday?"),
    ("{Name} helps at the class party.", "{he} is in charge of {a} {obj}.",
     "How many {obj} is {he} in charge of at the end?"),
    ("", "{Name}'s collection has {a} {obj}.", "How many {obj} are in the collection now?"),
    ("{Name} and {his} friends meet in the park.", "{Name} has {a} {obj} with {him}.",
     "How many {obj} does {Name} have with {him} now?"),
    ("", "There are {a} {obj} in {Name}'s basket.", "How many {obj} are in the basket now?"),
    ("{Name} is cleaning the garage.", "{he} finds a shelf with {a} {obj}.",
     "How many {obj} are on the shelf in the end?"),
    ("", "{Name} keeps {a} {obj} in a drawer.", "How many {obj} are in the drawer at the end?"),
    ("It is {Name}'s birthday.", "{he} has {a} {obj} to begin with.",
     "How many {obj} does {he} have when the day is over?"),
    ("", "{Name} starts the game with {a} {obj}.", "How many {obj} does {Name} finish with?"),
    ("{Name} runs a small stand.", "The stand has {a} {obj} in the morning.",
     "How many {obj} does the stand have in the evening?"),
    ("", "A box on {Name}'s table holds {a} {obj}.", "How many {obj} does the box hold now?"),
    ("{Name} is on a trip.", "{he} packed {a} {obj}.",
     "How many {obj} does {Name} have on the way home?"),
    ("", "{Name} owns exactly {a} {obj}.", "Exactly how many {obj} does {Name} own now?"),
    ("{Name} plays a trading game with friends.", "{he} begins with {a} {obj}.",
     "How many {obj} does {he} have when the game ends?"),
    ("", "{Name} has a pile of {a} {obj}.", "How many {obj} are in the pile now?"),
    ("{Name} tidies {his} shelf.", "{he} sees {a} {obj} there.",
     "How many {obj} are there on the shelf after that?"),
    ("", "{Name} is given {a} {obj} as a gift.", "How many {obj} does {Name} have in total now?"),
    ("The school year starts.", "{Name} has {a} {obj} in {his} locker.",
     "How many {obj} are in {his} locker at the end?"),
    ("", "{Name} has {a} {obj} in a bowl.", "How many {obj} are in the bowl now?"),
    ("{Name} visits {his} grandparents.", "{he} arrives with {a} {obj}.",
     "How many {obj} does {he} leave with?"),
    ("", "{Name} sorted {a} {obj} yesterday.", "How many {obj} does {Name} have sorted now?"),
    ("{Name} makes a list.", "The list says {Name} has {a} {obj}.",
     "How many {obj} should the list say now?"),
    ("", "{Name}'s team has {a} {obj}.", "How many {obj} does the team have in the end?"),
    ("{Name} works in the school library.", "{he} looks after {a} {obj}.",
     "How many {obj} does {he} look after now?"),
    ("", "{Name} lines up {a} {obj} on the floor.", "How many {obj} are on the floor now?"),
    ("Winter is coming.", "{Name} has stored {a} {obj}.",
     "How many {obj} has {Name} stored when winter comes?"),
    ("", "{Name} carries {a} {obj} in a sack.", "How many {obj} are in the sack at the end?"),
    ("{Name} writes down every change.", "{his} notebook starts at {a} {obj}.",
     "What number of {obj} does the notebook show at the end?"),
)  # fmt: skip


def heldout_frame(frame_id: int) -> bool:
    """Frames only the test split uses."""
    return frame_id % HELDOUT_MOD == HELDOUT_MOD - 1


# --- one problem ----------------------------------------------------------------------------


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


# --- a file ---------------------------------------------------------------------------------


def allocate_steps(per_category: int, counts: list[int]) -> dict[int, int]:
    """Split a category's problems over step counts as evenly as possible (extra → fewer steps);
    the same for every category, so the step histograms match by construction."""
    q, r = divmod(per_category, len(counts))
    return {c: q + (i < r) for i, c in enumerate(counts)}


def generate(options: SynthOptions) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The problems (balanced, step-matched, shuffled) and their counterfactual partners."""
    rng = random.Random(f"opcircuits-synth:{options.seed}:{options.split}")
    per_step = allocate_steps(options.n // len(CATEGORIES), options.step_counts())
    slots = [(c, k) for c in CATEGORIES for k, m in per_step.items() for _ in range(m)]
    rng.shuffle(slots)
    seen_frames = [f for f in range(len(FRAMES)) if not heldout_frame(f)]
    held = [f for f in range(len(FRAMES)) if heldout_frame(f)]
    problems, partners = [], []
    for i, (category, n_steps) in enumerate(slots):
        use_held = options.split == "test" and rng.random() < options.heldout_share
        frame = rng.choice(held if use_held else seen_frames)
        plan = draw_plan(rng, category, n_steps, frame, options)
        found = partner(plan, options)
        assert found is not None  # draw_plan only returns plans that have one
        other, changed = found
        pid = f"synth_{i}"
        rec = record(pid, plan, options.split)
        problems.append({**rec, "pair_id": f"pair_{i}", "changed_step": changed + 1})
        partners.append(
            {**record(f"synth_cf_{i}", other, options.split), "pair_id": f"pair_{i}",
             "changed_step": changed + 1, "partner_of": pid}
        )  # fmt: skip
    return problems, partners


def pairs_path(out: Path) -> Path:
    """`data/x.jsonl` → `data/x.pairs.jsonl`."""
    return out.with_name(f"{out.stem}.pairs.jsonl")


def _histograms(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    return {
        c: {
            str(k): n
            for k, n in sorted(Counter(r["n_steps"] for r in records if r["category"] == c).items())
        }
        for c in CATEGORIES
    }


def synth(options: SynthOptions) -> Path:
    """Write the problems (and partners) with a manifest beside them; returns the output path."""
    out = Path(options.out)
    problems, partners = generate(options)
    write_jsonl_atomic(out, problems)
    outputs = {"output_sha256": sha256_file(out)}
    if options.pairs:
        write_jsonl_atomic(pairs_path(out), partners)
        outputs["pairs"] = str(pairs_path(out))
        outputs["pairs_sha256"] = sha256_file(pairs_path(out))
    opts = asdict(options)
    opts["out"] = str(out)
    write_json_atomic(
        manifest_path(out),
        {
            "stage": "data synth",
            "opcircuits_version": __version__,
            "options": opts,
            "seed": options.seed,
            "counts": dict(Counter(r["category"] for r in problems)),
            "n_steps": _histograms(problems),
            "heldout_frames": sum(r["heldout_frame"] for r in problems),
            "frames": len(FRAMES),
            "heldout_frame_ids": [f for f in range(len(FRAMES)) if heldout_frame(f)],
            "test_computation_percent": TEST_COMPUTATION_PERCENT,
            "partner_categories": dict(Counter(r["category"] for r in partners)),
            **outputs,
        },
    )
    log.info("wrote %d problems to %s", len(problems), out)
    return out
