"""Load a CODI checkpoint exactly: presets, hub ids or local dirs, strict key matching.

The earlier scripts loaded with `strict=False`, which silently runs an unadapted model when key
names drift. Here every LoRA and projection weight the module expects must come from the file and
every key in the file must be used; otherwise the error lists the offending keys.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from opcircuits.codi import hub
from opcircuits.codi.config import PRESETS, CodiConfig, Preset, read_config
from opcircuits.codi.model import WEIGHTS_NAME, CodiModel
from opcircuits.errors import OpcircuitsError

log = logging.getLogger(__name__)

BIN_NAME = "pytorch_model.bin"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Deterministic buffers that older transformers versions saved; they carry no learned weights.
LEGACY_BUFFERS = re.compile(r"(\.attn\.(masked_)?bias|rotary_emb\.inv_freq)$")
MAX_LISTED = 20


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
        if model == "demo" and not ckpt_dir.is_dir():
            raise OpcircuitsError(
                f"the demo model is not installed at {ckpt_dir}; train it with `opcircuits train` "
                "or choose --model codi-gpt2 / codi-llama3.2-1b / --checkpoint DIR --base DIR"
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
    weights_path = find_weights(ckpt_dir)
    if weights is None:
        weights = read_weights(weights_path)

    data: dict[str, Any] = {}
    if preset is not None:
        data.update(base=preset.base, **preset.config)
        if preset.layers is not None:
            data["layers"] = list(preset.layers)
    data.update(infer_config(weights))
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
    config = CodiConfig.from_dict(data, path=ckpt_dir / "codi_config.json").replace(**overrides)
    base_dir = _locate_base(config.base, ckpt_dir, base_relative)
    resolved = Resolved(model, ckpt, ckpt_dir, weights_path, config.base, base_dir, config)
    return resolved, weights


def _no_init():
    """transformers' context that skips random init of weights we overwrite anyway."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def _weights_source(resolved: Resolved) -> Path | str:
    """The base's local dir when it holds weights, else its hub id (from_pretrained fetches)."""
    has = any(resolved.base_dir.glob("*.safetensors")) or any(resolved.base_dir.glob("*.bin"))
    if has or not hub.looks_like_repo_id(resolved.base):
        return resolved.base_dir
    return resolved.base


def _build(config: CodiConfig, base_dir: Path | str, pretrained: bool) -> CodiModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        base_config = AutoConfig.from_pretrained(base_dir)
        # GPT-2's "gelu_new" is the tanh-approximated GELU written as five separate tensor ops;
        # torch's fused kernel computes the same function (equal to ~1e-7) several times faster.
        if getattr(base_config, "activation_function", None) == "gelu_new":
            base_config.activation_function = "gelu_pytorch_tanh"
        if pretrained:
            log.info("loading the base's pretrained weights from %s", base_dir)
            base_model = AutoModelForCausalLM.from_pretrained(
                base_dir, config=base_config, dtype=torch.float32
            )
        else:
            with _no_init():
                base_model = AutoModelForCausalLM.from_config(base_config, dtype=torch.float32)
            base_model.tie_weights()
    except OSError as exc:
        raise OpcircuitsError(f"cannot load the base model: {exc}; {hub.LOCAL_HINT}") from exc
    return CodiModel.from_base(config, base_model, mean_resizing=False)


