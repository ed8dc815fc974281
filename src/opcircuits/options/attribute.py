"""Options of `opcircuits attribute`: attribution patching over every component of the loop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opcircuits.options.core import (
    DTYPES,
    HELP_DEVICE,
    HELP_DTYPE,
    HELP_MODEL,
    MAX_BATCH,
    SEED_MAX,
    check_fields,
    opt,
)

MAX_VERIFIED = 1000  # components patched exactly: one forward of every pair each
MAX_FLIPS = 100_000  # sign flips per verified component (held as one matrix)


@dataclass
class AttributeOptions:
    """`opcircuits attribute`."""

    data: Path = opt(
        help="Problem file whose problems have counterfactual partners (e.g. opcircuits data "
        "synth: its <name>.pairs.jsonl beside it)."
    )
    out: Path = opt(
        help="Output folder: attribution.parquet (one row per component), attribution.json "
        "(the manifest and the check against exact patching), attribution.png."
    )
    pairs: Path | None = opt(
        None,
        example="data/synth.pairs.jsonl",
        help="Counterfactual partners: records sharing a problem's pair_id (default: "
        "<data>.pairs.jsonl beside the data).",
    )
    model: str = opt("demo", help=HELP_MODEL + " The default, demo, ships with the package.")
    checkpoint: Path | None = opt(None, help="Local CODI checkpoint folder (as for extract).")
    base: str | None = opt(
        None, help="Base model: hub id or local folder (config + tokenizer [+ weights])."
    )
    device: str = opt("auto", help=HELP_DEVICE)
    dtype: str = opt("float32", choices=DTYPES, help=HELP_DTYPE)
    threads: int | None = opt(
        None,
        min=1,
        max=1024,
        help="torch CPU threads (default torch's). On a busy shared CPU, 1 is several times "
        "faster for the small demo models: threads waiting on each other at every small matmul "
        "cost more than they share (docs/guide/causal-tests.md).",
    )
    batch_size: int = opt(64, min=1, max=MAX_BATCH, help="Pairs per forward and backward.")
    max_pairs: int | None = opt(
        None, min=1, max=1_000_000, example=600, help="Use only the first N pairs (default all)."
    )
    verify: int = opt(
        50,
        min=0,
        max=MAX_VERIFIED,
        help="The components with the largest |estimate| patched exactly, one at a time "
        "(Spearman ρ of estimate and exact effect, sign-flip tests over pairs).",
    )
    graddrop: bool = opt(
        False,
        help="AtP*'s GradDrop (Kramár et al. 2024): one more backward per block with the "
        "gradient through that block dropped; a component's estimate becomes the sign of AtP "
        "times the mean over blocks of |estimate| (counters cancellation). Off by default: on "
        "60 demo-arith pairs it moved Spearman ρ only from 0.33 to 0.37 over the same verified "
        "components (docs/guide/causal-tests.md), for L more backwards.",
    )
    flips: int = opt(10_000, min=100, max=MAX_FLIPS, help="Random sign flips per test.")
    alpha: float = opt(0.05, min=1e-6, max=0.5, help="Family-wise level (Holm over verified).")
    seed: int = opt(0, min=0, max=SEED_MAX, help="Seed of the sign flips.")

    def __post_init__(self) -> None:
        check_fields(self)
