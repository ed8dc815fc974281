"""Options of `opcircuits das`: distributed alignment search on counterfactual pairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opcircuits.errors import OpcircuitsError
from opcircuits.options.core import (
    DEFAULT_MAX_NEW_TOKENS,
    DTYPES,
    HELP_DEVICE,
    HELP_DTYPE,
    HELP_MODEL,
    MAX_BATCH,
    MAX_NEW_TOKENS,
    SEED_MAX,
    check_fields,
    opt,
)

MAX_EPOCHS = 1000  # passes over the training pairs; each is one forward and backward per pair
MAX_DIM = 65_536  # subspace dimensions beyond any model's hidden size
VARIABLES = ("operation", "result")


@dataclass
class DasOptions:
    """`opcircuits das`."""

    data: Path = opt(
        help="Problem file with counterfactual pairs (opcircuits data synth): each problem with "
        "a pair_id and changed_step (or, with --variable result, a value partner) is a base, its "
        "partner the source."
    )
    out: Path = opt(
        help="Output folder: das.json (IIA with Wilson intervals, controls, diagnostics) and "
        "das.safetensors (the trained subspaces), written together at the end."
    )
    pairs: Path | None = opt(
        None,
        example="data/synth.pairs.jsonl",
        help="The partners (default beside the data: <data>.pairs.jsonl; with --variable "
        "result, <data>.value_pairs.jsonl).",
    )
    variable: str = opt(
        "operation",
        choices=VARIABLES,
        help="The causal variable: 'operation' (the operation of step j; partners change one "
        "step's operation) or 'result' (the intermediate result r_j; value partners change the "
        "start number and keep every operation).",
    )
    model: str = opt("demo", help=HELP_MODEL)
    checkpoint: Path | None = opt(None, help="Local CODI checkpoint folder (as for extract).")
    base: str | None = opt(None, help="Base model: hub id or local folder.")
    sites: str = opt("latent_1@2", help="Sites, comma-separated POS@LAYER (one subspace per site).")
    dims: str | list[int] = opt(
        [1, 2, 4, 8, 16], list=int, min=1, max=MAX_DIM, help="Subspace dimensions r."
    )
    steps: str | list[int] = opt(
        [1],
        list=int,
        min=1,
        max=64,
        help="The steps j of the variable: the operation of step j (pairs whose changed_step is "
        "j; the other steps' pairs are the wrong-step control) or, with --variable result, r_j "
        "(every value pair with at least j steps).",
    )
    held_out: float = opt(
        0.5, min=0.1, max=0.9, help="Share of the pairs held out (by pair, seeded) for the IIA."
    )
    epochs: int = opt(10, min=1, max=MAX_EPOCHS, help="Passes over the training pairs (Adam).")
    lr: float = opt(1e-2, min=1e-6, max=1.0, help="Adam learning rate of the subspace.")
    reinit_seed: int = opt(
        0,
        min=0,
        max=SEED_MAX,
        help="Seed of the re-initialized model the whole procedure is repeated on (the control).",
    )
    seed: int = opt(0, min=0, max=SEED_MAX, help="Seed of the split, the init and the controls.")
    batch_size: int = opt(32, min=1, max=MAX_BATCH, help="Pairs per forward pass.")
    max_new_tokens: int = opt(
        DEFAULT_MAX_NEW_TOKENS, min=1, max=MAX_NEW_TOKENS, help="Answer tokens decoded at most."
    )
    dtype: str = opt("float32", choices=DTYPES, help=HELP_DTYPE)
    device: str = opt("auto", help=HELP_DEVICE)

    def __post_init__(self) -> None:
        check_fields(self)
        self.dims = sorted(set(self.dims))  # type: ignore[arg-type]
        self.steps = sorted(set(self.steps))  # type: ignore[arg-type]
        if not self.dims or not self.steps:
            raise OpcircuitsError("give at least one dimension and one step", field="dims")