def _alias_groups(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """Keys of the module's state dict grouped by shared storage (tied embeddings share one)."""
    groups: dict[tuple, list[str]] = {}
    for key, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        groups.setdefault(ident if tensor.numel() else (key,), []).append(key)
    return list(groups.values())


def _listing(keys: list[str]) -> str:
    more = f" … and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return ", ".join(keys[:MAX_LISTED]) + more


def _is_adapter(key: str) -> bool:
    return ".lora_" in key or key.startswith("prj.")


def check_unexpected(state: dict[str, Any], weights: dict[str, torch.Tensor], path: Path) -> None:
    unexpected = [k for k in weights if k not in state and not LEGACY_BUFFERS.search(k)]
    if unexpected:
        raise OpcircuitsError(
            f"{len(unexpected)} keys in the checkpoint match nothing in the CODI module "
            f"(wrong base, lora_r or prj settings?): {_listing(unexpected)}",
            path=path,
        )


def load_weights_strict(
    model: CodiModel, weights: dict[str, torch.Tensor], *, path: Path, allow_missing_base: bool
) -> list[str]:
    """Copy `weights` into `model`. Returns the base keys the file lacks (kept as they are)."""
    state = model.state_dict()
    check_unexpected(state, weights, path)
    filled: dict[str, torch.Tensor] = {}
    missing_adapter: list[str] = []
    missing_base: list[str] = []
    for group in _alias_groups(state):
        present = [k for k in group if k in weights]
        if not present:
            (missing_adapter if any(map(_is_adapter, group)) else missing_base).append(group[0])
            continue
        value = weights[present[0]]
        for other in present[1:]:
            if not torch.equal(weights[other], value):
                log.warning(
                    "%s differs from its tied alias %s; using the latter", other, present[0]
                )
        for key in group:
            filled[key] = value
    if missing_adapter:
        raise OpcircuitsError(
            f"{len(missing_adapter)} LoRA/projection weights are missing from the checkpoint: "
            f"{_listing(missing_adapter)}",
            path=path,
        )
    if missing_base and not allow_missing_base:
        raise OpcircuitsError(
            f"{len(missing_base)} base weights missing: {_listing(missing_base)}", path=path
        )
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(state[k].shape)})"
        for k, v in filled.items()
        if tuple(v.shape) != tuple(state[k].shape)
    ]
    if wrong:
        raise OpcircuitsError(
            f"{len(wrong)} weights have the wrong shape (check prj_dim, lora_r and the base): "
            f"{_listing(wrong)}",
            path=path,
        )
    with torch.no_grad():
        model.load_state_dict(filled, strict=False)
    return missing_base


def load_codi(
    model: str | Path = "demo",
    *,
    checkpoint: str | Path | None = None,
    base: str | Path | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "auto",
    merge: bool = True,
    **config_overrides: Any,
) -> tuple[CodiModel, Any]:
    """Load a CODI model and its tokenizer, ready for inference (eval mode).

    `model` is a preset (`demo`, `codi-gpt2`, `codi-llama3.2-1b`), a hub id or a checkpoint dir;
    `checkpoint` (a local dir) replaces the preset's location while keeping its defaults. Weights
    are loaded strictly in fp32, LoRA merged unless `merge=False`, then cast to `dtype`.
    The returned model carries `.source` (a `Resolved`) for provenance.
    """
    from transformers import AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    resolved, weights = resolve(model, checkpoint=checkpoint, base=base, **config_overrides)
    codi = _build(resolved.config, resolved.base_dir, pretrained=False)
    check_unexpected(codi.state_dict(), weights, resolved.weights_path)
    # A checkpoint holding every base weight needs only the base's config and tokenizer.
    pretrained = any(
        not any(k in weights for k in group) and not any(map(_is_adapter, group))
        for group in _alias_groups(codi.state_dict())
    )
    if pretrained:
        log.info("the checkpoint lacks some base weights; loading them from %s", resolved.base)
        codi = _build(resolved.config, _weights_source(resolved), pretrained=True)
    lacking = load_weights_strict(
        codi, weights, path=resolved.weights_path, allow_missing_base=pretrained
    )
    if lacking:
        log.info("%d base weights taken from the pretrained base %s", len(lacking), resolved.base)
    del weights
    codi.eval()
    if merge:
        codi.merge_lora()
    codi.to(device=torch_device, dtype=torch_dtype)
    codi.source = resolved
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.base_dir)
    except (OSError, ValueError) as exc:
        raise OpcircuitsError(f"cannot load the tokenizer: {exc}", path=resolved.base_dir) from exc
    return codi, tokenizer
