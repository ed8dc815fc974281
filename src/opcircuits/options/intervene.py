"""Options of the causal tests: `opcircuits intervene` and the run's `[intervene]` table."""

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

# Upper bounds of the counts below, checked before anything is allocated: beyond them a value
# would exhaust the memory or the machine (a bootstrap's resamples are held as matrices over the
# whole sweep, permutations as label arrays) long before it changed a result.
MAX_BOOTSTRAP = 10_000
MAX_PART = 1024  # problems per intervene part: its rows (× interventions) are held in memory
MAX_ALPHA = 100.0  # |steering strength| in mean state norms; beyond it states overflow

# --- causal tests ------------------------------------------------------------------------------

DEFAULT_KINDS = (
    "zero", "mean", "resample", "patch", "steer", "truncate", "knockout", "path",
)  # fmt: skip
# Asked for by name only: erasure fits a LEACE eraser per site and fold (not in the default).
INTERVENTION_KINDS = (*DEFAULT_KINDS, "erase")
# Interventions per stacked batch (`codi.interventions.groups`): 8 × a batch of 32 = 256 rows per
# forward, where the GPT-2 shape's CPU matmuls are near their best per row.
DEFAULT_GROUP_SIZE = 8
MAX_GROUP_SIZE = 256
DEFAULT_EDGES = (  # codi.interventions.edges.DEFAULT_EDGES (options sit below codi)
    "answer>question,answer>bot,answer>prompt,answer>thoughts,answer>latent_*,"
    "latent_*>question,thoughts>question"
)


