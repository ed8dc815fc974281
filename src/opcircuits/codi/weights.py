"""A CODI checkpoint's weight files: where they are (`model.safetensors`, `pytorch_model.bin`, or
either sharded with its `*.index.json`), reading them (never unpickling arbitrary objects),
checking they are finite, and the sizes their keys reveal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from opcircuits.codi.model import WEIGHTS_NAME
from opcircuits.errors import OpcircuitsError

BIN_NAME = "pytorch_model.bin"
INDEX_SUFFIX = ".index.json"  # transformers' sharded layout: `model.safetensors.index.json`
# In this order: one file first, as transformers' save_pretrained prefers it.
WEIGHT_NAMES = (WEIGHTS_NAME, WEIGHTS_NAME + INDEX_SUFFIX, BIN_NAME, BIN_NAME + INDEX_SUFFIX)
MAX_LISTED = 20


def find_weights(directory: Path, *, required: bool = True) -> Path | None:
    """The checkpoint's weights file (for a sharded checkpoint, its index)."""
    for name in WEIGHT_NAMES:
        if (directory / name).is_file():
            return directory / name
    if not required:
        return None
    found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    raise OpcircuitsError(
        f"no {', '.join(WEIGHT_NAMES)} in the checkpoint dir (it holds {found[:10]})",
        path=directory,
    )


def shard_files(index: Path) -> dict[str, Path]:
    """The index's `weight_map` (key → shard file), every shard checked to exist."""
    from opcircuits.files import read_json_object

    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise OpcircuitsError("no weight_map object of key → shard file", path=index)
    shards: dict[str, Path] = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or Path(name).name != name:
            raise OpcircuitsError(f"shard of {key} is not a file name: {name!r}", path=index)
        shard = index.parent / name
        if not shard.is_file():
            raise OpcircuitsError(
                f"names the shard {name} (for {key}), which is missing", path=index
            )
        shards[key] = shard
    return shards


def read_sharded(index: Path) -> dict[str, torch.Tensor]:
    """All tensors of a sharded checkpoint: each shard must hold exactly the keys the index puts
    there (a key in the wrong shard means the index and the shards are from different saves)."""
    shards = shard_files(index)
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(shards.values())):
        tensors = read_weights(shard)
        wrong = [k for k in tensors if shards.get(k) != shard]
        if wrong:
            raise OpcircuitsError(
                f"holds {len(wrong)} keys that {index.name} puts elsewhere or nowhere: "
                f"{listing(wrong)}",
                path=shard,
            )
        absent = [k for k, s in shards.items() if s == shard and k not in tensors]
        if absent:
            raise OpcircuitsError(
                f"lacks {len(absent)} keys that {index.name} puts there: {listing(absent)}",
                path=shard,
            )
        out.update(tensors)
    return out


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file (or sharded checkpoint index) on CPU (`.bin` only
    through `weights_only=True`)."""
    if path.name.endswith(INDEX_SUFFIX):
        return read_sharded(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise OpcircuitsError(
            f"cannot read weights: {type(exc).__name__}: {exc}", path=path
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OpcircuitsError("not a state dict of tensors", path=path)
    return state


def check_finite(tensors: dict[str, torch.Tensor], path: Path | str) -> None:
    """Every floating-point weight is finite (NaN/inf would flow silently into every thought)."""
    bad = [
        k
        for k, t in tensors.items()
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise OpcircuitsError(
            f"{len(bad)} weights hold NaN or inf values: {listing(bad)}", path=path
        )


def infer_config(keys: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Projection/LoRA sizes the weights themselves reveal (used when nothing declares them)."""
    out: dict[str, Any] = {}
    if "prj.1.weight" in keys:
        out["prj_dim"] = int(keys["prj.1.weight"].shape[0])
        out["prj_no_ln"] = "prj.ln.weight" not in keys
    lora = [k for k in keys if k.endswith(".lora_A.default.weight")]
    if lora:
        out["lora_r"] = int(keys[lora[0]].shape[0])
    elif not any(k.startswith("codi.base_model.model.") for k in keys):
        out["lora_r"] = 0
    return out


def listing(keys: list[str]) -> str:
    more = f" … and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return ", ".join(keys[:MAX_LISTED]) + more
