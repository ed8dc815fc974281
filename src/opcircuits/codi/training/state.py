"""The resumable part of a training checkpoint, without pickle.

`OUT/last/` holds, beside the model (`model.safetensors`, `codi_config.json`):
- `training_state.json`: step, number of processes, the options fingerprint, the LR scheduler's
  state (plain numbers) and the optimizer's hyper-parameter groups;
- `optimizer.safetensors`: the optimizer's per-parameter tensors (AdamW moments and step counts),
  named `<parameter index>.<name>`;
- `rng-<rank>.safetensors`, one per process: torch's (and CUDA's) RNG state as uint8 tensors, and
  Python's `random` state as JSON in the file's metadata.

Nothing here unpickles: JSON and safetensors cannot run code, so a crafted file in an output
folder can at worst make resuming fail with an OpcircuitsError. Files of the earlier pickle format
(`training_state.pt`, `rng-N.pt`) are never opened; a folder holding them is refused.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from opcircuits.errors import OpcircuitsError
from opcircuits.files import atomic_path, read_json_object, write_json_atomic

STATE_NAME = "training_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
FORMAT = 1
_PICKLED = "training_state.pt"  # the earlier format, never loaded


def rng_name(rank: int) -> str:
    return f"rng-{rank}.safetensors"


def find_checkpoint(out: Path) -> Path | None:
    """The folder to resume from: OUT/last, or OUT/last.old (only left by a crash mid-swap)."""
    for name in ("last", "last.old"):
        folder = out / name
        pickled = [folder / _PICKLED, *sorted(folder.glob("rng-*.pt"))]
        found = [p for p in pickled if p.is_file()]
        if found:
            raise OpcircuitsError(
                f"holds a training state in the earlier pickle format ({found[0].name}), which is "
                f"never loaded (unpickling a file can run code); delete {folder} to start this "
                "run over, or train into another --out",
                path=found[0],
            )
        if (folder / STATE_NAME).is_file():
            return folder
    return None


# --- writing -------------------------------------------------------------------------------


def save_state(
    folder: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    options: dict[str, Any],
    world: int,
) -> None:
    """Write training_state.json and optimizer.safetensors (main process)."""
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entry in opt["state"].items():
        for name, value in entry.items():
            key = f"{index}.{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().to("cpu").contiguous()
            else:
                scalars[key] = value
    with atomic_path(folder / OPTIMIZER_NAME) as tmp:
        save_file(tensors, str(tmp))
    write_json_atomic(
        folder / STATE_NAME,
        {
            "format": FORMAT,
            "step": step,
            "world": world,
            "options": options,
            "scheduler": scheduler.state_dict(),
            "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        },
    )


def save_rng(folder: Path, rank: int) -> None:
    """This process's RNG states (torch, CUDA, Python's random)."""
    from safetensors.torch import save_file

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    version, internal, gauss = random.getstate()
    meta = {"python": json.dumps([version, list(internal), gauss])}
    with atomic_path(folder / rng_name(rank)) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


# --- reading -------------------------------------------------------------------------------


def read_state(folder: Path) -> dict[str, Any]:
    """training_state.json, its types checked (a crafted file is an error, nothing else)."""
    path = folder / STATE_NAME
    try:
        state = read_json_object(path)
    except UnicodeDecodeError as exc:
        raise OpcircuitsError("not a UTF-8 JSON file", path=path) from exc
    checks = {
        "format": int,
        "step": int,
        "world": int,
        "options": dict,
        "scheduler": dict,
        "optimizer": dict,
    }
    for key, kind in checks.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise OpcircuitsError(f"missing or not a {kind.__name__}", path=path, field=key)
    if state["format"] != FORMAT:
        raise OpcircuitsError(f"unknown format {state['format']}", path=path, field="format")
    groups = state["optimizer"].get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise OpcircuitsError("not a list of objects", path=path, field="optimizer.param_groups")
    return state


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise OpcircuitsError("missing from the checkpoint", path=path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise OpcircuitsError(f"not a readable safetensors file: {exc}", path=path) from exc


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path, state: dict[str, Any]) -> None:
    """Restore the optimizer from optimizer.safetensors and the groups in `state`."""
    path = folder / OPTIMIZER_NAME
    tensors, _ = _read_safetensors(path)
    per_param: dict[int, dict[str, Any]] = {}
    values: dict[str, Any] = {**state["optimizer"].get("scalars", {}), **tensors}
    for key, value in values.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or not name:
            raise OpcircuitsError(f"unexpected entry {key!r}", path=path)
        per_param.setdefault(int(index), {})[name] = value
    # JSON turned tuples (AdamW's betas) into lists: give back the type the optimizer uses
    current = optimizer.state_dict()["param_groups"]
    groups = state["optimizer"]["param_groups"]
    if len(groups) != len(current):
        raise OpcircuitsError(
            f"{len(groups)} parameter groups, the model has {len(current)}",
            path=folder / STATE_NAME,
        )
    groups = [
        {k: tuple(v) if isinstance(cur.get(k), tuple) else v for k, v in group.items()}
        for group, cur in zip(groups, current, strict=True)
    ]
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise OpcircuitsError(f"optimizer state does not fit the model: {exc}", path=path) from exc


def load_scheduler(scheduler: Any, folder: Path, state: dict[str, Any]) -> None:
    try:
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, TypeError, ValueError) as exc:
        raise OpcircuitsError(
            f"scheduler state unreadable: {exc}", path=folder / STATE_NAME, field="scheduler"
        ) from exc


def restore_rng(folder: Path, rank: int) -> None:
    """Set this process's RNG states from rng-<rank>.safetensors."""
    path = folder / rng_name(rank)
    tensors, meta = _read_safetensors(path)
    try:
        version, internal, gauss = json.loads(meta["python"])
        python_state = (int(version), tuple(int(x) for x in internal), gauss)
        torch_state = tensors["torch"]
        random.setstate(python_state)
        torch.set_rng_state(torch_state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise OpcircuitsError(f"RNG state unreadable: {exc}", path=path) from exc
    if torch.cuda.is_available():
        cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
