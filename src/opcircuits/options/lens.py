"""Options of `opcircuits lens train`: the tuned lens (Belrose et al. 2023) fitted on a store."""

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

MAX_LENS_STEPS = 1_000_000  # optimizer steps; far beyond what a few thousand states need


@dataclass
class LensTrainOptions:
    """`opcircuits lens train`."""

    store: Path = opt(help="Thought store from `opcircuits extract`; it must hold the final layer.")
    out: Path = opt(
        help="Output folder: tuned-lens.safetensors (one affine translator per layer) and "
        "tuned-lens.json (held-out KL per layer of the tuned and the logit lens, top tokens)."
    )
    model: str = opt(
        "demo", help=HELP_MODEL + " Must be the model the store was extracted with (checked)."
    )
    checkpoint: Path | None = opt(
        None,
        example="path/to/codi-checkpoint",
        help="Local CODI checkpoint folder, as given to extract.",
    )
    base: str | None = opt(None, help="Base model: hub id or local folder, as given to extract.")
    device: str = opt("auto", help=HELP_DEVICE)
    dtype: str = opt("float32", choices=DTYPES, help=HELP_DTYPE)
    held_out: float = opt(
        0.2,
        min=0.05,
        max=0.5,
        help="Share of the store's problems held out (never trained on) to measure the KL.",
    )
    steps: int = opt(300, min=1, max=MAX_LENS_STEPS, help="Optimizer steps (Adam).")
    lr: float = opt(1e-3, min=1e-6, max=1.0, help="Adam learning rate of the translators.")
    batch_size: int = opt(
        128, min=1, max=MAX_BATCH, help="(problem, position) states per optimizer step."
    )
    top_k: int = opt(5, min=1, max=100, help="Tuned-lens tokens reported per position and layer.")
    seed: int = opt(0, min=0, max=SEED_MAX, help="Seed of the held-out split and the batches.")

    def __post_init__(self) -> None:
        check_fields(self)
