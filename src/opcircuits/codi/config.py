"""What a CODI checkpoint is: its hyper-parameters (`codi_config.json`) and the named presets.

No torch here, so the CLI and pipeline can read configs without importing the model code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError
from opcircuits.files import read_json_object

CONFIG_NAME = "codi_config.json"
THOUGHT_INPUTS: tuple[str, ...] = ("projection", "constant")

# LoRA targets of the released checkpoints, by transformers `model_type`.
LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


@dataclass
class CodiConfig:
    """Hyper-parameters of a CODI module; saved as `codi_config.json` in a checkpoint dir.

    `base` is a hub id or a local directory holding the base model's config and tokenizer; a
    relative local path is taken relative to the checkpoint dir ("." = the checkpoint dir itself).
    `lora_r=0` means no LoRA: the whole base was trained and its weights sit in the checkpoint.
    `lora_targets=None` picks the released targets for the base's architecture.
    """

    base: str
    num_latent: int = 6
    prj_dim: int = 2048
    prj_no_ln: bool = False
    prj_dropout: float = 0.0
    lora_r: int = 128
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: list[str] | None = None
    remove_eos: bool = True
    layers: list[int] | None = None
    # Routing of a model organism (defaults = CODI as released): whether eot and the answer may
    # attend to the prompt (question + bot), whether the thoughts may, and what a thought's input
    # is ("projection" of the previous final state, or "constant": one learned vector).
    answer_reads_prompt: bool = True
    thoughts_read_prompt: bool = True
    thought_input: str = "projection"

    def __post_init__(self) -> None:
        _check_types(self)
        if self.thought_input not in THOUGHT_INPUTS:
            raise OpcircuitsError(
                f"must be one of {list(THOUGHT_INPUTS)}, got {self.thought_input!r}",
                field="thought_input",
            )
        if not self.base:
            raise OpcircuitsError("base must be a non-empty hub id or directory", field="base")
        if self.num_latent < 1:
            raise OpcircuitsError(f"must be >= 1, got {self.num_latent}", field="num_latent")
        if self.prj_dim < 1:
            raise OpcircuitsError(f"must be >= 1, got {self.prj_dim}", field="prj_dim")
        if self.lora_r < 0:
            raise OpcircuitsError(f"must be >= 0 (0 = no LoRA), got {self.lora_r}", field="lora_r")
        if self.layers is not None:
            self.layers = list(self.layers)
        if self.lora_targets is not None:
            self.lora_targets = list(self.lora_targets)

    def to_dict(self) -> dict[str, Any]:
        """Every field, except routing fields at their defaults (so the configs of models
        trained before these options existed are written byte-identically)."""
        out = dataclasses.asdict(self)
        for name, default in ROUTING_DEFAULTS.items():
            if out[name] == default:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, path: str | Path | None = None) -> CodiConfig:
        refuse_official_flags(data, path)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OpcircuitsError(
                f"unknown CODI config keys {unknown}; known: {sorted(known)}", path=path
            )
        if "base" not in data:
            raise OpcircuitsError("missing the base model (hub id or dir)", path=path, field="base")
        try:
            return cls(**data)
        except OpcircuitsError as exc:
            if exc.path is None and path is not None:
                raise OpcircuitsError(exc.message, path=path, field=exc.field) from None
            raise

    def replace(self, **overrides: Any) -> CodiConfig:
        """A copy with the non-None overrides applied (flags override `codi_config.json`)."""
        refuse_official_flags(overrides, None)
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise OpcircuitsError(f"unknown CODI config options {unknown}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def save(self, directory: str | Path) -> Path:
        from opcircuits.files import write_json_atomic

        out = Path(directory) / CONFIG_NAME
        write_json_atomic(out, self.to_dict())
        return out


# Settings of the official code that a config may carry over but that we do not reproduce: each
# is refused with why, rather than dropped as an unknown key or silently ignored.
OFFICIAL_FLAGS: dict[str, str] = {
    "fix_attn_mask": (
        "the official train.py's flag 'Correct a bug about attention mask' changes only how "
        "that script trains (masks of the teacher pass and of the answer after the latents); its "
        "test.py never reads it and decodes unmasked after the prompt, while opcircuits masks "
        "padding at every step (equal to test.py for a batch of one); not reproduced: remove it"
    ),
}


def refuse_official_flags(data: dict[str, Any], path: str | Path | None) -> None:
    for name, why in OFFICIAL_FLAGS.items():
        if name in data:
            raise OpcircuitsError(why, path=path, field=name)


ROUTING_DEFAULTS: dict[str, Any] = {
    "answer_reads_prompt": True,
    "thoughts_read_prompt": True,
    "thought_input": "projection",
}

# The JSON kinds each field accepts (a config file is JSON: bools are not numbers, "six" is no int).
_KINDS: dict[str, tuple[str, tuple[type, ...]]] = {
    "base": ("a string", (str,)),
    "num_latent": ("an integer", (int,)),
    "prj_dim": ("an integer", (int,)),
    "prj_no_ln": ("true or false", (bool,)),
    "prj_dropout": ("a number", (int, float)),
    "lora_r": ("an integer", (int,)),
    "lora_alpha": ("a number", (int, float)),
    "lora_dropout": ("a number", (int, float)),
    "remove_eos": ("true or false", (bool,)),
    "answer_reads_prompt": ("true or false", (bool,)),
    "thoughts_read_prompt": ("true or false", (bool,)),
    "thought_input": ("a string", (str,)),
}
_LISTS: dict[str, tuple[str, type]] = {
    "lora_targets": ("a list of module names", str),
    "layers": ("a list of integers", int),
}


def _check_types(config: CodiConfig) -> None:
    for name, (kind, types) in _KINDS.items():
        value = getattr(config, name)
        wrong_bool = isinstance(value, bool) and bool not in types
        if wrong_bool or not isinstance(value, types):
            raise OpcircuitsError(f"must be {kind}, got {value!r}", field=name)
    for name, (kind, item) in _LISTS.items():
        value = getattr(config, name)
        if value is None:
            continue
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(x, item) and not isinstance(x, bool) for x in value
        )
        if not ok:
            raise OpcircuitsError(f"must be {kind} (or null), got {value!r}", field=name)


def read_config(directory: str | Path) -> dict[str, Any] | None:
    """The raw `codi_config.json` of a checkpoint dir, or None when it has none."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        return None
    return read_json_object(path)


