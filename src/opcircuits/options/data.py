"""Options of the data commands: `data download`, `classify`, `prototype` and `synth`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opcircuits.errors import OpcircuitsError
from opcircuits.options.core import DEFAULT_DATA, MAX_PROBLEMS, SPLITS, check_fields, opt

SYNTH_KINDS = ("chain", "rules")
# Per kind: (step counts, max_result) when --steps / --max-result are not given.
SYNTH_DEFAULTS = {"chain": ([2, 3], 50), "rules": ([3, 4, 5], 60)}
RULES_MAX_RESULT = 200
# Sane maxima (checked before anything is drawn): a synthetic file of 300,000 problems (10x the
# documented training file) holds about 1.5 GB while written; numbers beyond these only spell
# longer questions.
SYNTH_MAX_N = 300_000
SYNTH_MAX_NUMBER = 1_000_000

# --- data --------------------------------------------------------------------------------------


@dataclass
class DownloadOptions:
    """`opcircuits data download`."""

    source: str = opt(
        "hf",
        flag="data",
        aliases=("--source",),
        help="Where GSM8K comes from: 'hf' for the Hugging Face hub (openai/gsm8k, main; needs "
        "network), or a folder with GSM8K's train.jsonl and test.jsonl or the hub's parquet "
        "files (e.g. ../shared/data/gsm8k). In `opcircuits run`, 'synthetic' uses generated "
        "problems with known operations instead (`data synth`, test split, [data] synth_*).",
    )
    out: Path = opt(
        Path(DEFAULT_DATA),
        help="Output JSONL: all 8,792 problems, test split then train, ids test_N / train_N.",
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class ClassifyOptions:
    """`opcircuits data classify`."""

    in_path: Path = opt(
        Path(DEFAULT_DATA),
        flag="data",
        aliases=("--in",),
        help="Problems to label: the JSONL `data download` writes, or the earlier scripts' JSON.",
    )
    out: Path | None = opt(
        None,
        help="Output JSONL (default data/operation_samples_N.jsonl, N = --per-category); a "
        "manifest <name>.manifest.json is written beside it.",
    )
    per_category: int = opt(
        200, min=1, max=MAX_PROBLEMS, help="Problems sampled per category (3 × 200 = 600)."
    )
    seed: int = opt(42, help="Sampling seed: the same seed gives byte-identical output.")
    match_steps: bool = opt(
        False,
        help="Give every category the same histogram of n_steps (the number of calculator "
        "annotations), so step count cannot stand in for the operation.",
    )
    allow_fewer: bool = opt(
        False, help="Take every problem of a category that has fewer than --per-category."
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class PrototypeOptions:
    """`opcircuits data prototype`."""

    in_path: Path = opt(
        Path("data/operation_samples_200.jsonl"),
        flag="data",
        aliases=("--in",),
        help="A sampled set from `data classify` (or the earlier operation_samples_200.json).",
    )
    out: Path | None = opt(
        None,
        help="Output JSONL (default data/operation_samples_prototype_3K.jsonl), with manifest.",
    )
    per_category: int = opt(
        20,
        min=1,
        max=MAX_PROBLEMS,
        help="Problems per category (K) in the subset (3 × 20 = 60).",
    )
    seed: int = opt(42, help="Sampling seed: the same seed gives byte-identical output.")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class SynthOptions:
    """`opcircuits data synth`."""

    out: Path = opt(
        Path("data/synth.jsonl"),
        help="Output JSONL; a manifest <name>.manifest.json (and <name>.pairs.jsonl, "
        "<name>.value_pairs.jsonl) are written beside it.",
    )
    kind: str = opt(
        "chain",
        choices=SYNTH_KINDS,
        help="chain: every step's operation is stated in the question ('then she gives away "
        "3'). rules: one rule is stated once and applied --steps times, e.g. 'if the number is "
        "even it is halved, otherwise 5 is added'; which operation each step applies depends on "
        "the current value, so the operations (and the category) are known only by computing "
        "the intermediate results. Problems are drawn with raked weights under which the rule "
        "set, start number, operand and step count have the same distribution in every "
        "category, so the question text does not give the category away.",
    )
    n: int = opt(600, max=SYNTH_MAX_N, help="Problems in all (a multiple of 3: n/3 per category).")
    seed: int = opt(0, help="Seed (same seed and options → same bytes).")
    split: str = opt(
        "test",
        choices=SPLITS,
        help="train: only training frames (and phrasings) and train computations; test: also "
        "the held-out frames (and, for rules, held-out rule phrasings), and only test "
        "computations.",
    )
    # `str` too: `opcircuits run --synth-steps 2,3` passes the text, check_fields parses it
    steps: list[int] | str | None = opt(
        None,
        list=int,
        help="Step counts (each 2..6; default 2,3, or 3,4,5 with --kind rules: how many times "
        "the rule is applied); every category gets the same number of problems of each.",
    )
    min_operand: int = opt(
        2, max=SYNTH_MAX_NUMBER, help="Smallest number in a question (rules: of the operand b)."
    )
    max_operand: int = opt(
        10, max=SYNTH_MAX_NUMBER, help="Largest number in a question (rules: of the operand b)."
    )
    max_result: int | None = opt(
        None,
        max=SYNTH_MAX_NUMBER,
        help="Largest intermediate or final result (all are ≥ 1; default 50, or 60 with --kind "
        "rules; rules: also the largest start number).",
    )
    heldout_share: float = opt(
        0.5,
        help="test split: share of problems written with a held-out frame (rules: and, drawn "
        "separately, the share written with a held-out phrasing of the rule).",
    )
    balance: str = opt(
        "raked",
        choices=("raked", "category"),
        help="rules only. raked: computations drawn with the raked weights, so the question "
        "text does not give the category away (for the files the analysis reads). category: "
        "every valid computation of a (category, steps) slot equally likely, so a training file "
        "covers the whole pool (about 3.5x the computations the raked weights reach) instead of "
        "a few hundred heavy ones; its words may then tell the category.",
    )
    pairs: bool = opt(
        True,
        help="Also write <name>.pairs.jsonl: each problem's counterfactual partner (chain: one "
        "step's operation changed; rules: the start or the operand changed so that exactly one "
        "step's operation changes, for the problems that have such a partner), and "
        "<name>.value_pairs.jsonl: its value partner (another start, every operation kept, every "
        "intermediate result changed; for the problems that have one).",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        default_steps, default_max = SYNTH_DEFAULTS[self.kind]
        if self.steps is None:
            self.steps = list(default_steps)
        if self.max_result is None:
            self.max_result = default_max
        if self.n < 3 or self.n % 3:  # the three categories get n/3 each
            raise OpcircuitsError(f"must be a positive multiple of 3, got {self.n}", field="n")
        if any(not 2 <= c <= 6 for c in self.steps):
            raise OpcircuitsError(
                f"step counts must be 2..6 (mixed needs two steps), got {self.steps!r}",
                field="steps",
            )
        if not 1 <= self.min_operand <= self.max_operand:
            raise OpcircuitsError(
                f"need 1 <= min_operand <= max_operand, got {self.min_operand}..{self.max_operand}",
                field="min_operand",
            )
        if self.max_operand < 2:
            raise OpcircuitsError("must be at least 2", field="max_operand")
        if self.max_result < self.max_operand * 2:
            raise OpcircuitsError(
                f"must be at least 2 × max_operand ({2 * self.max_operand})", field="max_result"
            )
        if not 0.0 <= self.heldout_share <= 1.0:
            raise OpcircuitsError("must be between 0 and 1", field="heldout_share")
        if self.balance != "raked" and self.kind != "rules":
            raise OpcircuitsError("only --kind rules draws by weights", field="balance")
        if self.kind == "rules" and self.max_result > RULES_MAX_RESULT:
            # every (rule set, start, operand, steps) is enumerated and raked
            raise OpcircuitsError(
                f"must be at most {RULES_MAX_RESULT} with --kind rules, got {self.max_result}",
                field="max_result",
            )

    def step_counts(self) -> list[int]:
        return sorted(set(self.steps))
