"""Where a CODI model's pieces live and what its config is: presets, hub ids or local checkpoint
folders, the base they name, and the settings no checkpoint may leave to a guess; also the dtype
and device names every command accepts."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from opcircuits.codi import hub
from opcircuits.codi.adapter import read_adapter
from opcircuits.codi.config import CONFIG_NAME, PRESETS, CodiConfig, Preset, read_config
from opcircuits.codi.keymap import rename_static
from opcircuits.codi.weights import find_weights, infer_config, read_weights, shard_files
from opcircuits.errors import OpcircuitsError
from opcircuits.options import DTYPES as DTYPE_NAMES

log = logging.getLogger(__name__)

# The torch dtype of each name the options offer (the names are declared once, in options).
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


@dataclass
class Resolved:
    """Where a model's pieces live, and its final config (what the store manifest records)."""

    name: str  # what the user asked for: preset, hub id or dir
    checkpoint: str  # hub id or local dir of the CODI weights
    checkpoint_dir: Path
    weights_path: Path
    base: str  # hub id or dir of the base (config, tokenizer, missing weights)
    base_dir: Path
    config: CodiConfig
    weight_files: list[Path] = field(default_factory=list)  # every file the weights came from
    renamed: dict[str, str] = field(default_factory=dict)  # module key → the file's spelling


@dataclass
class Checkpoint:
    """What a checkpoint dir's weight files hold, with the module's key spellings."""

    path: Path  # the file errors name: the weights file (or shard index), else the adapter's
    files: list[Path]
    weights: dict[str, torch.Tensor]
    settings: dict[str, Any]  # CODI config fields a peft adapter_config.json declares
    renamed: dict[str, str]


def read_checkpoint(ckpt_dir: Path) -> Checkpoint:
    """The weights file (one, or sharded), and a peft adapter beside it when there is one; keys
    of older spellings renamed by `keymap`'s table, a key held twice an error naming both."""
    adapter = read_adapter(ckpt_dir)
    primary = find_weights(ckpt_dir, required=adapter is None)
    weights: dict[str, torch.Tensor] = {}
    renamed: dict[str, str] = {}
    files: list[Path] = []
    if primary is not None:
        weights, renamed = rename_static(read_weights(primary), primary)
        shards = primary.name.endswith(".index.json")
        files = [primary, *sorted(set(shard_files(primary).values()))] if shards else [primary]
    if adapter is None:
        assert primary is not None
        return Checkpoint(primary, files, weights, {}, renamed)
    tensors, settings, path = adapter
    extra, extra_renamed = rename_static(tensors, path)
    twice = sorted(set(extra) & set(weights))
    if twice:
        raise OpcircuitsError(
            f"{len(twice)} weights are both here and in {primary}: {twice[:5]}", path=path
        )
    weights.update(extra)
    renamed.update(extra_renamed)
    return Checkpoint(primary or path, [*files, path], weights, settings, renamed)