@dataclass
class InterveneOptions:
    """`opcircuits intervene` (and the [intervene] table of `opcircuits run`)."""

    data: Path = opt(
        aliases=("--dataset",),
        help="Problem file: JSONL from the data commands (e.g. opcircuits data synth), or the "
        "earlier scripts' JSON.",
    )
    out: Path = opt(
        help="Output folder: interventions.parquet, interventions.json, figures; rerunning the "
        "same command resumes it."
    )
    model: str = opt("demo", help=HELP_MODEL + " The default, demo, ships with the package.")
    checkpoint: Path | None = opt(None, help="Local CODI checkpoint folder (as for extract).")
    base: str | None = opt(
        None, help="Base model: hub id or local folder (config + tokenizer [+ weights])."
    )
    kinds: str | list[str] = opt(
        # A string, as a config file's list reads back (the checks below make it a list).
        ",".join(DEFAULT_KINDS),
        list=str,
        help="Interventions: zero, mean, resample (another problem's state; these three also "
        "ablate latent_{k+1}..latent_K jointly, at the input and at every layer), patch (the "
        "partner's state; skipped without partners), steer, truncate (fewer thoughts: natural "
        "positions and position-preserved), knockout (attention edges, --edges), path (the "
        "partner's prompt read by the thoughts only / the answer only / all); erase (not in the "
        "default: LEACE erasure of the category at each of --sites, cross-fitted, and a random "
        "subspace of the same rank as its control).",
    )
    edges: str = opt(
        DEFAULT_EDGES,
        example="answer>question@*,answer>latent_1#*",
        help="Attention knockouts: QUERY>KEYS, then optionally @LAYERS and #HEADS, "
        "comma-separated; QUERY = answer "
        "(eot + answer tokens), thoughts or latent_k; KEYS = question, bot, prompt, thoughts or "
        "latent_k (latent_* = each); LAYERS = blocks 1..n joined by + (default every layer; * = "
        "each in turn); HEADS likewise (default every head).",
    )
    sites: str = opt(
        "all",
        help="Sites of zero/mean/resample/patch/erase: POS@LAYER items, comma-separated; POS = "
        "bot, latent_k, latents (all at once) or * (each); LAYER = a number, * (each) or all "
        "(all at once); 'all' = every single site; '+' joins sites into one intervention.",
    )
    steer_sites: str | None = opt(
        None,
        example="latents@8",
        help="Sites steered (same syntax; default: every latent step at once, at the middle "
        "layer).",
    )
    alphas: str | list[float] = opt(
        [-2.0, -1.0, -0.5, 0.5, 1.0, 2.0],
        list=float,
        min=-MAX_ALPHA,
        max=MAX_ALPHA,
        help=f"Steering strengths, in units of the site's mean state norm (|α| ≤ {MAX_ALPHA:g}).",
    )
    steer_categories: str | list[str] | None = opt(
        None,
        list=str,
        example="pure_addition,pure_multiplication",
        help="A,B: steer along the direction from category A's mean state to B's (default "
        "pure_addition,pure_multiplication when present).",
    )
    pairs: Path | None = opt(
        None,
        example="data/synth.pairs.jsonl",
        help="Counterfactual partners for patching: records sharing a problem's pair_id "
        "(default: <data>.pairs.jsonl beside the data, if any; pairs inside the data file are "
        "used too).",
    )
    patch_map: Path | None = opt(
        None,
        example="patch_sources.json",
        help="JSON object {problem id: source id} choosing each problem's patch source among "
        "the data and the partners (instead of pair_id).",
    )
    seed: int = opt(
        0,
        min=0,
        max=SEED_MAX,
        help="Seed of the resample draws, the random direction, erasure's folds and random "
        "subspaces, and the bootstrap.",
    )
    bootstrap: int = opt(
        2000, min=100, max=MAX_BOOTSTRAP, help="Bootstrap resamples of every interval."
    )
    batch_size: int = opt(
        32, min=1, max=MAX_BATCH, help="Problems per forward pass (results do not change)."
    )
    group_size: int = opt(
        DEFAULT_GROUP_SIZE,
        min=1,
        max=MAX_GROUP_SIZE,
        help="Interventions starting at the same step run together as one batch of "
        "group × batch-size rows (faster; memory grows with that product, not with the number "
        "of interventions; results equal within float rounding; 1: one at a time).",
    )
    max_new_tokens: int = opt(
        DEFAULT_MAX_NEW_TOKENS,
        min=1,
        max=MAX_NEW_TOKENS,
        help="Answer tokens decoded at most (stops at EOS).",
    )
    shard_size: int = opt(
        64,
        min=1,
        max=MAX_PART,
        help="Problems per saved part: the unit in which a sweep resumes.",
    )
    dtype: str = opt("float32", choices=DTYPES, help=HELP_DTYPE)
    device: str = opt("auto", help=HELP_DEVICE)

    def __post_init__(self) -> None:
        check_fields(self)
        self.kinds = list(dict.fromkeys(self.kinds))  # a kind given twice runs once
        bad = [k for k in self.kinds if k not in INTERVENTION_KINDS]
        if bad:
            raise OpcircuitsError(
                f"unknown {bad}; kinds are {', '.join(INTERVENTION_KINDS)}", field="kinds"
            )
        if self.steer_categories is not None and len(self.steer_categories) != 2:
            raise OpcircuitsError("give two categories, A,B", field="steer_categories")
        if self.steer_categories is not None and len(set(self.steer_categories)) != 2:
            raise OpcircuitsError(
                "give two different categories, A,B: from a category to itself there is no "
                "direction",
                field="steer_categories",
            )


INTERVENE_SWITCH = ("auto", "on", "off")


@dataclass
class RunInterveneOptions:
    """The [intervene] table's own key: whether `opcircuits run` runs the causal tests. Its other
    keys are `InterveneOptions` (the model and decoding are [extract]'s: the same model)."""

    enabled: str = opt(
        "auto",
        choices=INTERVENE_SWITCH,
        help="The intervene stage (causal tests on the run's problems, reported in 'Causal "
        "tests'): auto = in full mode only; on = also in prototype mode; off = never.",
    )

    def __post_init__(self) -> None:
        check_fields(self)
