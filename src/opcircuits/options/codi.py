"""Options of the commands that train and measure CODI models: `train` (with the official
recipes), `new-base`, `evaluate`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError
from opcircuits.options.checks import check_value
from opcircuits.options.core import (
    DEFAULT_DATA,
    DEFAULT_MAX_NEW_TOKENS,
    DTYPES,
    HELP_DEVICE,
    HELP_DTYPE,
    HELP_MODEL,
    check_fields,
    opt,
)

# --- training and evaluating CODI models --------------------------------------------------------

# Sane maxima of the counts (checked before anything is allocated): far beyond any real run, short
# of what exhausts a machine when a digit too many is typed.
MAX_LATENT = 100  # K continuous thoughts (the released models use 6)
MAX_STEPS = 10_000_000  # optimizer steps, checkpoint intervals
MAX_PROBLEMS = 10_000_000  # --limit (GSM8k-Aug has 385,620 problems)
MAX_BATCH = 4096
MAX_TOKENS = 131_072  # sequence lengths, decoded tokens
MAX_THREADS = 1024
MAX_SEED = 2**32 - 1  # numpy's seeds (set_seed seeds it too)
# new-base: a small base, not a frontier model (a hub base is the way to a large one)
MAX_BASE_PARAMETERS = 2_000_000_000


# The official CODI training settings of the two released models (zhenyi4/codi,
# scripts/train_gpt2_gsm8k-aug.sh and scripts/train_llama1b_gsm8k-aug.sh; values the scripts leave
# unset are the defaults of the official train.py / src/model.py). Effective batch 128 =
# per-device batch × gradient accumulation on one process. Official LoRA dropout is 0.1, as
# CodiConfig's default; the official run holds the whole model in bf16, here bf16 is autocast
# over fp32 weights.
_OFFICIAL_COMMON: dict[str, Any] = {
    "data": "zen-E/GSM8k-Aug",
    "seed": 11,
    "mixed_precision": "bf16",
    "max_grad_norm": 2.0,
    "lora_r": 128,
    "lora_alpha": 32,
    "weight_decay": 0.1,
    "warmup_ratio": 0.03,
    "num_latent": 6,
    "prj_dropout": 0.0,
    "prj_no_ln": False,
    "remove_eos": True,
    "include_last_cot": False,
    "distill_loss": "smooth_l1",
    "teacher_factor": 1.0,  # ref_loss_factor's default
}
TRAIN_RECIPES: dict[str, dict[str, Any]] = {
    "codi-gpt2": {
        **_OFFICIAL_COMMON,
        "base": "gpt2",
        "batch_size": 64,
        "grad_accum": 2,
        "epochs": 40.0,
        "lr": 3e-3,
        "prj_dim": 768,
        "distill_factor": 1.0,  # not set by the script: distill_loss_factor's default
        "max_tokens": 1000,  # not set by the script: max_token_num's default
    },
    "codi-llama3.2-1b": {
        **_OFFICIAL_COMMON,
        "base": "meta-llama/Llama-3.2-1B-Instruct",
        "batch_size": 32,
        "grad_accum": 4,
        "epochs": 10.0,
        "lr": 8e-4,
        "prj_dim": 2048,
        "distill_factor": 20.0,
        "max_tokens": 200,
    },
}


def recipe_opt(fallback: Any, *, help: str, **meta: Any) -> Any:
    """A training option a `--recipe` may set. Its field default is None, meaning "not given":
    `TrainOptions` fills it from the recipe, else from `fallback`, so an explicit value (even one
    equal to the fallback) always wins over the recipe."""
    shown = "none" if fallback is None else str(fallback)
    return opt(None, help=f"{help} (default {shown}, or the recipe's)", fallback=fallback, **meta)


# Train options added after checkpoints were written, with the value those runs had.
LATER_DEFAULTS: dict[str, Any] = {
    "answer_reads_prompt": True,
    "thoughts_read_prompt": True,
    "thought_input": "projection",
    "step_factor": 0.0,
}


@dataclass
class TrainOptions:
    """`opcircuits train`. Fields declared with `recipe_opt` are None until `__post_init__`
    resolves them: the given value, else the recipe's, else the field's fallback."""

    out: Path = opt(
        help="Output folder: OUT/last/ (resumable checkpoint), OUT/ (final model, released "
        "layout), OUT/train_log.jsonl, OUT/train_data.json (what was read and left out)."
    )
    recipe: str | None = opt(
        None,
        choices=tuple(TRAIN_RECIPES),
        help="Official CODI settings of a released model (learning rate, epochs, batch, LoRA, "
        "projection, distillation factor, bf16, seed, base, GSM8k-Aug data); options given "
        "explicitly override them.",
    )
    base: str | None = recipe_opt(
        None, help="Base model: hub id or local folder (config + tokenizer [+ weights])."
    )
    data: str | None = recipe_opt(
        DEFAULT_DATA,
        help="Training problems: GSM8K or GSM8k-Aug rows in a JSONL/JSON/parquet file (of "
        "problem records, such as the one `data download` writes, only the split=train rows), "
        "a folder holding train.jsonl, 'hf' (GSM8K on the hub) or a hub dataset id "
        "(zen-E/GSM8k-Aug).",
    )
    from_scratch: bool = opt(
        False,
        help="Initialize the base randomly from its config (the checkpoint becomes "
        "self-contained, base '.').",
    )
    num_latent: int | None = recipe_opt(6, min=1, max=MAX_LATENT, help="K continuous thoughts.")
    prj_dim: int | None = recipe_opt(2048, min=1, max=65536, help="Hidden width of the projection.")
    prj_dropout: float | None = recipe_opt(
        0.0, min=0, help="Projection dropout: a probability, at least 0 and below 1."
    )
    prj_no_ln: bool | None = recipe_opt(False, help="No LayerNorm in the projection.")
    lora_r: int | None = recipe_opt(
        128, min=0, max=4096, help="LoRA rank; 0 trains the whole base."
    )
    lora_alpha: int | None = recipe_opt(32, min=1, help="LoRA alpha.")
    remove_eos: bool | None = recipe_opt(
        True, help="No EOS between the question and the thoughts (as released)."
    )
    include_last_cot: bool | None = recipe_opt(
        False,
        help="Keep the last chain-of-thought step in the teacher sequence (the official CODI "
        "training drops it, so the teacher computes the final result at the distillation "
        "token instead of copying it).",
    )
    answer_reads_prompt: bool = opt(
        True,
        help="Let eot and the answer attend to the question and bot; --no-answer-reads-prompt "
        "makes the thoughts the answer's only path to the question (a bottleneck organism). "
        "Saved in codi_config.json and honoured at inference.",
    )
    thoughts_read_prompt: bool = opt(
        True,
        help="Let the thoughts attend to the question and bot (--no-thoughts-read-prompt: they "
        "see only earlier thoughts; with --thought-input constant they then carry nothing).",
    )
    thought_input: str = opt(
        "projection",
        choices=("projection", "constant"),
        help="A thought's input: the projection of the previous final state (CODI), or one "
        "learned constant for every thought (a negative twin: positions without content).",
    )
    step_factor: float = opt(
        0.0,
        min=0,  # the factors scale losses: a negative one would train away from the targets
        help="Weight of step supervision: thought k's LM-head output is trained to be step k's "
        "result (the final result after the last step), a cross-entropy added to the loss; "
        "steps whose result is not one token are left out (counted in train_data.json).",
    )
    layers: str | list[int] | None = opt(
        None,
        list=int,
        max=1024,
        help="Default analysis layers saved in codi_config.json, e.g. 2,4,6 (0 = embeddings, at "
        "most the base's number of blocks).",
    )
    max_tokens: int | None = recipe_opt(
        256,
        min=1,
        max=MAX_TOKENS,
        help="Leave out (and count) examples whose teacher sequence is longer.",
    )
    limit: int | None = opt(None, min=1, max=MAX_PROBLEMS, help="Use only the first N problems.")
    batch_size: int | None = recipe_opt(
        32, min=1, max=MAX_BATCH, help="Examples per process per micro-step."
    )
    grad_accum: int | None = recipe_opt(1, min=1, max=1024, help="Micro-steps per optimizer step.")
    epochs: float | None = recipe_opt(
        3.0, min=0, max=10_000, help="Epochs (ignored with --max-steps)."
    )
    max_steps: int | None = opt(None, min=1, max=MAX_STEPS, help="Optimizer steps in total.")
    lr: float | None = recipe_opt(8e-4, help="Peak learning rate (AdamW), above 0.")
    weight_decay: float | None = recipe_opt(0.01, min=0, help="AdamW weight decay.")
    warmup_ratio: float | None = recipe_opt(
        0.03, min=0, max=1, help="Linear warm-up share (0..1) before the cosine decay."
    )
    max_grad_norm: float | None = recipe_opt(
        2.0, min=0, help="Gradient clipping: the largest gradient norm; 0 clips nothing."
    )
    distill_loss: str | None = recipe_opt(
        "smooth_l1", choices=("smooth_l1", "l2"), help="smooth_l1 or l2."
    )
    distill_factor: float | None = recipe_opt(
        20.0, min=0, help="Multiplier of the distillation loss."
    )
    teacher_factor: float | None = recipe_opt(
        1.0, min=0, help="Multiplier of the teacher cross-entropy."
    )
    teacher_only_steps: int = opt(
        0, min=0, max=MAX_STEPS, help="First N steps train the teacher task only."
    )
    save_every: int = opt(100, min=1, max=MAX_STEPS, help="Checkpoint every N steps.")
    stop_after: int | None = opt(
        None,
        min=1,
        max=MAX_STEPS,
        help="Stop (checkpointed) after N steps of this invocation; rerun to continue.",
    )
    seed: int | None = recipe_opt(
        0, min=0, max=MAX_SEED, help="Seed of initialization and data order."
    )
    mixed_precision: str | None = recipe_opt(
        "no", choices=("no", "fp16", "bf16"), help="no, fp16 or bf16."
    )
    threads: int | None = opt(None, min=1, max=MAX_THREADS, help="torch CPU threads.")

    def __post_init__(self) -> None:
        # The recipe first (check_fields below checks every field), as it fills the others.
        check_value("recipe", self.recipe, str | None, {"choices": tuple(TRAIN_RECIPES)})
        recipe = TRAIN_RECIPES[self.recipe] if self.recipe else {}
        for f in dataclasses.fields(self):
            if "fallback" in f.metadata and getattr(self, f.name) is None:
                setattr(self, f.name, recipe.get(f.name, f.metadata["fallback"]))
        check_fields(self)
        if self.base is None:
            raise OpcircuitsError("give a base model (or a --recipe that names one)", field="base")
        if self.max_steps is None and self.epochs <= 0:
            raise OpcircuitsError("must be > 0 (or give max_steps)", field="epochs")
        if self.lr <= 0:
            raise OpcircuitsError(f"must be above 0, got {self.lr}", field="lr")
        if self.prj_dropout >= 1:  # a probability; 1 would drop every unit
            raise OpcircuitsError(f"must be below 1, got {self.prj_dropout}", field="prj_dropout")
        if self.layers:
            if any(x < 0 for x in self.layers):
                raise OpcircuitsError(
                    f"must be 0 (embeddings) or a block number, got {self.layers}", field="layers"
                )
            if len(set(self.layers)) != len(self.layers):
                raise OpcircuitsError(f"layers repeat: {self.layers}", field="layers")

    def fingerprint(self) -> dict[str, Any]:
        """The options a resumed run must share with the run that wrote the checkpoint (the
        resolved values: a recipe and the same values given one by one are the same run)."""
        skip = {"out", "stop_after", "save_every", "threads", "data", "recipe"}
        out = {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in dataclasses.asdict(self).items()
            if k not in skip
        }
        # Options added later, at their defaults, are left out: earlier checkpoints resume.
        for name, default in LATER_DEFAULTS.items():
            if out.get(name) == default:
                del out[name]
        # Layers as the comma string checkpoints written before they became a list recorded.
        if self.layers is not None:
            out["layers"] = ",".join(map(str, self.layers))
        return out


@dataclass
class NewBaseOptions:
    """`opcircuits new-base`."""

    out: Path = opt(help="Folder for config.json + tokenizer (no weights).")
    data: str = opt(
        DEFAULT_DATA,
        help="GSM8K train problems the tokenizer is trained on (as for `train --data`), or 'hf'.",
    )
    vocab_size: int = opt(2048, min=1, max=262_144, help="BPE vocabulary size.")
    hidden_size: int = opt(
        256, min=1, max=16384, help="Model width (a multiple of --num-heads, even per head)."
    )
    num_layers: int = opt(6, min=1, max=256, help="Transformer blocks.")
    num_heads: int = opt(4, min=1, max=256, help="Attention heads.")
    intermediate_size: int = opt(688, min=1, max=65536, help="MLP width.")
    max_positions: int = opt(512, min=1, max=MAX_TOKENS, help="Longest sequence.")
    split_digits: bool = opt(
        True,
        help="Split numbers into single digits (the demo); --no-split-digits lets frequent "
        "numbers become one token each (demo-arith).",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.hidden_size % self.num_heads:
            raise OpcircuitsError(
                f"must be a multiple of --num-heads ({self.num_heads}), got {self.hidden_size}",
                field="hidden_size",
            )
        head = self.hidden_size // self.num_heads
        if head % 2:  # rotary position embeddings rotate pairs of a head's dimensions
            raise OpcircuitsError(
                f"--hidden-size / --num-heads = {head} per head must be even (rotary position "
                "embeddings rotate pairs of dimensions)",
                field="hidden_size",
            )
        # embedding (tied with the LM head) + per block attention (4 d²) and MLP (3 d·i)
        d, i = self.hidden_size, self.intermediate_size
        params = self.vocab_size * d + self.num_layers * (4 * d * d + 3 * d * i)
        if params > MAX_BASE_PARAMETERS:
            raise OpcircuitsError(
                f"--vocab-size, --hidden-size, --num-layers and --intermediate-size give about "
                f"{params / 1e9:.1f}B parameters, more than a small base's "
                f"{MAX_BASE_PARAMETERS / 1e9:.0f}B; train on a hub base instead",
                field="hidden_size",
            )


DemoBaseOptions = NewBaseOptions  # the earlier name


@dataclass
class EvaluateOptions:
    """`opcircuits evaluate`."""

    model: str = opt("demo", help=HELP_MODEL)
    data: str = opt(
        DEFAULT_DATA,
        help="GSM8K test problems: the JSONL `data download` writes (its split=test rows), "
        "GSM8K's original test.jsonl, or a folder holding it.",
    )
    device: str = opt("auto", help=HELP_DEVICE)
    dtype: str = opt("float32", choices=DTYPES, help=HELP_DTYPE)
    out: Path | None = opt(None, help="Write the accuracies and every answer here (JSON).")
    limit: int | None = opt(None, min=1, max=MAX_PROBLEMS, help="Only the first N problems.")
    num_latent: list[int] = opt(
        [6, 0],
        list=int,
        max=MAX_LATENT,
        help="Student settings: the K values to measure, e.g. 6,0.",
    )
    keep_positions: bool = opt(
        False,
        help="Also measure each K below the model's own with eot and the answer at the "
        "positions they have after the model's K thoughts (settings `student_k<K>_kept`): a "
        "shorter loop then changes the thoughts, not where the answer sits.",
    )
    teacher: bool = opt(True, help="Also measure the teacher (explicit CoT, greedy).")
    batch_size: int = opt(64, min=1, max=MAX_BATCH, help="Problems per batch.")
    max_new_tokens: int = opt(
        DEFAULT_MAX_NEW_TOKENS,
        min=1,
        max=MAX_TOKENS,
        help="Student answer tokens decoded at most.",
    )
    max_cot_tokens: int = opt(
        DEFAULT_MAX_NEW_TOKENS,
        min=1,
        max=MAX_TOKENS,
        help="Teacher tokens decoded at most (chain of thought + answer; stops at EOS).",
    )
    threads: int | None = opt(None, min=1, max=MAX_THREADS, help="torch CPU threads.")

    def __post_init__(self) -> None:
        check_fields(self)
        if any(k < 0 for k in self.num_latent):
            raise OpcircuitsError(f"must be ≥ 0, got {self.num_latent}", field="num_latent")
