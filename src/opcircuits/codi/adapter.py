"""LoRA adapters saved by peft (`adapter_config.json` + `adapter_model.safetensors` or
`adapter_model.bin`) beside the projection's weights file: the adapter's settings become the CODI
config's LoRA fields, and what peft's LoraConfig can express but the CODI module cannot (DoRA,
rsLoRA, per-layer ranks, LoRA biases, extra trained modules) is refused, naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from opcircuits.codi.weights import read_weights
from opcircuits.errors import OpcircuitsError
from opcircuits.files import read_json_object

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")

# Fields whose non-default value would change the computation the CODI module does.
UNSUPPORTED: dict[str, Any] = {
    "use_dora": False,
    "use_rslora": False,
    "lora_bias": False,
    "bias": "none",
    "rank_pattern": {},
    "alpha_pattern": {},
    "modules_to_save": None,
    "layers_to_transform": None,
    "layer_replication": None,
    "trainable_token_indices": None,
    "target_parameters": None,
}


def adapter_settings(path: Path) -> dict[str, Any]:
    """The CODI config fields an adapter_config.json declares (lora_r, lora_alpha, …, base)."""
    raw = read_json_object(path)
    if raw.get("peft_type") != "LORA":
        raise OpcircuitsError(
            f"peft_type is {raw.get('peft_type')!r}; only LORA adapters make a CODI model",
            path=path,
            field="peft_type",
        )
    for name, default in UNSUPPORTED.items():
        value = raw.get(name, default)
        empty_ok = default is None or default == {}
        if not (value in (None, [], {}) if empty_ok else value == default):
            raise OpcircuitsError(
                f"{name} = {value!r} is not what a CODI module computes (expected {default!r})",
                path=path,
                field=name,
            )
    targets = raw.get("target_modules")
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets) or not targets:
        raise OpcircuitsError(
            f"must be a list of module names (a regex cannot be checked), got {targets!r}",
            path=path,
            field="target_modules",
        )
    out: dict[str, Any] = {"lora_targets": sorted(targets)}
    # adapter_config.json field → CODI config field, and the JSON kinds it may take
    for name, ours, kinds in (
        ("r", "lora_r", (int,)),
        ("lora_alpha", "lora_alpha", (int, float)),
        ("lora_dropout", "lora_dropout", (int, float)),
    ):
        value = raw.get(name, 0.0 if name == "lora_dropout" else None)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise OpcircuitsError(f"must be a number, got {value!r}", path=path, field=name)
        out[ours] = value
    base = raw.get("base_model_name_or_path")
    if isinstance(base, str) and base:
        out["base"] = base
    return out


def read_adapter(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path] | None:
    """The adapter's tensors (peft's key names), its settings and its weights file; None when
    the dir holds no adapter_config.json."""
    config = directory / ADAPTER_CONFIG
    if not config.is_file():
        return None
    settings = adapter_settings(config)
    for name in ADAPTER_WEIGHTS:
        if (directory / name).is_file():
            weights = read_weights(directory / name)
            bad = [k for k in weights if not k.startswith("base_model.model.")]
            if bad:
                raise OpcircuitsError(
                    f"keys outside peft's base_model.model.: {bad[:5]}", path=directory / name
                )
            return weights, settings, directory / name
    raise OpcircuitsError(
        f"{ADAPTER_CONFIG} without its weights ({' or '.join(ADAPTER_WEIGHTS)})", path=config
    )
