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
- Value partners: the same problem with another start number and nothing else changed, the
  operations the same, so every intermediate result r_1 … r_n differs (`partner_of`,
  `changed_value: "start"`; `<name>.value_pairs.jsonl`): the counterfactuals of "the result of
  step j". A problem without one (no other start keeps its operations valid) is counted in the
  manifest.

`--kind rules` (modules `rules`, `rules_records`) writes problems of another shape in the same
record format: a rule stated once ("when the number is even it is halved, otherwise 5 is added")
applied 3–5 times, so each step's operation depends on the current value and the operations are
known only by computing; drawn with raked weights so that the question text does not give the
category away (see `rules`).

Everything is drawn from `random.Random` seeded with a string, so the same seed and options give
byte-identical files on any machine and Python version.

Modules: `language` (names, objects, phrasings, frames), `plans` (drawing a problem and its
partner), `records` (a plan in words, the problem record), `output` (a file, its partners and
manifest: `synth`), `rules` (rule sets, the raked pool, partners of the rules kind),
`rules_records` (its phrasings, records and generation).
"""

from __future__ import annotations

from opcircuits.data.synth.language import (
    ADD_VERBS,
    CONNECTORS,
    FRAMES,
    HELDOUT_MOD,
    NAMES,
    OBJECTS,
    PHRASES,
    PRONOUNS,
    SUB_VERBS,
    heldout_frame,
)
from opcircuits.data.synth.output import (
    allocate_steps,
    generate,
    pairs_path,
    synth,
    value_pairs_path,
)
from opcircuits.data.synth.plans import (
    MAX_DRAWS,
    OPS,
    TEST_COMPUTATION_PERCENT,
    Plan,
    Step,
    apply,
    computation_split,
    draw_ops,
    draw_plan,
    partner,
    valid,
    value_partner,
)
from opcircuits.data.synth.records import record, render
from opcircuits.data.synth.rules import (
    RULE_SETS,
    RULES_TEST_PERCENT,
    Pool,
    RulePlan,
    RuleSet,
    build_pool,
    rule_partner,
    rule_split,
    rule_value_partner,
)
from opcircuits.data.synth.rules_records import (
    PHRASINGS,
    generate_rules,
    heldout_phrasing,
    rule_record,
)
from opcircuits.options import SynthOptions

__all__ = [
    "ADD_VERBS",
    "CONNECTORS",
    "FRAMES",
    "HELDOUT_MOD",
    "MAX_DRAWS",
    "NAMES",
    "OBJECTS",
    "OPS",
    "PHRASES",
    "PHRASINGS",
    "PRONOUNS",
    "RULES_TEST_PERCENT",
    "RULE_SETS",
    "SUB_VERBS",
    "TEST_COMPUTATION_PERCENT",
    "Plan",
    "Pool",
    "RulePlan",
    "RuleSet",
    "Step",
    "SynthOptions",
    "allocate_steps",
    "apply",
    "build_pool",
    "computation_split",
    "draw_ops",
    "draw_plan",
    "generate",
    "generate_rules",
    "heldout_frame",
    "heldout_phrasing",
    "pairs_path",
    "partner",
    "record",
    "render",
    "rule_partner",
    "rule_record",
    "rule_split",
    "rule_value_partner",
    "synth",
    "valid",
    "value_pairs_path",
    "value_partner",
]