def weights_sha256(resolved: Resolved) -> str:
    """What a store records as the weights' identity: one file's sha256 (as always), or for
    several (shards, an adapter beside its projection) the sha256 of their names and sha256s, so
    that a changed shard changes it."""
    from opcircuits.files import sha256_file

    files = resolved.weight_files or [resolved.weights_path]
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{p.name} {sha256_file(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def _say_which_config(ckpt_dir: Path, base_dir: Path) -> None:
    """Hub repos of released CODI checkpoints hold a 0-byte config.json: the base's is the one
    used (as it is for every checkpoint with its own base), said once."""
    own = ckpt_dir / "config.json"
    if base_dir == ckpt_dir or (own.is_file() and own.stat().st_size > 0):
        return
    why = "is empty (0 bytes)" if own.is_file() else "is missing"
    log.info("the checkpoint's config.json %s; using the base's %s", why, base_dir / "config.json")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise OpcircuitsError(
            f"unknown dtype '{dtype}'; choose one of {sorted(DTYPES)}", field="dtype"
        ) from None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise OpcircuitsError(
            f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps", field="device"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OpcircuitsError("CUDA is not available on this machine", field="device")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise OpcircuitsError("MPS is not available on this machine", field="device")
    return dev


def _find_preset(model: str) -> Preset | None:
    if model in PRESETS:
        return PRESETS[model]
    for preset in PRESETS.values():  # a released checkpoint named by its hub id
        if preset.checkpoint == model:
            return preset
    return None


def _locate_base(base: str, checkpoint_dir: Path, relative: bool) -> Path:
    if relative and (checkpoint_dir / base).is_dir():
        return (checkpoint_dir / base).resolve()
    if Path(base).expanduser().is_dir():
        return Path(base).expanduser().resolve()
    if hub.looks_like_repo_id(base):
        return hub.download(base, weights=False)
    raise OpcircuitsError(f"base model '{base}' is neither a directory nor a hub id", field="base")


# What the weights cannot tell and inference depends on: no silent default for these. (The
# released checkpoints use K = 6, remove_eos true, alpha 32; the official code's defaults are
# K = 5, EOS kept, alpha 16: a guess would be wrong for one or the other.)
MUST_DECLARE = ("num_latent", "remove_eos")


def _require_declared(config: CodiConfig, declared: set[str], ckpt_dir: Path) -> None:
    need = list(MUST_DECLARE) + (["lora_alpha"] if config.lora_r > 0 else [])
    missing = [k for k in need if k not in declared]
    if missing:
        example = {"num_latent": 6, "remove_eos": True, "lora_alpha": 32}
        shown = ", ".join(f'"{k}": {str(example[k]).lower()}' for k in missing)
        file = ckpt_dir / CONFIG_NAME
        where = f"its {CONFIG_NAME} does not give" if file.is_file() else f"no {CONFIG_NAME} gives"
        raise OpcircuitsError(
            f"{', '.join(missing)} unknown: this checkpoint is not a preset and {where} them; "
            f"write them into {file} (e.g. {{{shown}}}, the released CODI checkpoints' values) "
            "or give them (extract: --num-latent, --remove-eos/--no-remove-eos, --lora-alpha; "
            "load_codi: keyword arguments)",
            path=ckpt_dir,
            field=missing[0],
        )


def local_folders(model: str | Path, checkpoint: str | Path | None = None) -> list[Path]:
    """The local folders loading `model` reads, found without reading any weights or the hub:
    its checkpoint folder (a preset's installed one included) and its base when that is a local
    folder ("." is the checkpoint itself). What a command's output must stay out of."""
    model = str(model)
    preset = _find_preset(model)
    if checkpoint is not None:
        ckpt = Path(checkpoint).expanduser()
    elif preset is not None:
        ckpt = Path(preset.checkpoint)
    else:
        ckpt = Path(model).expanduser()
    if not ckpt.is_dir():
        return []
    base = preset.base if preset is not None else None
    try:
        base = (read_config(ckpt) or {}).get("base", base)
    except OpcircuitsError:
        pass  # loading reports the unreadable config
    folders = [ckpt]
    if isinstance(base, str) and base:
        for candidate in (ckpt / base, Path(base).expanduser()):
            if candidate.is_dir():
                folders.append(candidate)
                break
    return folders


def resolve(
    model: str | Path = "demo",
    *,
    checkpoint: str | Path | None = None,
    base: str | Path | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    **overrides: Any,
) -> tuple[Resolved, dict[str, torch.Tensor]]:
    """Find checkpoint dir, weights and base, and build the config. Precedence (low → high):
    defaults, preset, sizes read off the weights, the dir's `codi_config.json`, explicit options."""
    model = str(model)
    preset = _find_preset(model)
    if checkpoint is not None:
        ckpt = str(checkpoint)
        ckpt_dir = Path(ckpt).expanduser()
        if not ckpt_dir.is_dir():
            raise OpcircuitsError("checkpoint dir not found", path=ckpt_dir, field="checkpoint")
    elif preset is not None:
        ckpt = preset.checkpoint
        ckpt_dir = Path(ckpt)
        if model in ("demo", "demo-arith") and not ckpt_dir.is_dir():
            raise OpcircuitsError(
                f"the {model} model is not installed at {ckpt_dir}; train it with `opcircuits "
                "train` (its MODEL_CARD.md has the commands) or choose --model codi-gpt2 / "
                "codi-llama3.2-1b / --checkpoint DIR --base DIR"
            )
        if not ckpt_dir.is_dir():
            ckpt_dir = hub.download(ckpt)
    elif Path(model).expanduser().is_dir():
        ckpt = model
        ckpt_dir = Path(model).expanduser()
    elif hub.looks_like_repo_id(model):
        ckpt = model
        ckpt_dir = hub.download(model)
    else:
        raise OpcircuitsError(
            f"unknown model '{model}': not a preset ({', '.join(PRESETS)}), a dir or a hub id",
            field="model",
        )
    ckpt_dir = ckpt_dir.resolve()
    if weights is None:
        found = read_checkpoint(ckpt_dir)
    else:  # given in memory (training's own checkpoints): its names are the module's already
        path = find_weights(ckpt_dir)
        found = Checkpoint(path, [path], weights, {}, {})
    weights = found.weights

    data: dict[str, Any] = {}
    if preset is not None:
        data.update(base=preset.base, **preset.config)
        if preset.layers is not None:
            data["layers"] = list(preset.layers)
    data.update(infer_config(weights))
    data.update(found.settings)
    file_config = read_config(ckpt_dir) or {}
    data.update(file_config)
    base_relative = base is None  # from the preset or codi_config.json: relative to the dir
    if base is not None:
        data["base"] = str(base)
    if "base" not in data:
        raise OpcircuitsError(
            "no base model known for this checkpoint: pass --base NAME_OR_DIR "
            "(or put it in codi_config.json)",
            path=ckpt_dir,
            field="base",
        )
    config = CodiConfig.from_dict(data, path=ckpt_dir / CONFIG_NAME).replace(**overrides)
    declared = set(file_config) | set(found.settings)
    declared |= {k for k, v in overrides.items() if v is not None}
    if preset is not None:
        declared |= set(preset.config)
    _require_declared(config, declared, ckpt_dir)
    base_dir = _locate_base(config.base, ckpt_dir, base_relative)
    _say_which_config(ckpt_dir, base_dir)
    resolved = Resolved(
        model, ckpt, ckpt_dir, found.path, config.base, base_dir, config, found.files,
        found.renamed,
    )  # fmt: skip
    return resolved, weights
