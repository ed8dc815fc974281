"""A CODI checkpoint's weight file: where it is (`model.safetensors` or `pytorch_model.bin`),
reading it (never unpickling arbitrary objects), checking it is finite, and the sizes its keys
reveal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from opcircuits.codi.model import WEIGHTS_NAME
from opcircuits.errors import OpcircuitsError

BIN_NAME = "pytorch_model.bin"
MAX_LISTED = 20


def find_weights(directory: Path) -> Path:
    for name in (WEIGHTS_NAME, BIN_NAME):
        if (directory / name).is_file():
            return directory / name
    found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    raise OpcircuitsError(
        f"no {WEIGHTS_NAME} or {BIN_NAME} in the checkpoint dir (it holds {found[:10]})",
        path=directory,
    )


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file on CPU (`.bin` only through `weights_only=True`)."""
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