def lora_targets_for(model_type: str) -> list[str]:
    try:
        return list(LORA_TARGETS[model_type])
    except KeyError:
        raise OpcircuitsError(
            f"no default LoRA targets for model type '{model_type}'; set lora_targets in "
            f"{CONFIG_NAME} (known types: {sorted(LORA_TARGETS)})"
        ) from None


def demo_dir(name: str = "demo") -> Path:
    """A small CODI model shipped inside the package: `demo` (GSM8K), `demo-arith` (the
    synthetic problems of `data synth`), `demo-rules` / `demo-rules-twin` (`--kind rules`)."""
    return Path(__file__).resolve().parent.parent / "models" / name


@dataclass(frozen=True)
class Preset:
    """A named model: where its checkpoint and base live, and its config defaults."""

    checkpoint: str
    base: str
    layers: tuple[int, ...] | None = None
    config: dict[str, Any] = field(default_factory=dict)


# The released checkpoints' settings (the official scripts/test_*.sh).
RELEASED: dict[str, Any] = {
    "num_latent": 6,
    "lora_r": 128,
    "lora_alpha": 32,
    "remove_eos": True,
    "prj_no_ln": False,
    "prj_dropout": 0.0,
}

PRESETS: dict[str, Preset] = {
    "codi-llama3.2-1b": Preset(
        checkpoint="zen-E/CODI-llama3.2-1b-Instruct",
        base="meta-llama/Llama-3.2-1B-Instruct",
        layers=(4, 8, 14),
        config={**RELEASED, "prj_dim": 2048},
    ),
    "codi-gpt2": Preset(
        checkpoint="zen-E/CODI-gpt2",
        base="gpt2",
        layers=(3, 6, 10),
        config={**RELEASED, "prj_dim": 768},
    ),
    # Layers and the rest come from the demo dir's own codi_config.json.
    "demo": Preset(checkpoint=str(demo_dir()), base="."),
    # The model organism: trained on synthetic problems (see its MODEL_CARD.md).
    "demo-arith": Preset(checkpoint=str(demo_dir("demo-arith")), base="."),
    # Organisms on `data synth --kind rules`: the answer reads only the thoughts, each thought
    # trained to hold its step; and the negative twin, whose thoughts are one learned constant.
    "demo-rules": Preset(checkpoint=str(demo_dir("demo-rules")), base="."),
    "demo-rules-twin": Preset(checkpoint=str(demo_dir("demo-rules-twin")), base="."),
}


def model_and_checkpoint(model: str, checkpoint: Any) -> tuple[str, Any]:
    """(model, checkpoint) as loading takes them: a bare `--checkpoint DIR` (with the default
    `--model demo`) is its own model, not the demo preset's location."""
    if checkpoint is not None and model == "demo":
        return str(checkpoint), None
    return model, checkpoint


def model_folders(model: str, checkpoint: Any, base: Any) -> dict[str, Path | None]:
    """The local folders a model is read from (a preset's or `--model` folder, a checkpoint, a
    base), by the flag naming them: inputs no output may lie in (`files.refuse_inside_inputs`)."""
    preset = PRESETS.get(model)
    found: dict[str, Path | None] = {}
    for name, value in (
        ("--checkpoint", checkpoint),
        ("--model", preset.checkpoint if preset is not None else model),
        ("--base", base),
    ):
        path = Path(str(value)).expanduser() if value is not None else None
        found[name] = path if path is not None and path.exists() else None
    return found
