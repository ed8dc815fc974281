"""Load a CODI checkpoint exactly: presets, hub ids or local dirs, strict key matching.

The earlier scripts loaded with `strict=False`, which silently runs an unadapted model when key
names drift. Here every parameter of the loaded module comes from a file: CODI's own weights (LoRA,
the projection, and the resized embedding / LM head whose last rows are pad, bot and eot) from the
checkpoint, and the base model's own weights from the checkpoint or, only when it lacks them and
the base really holds them, from the base (logged with the count). Every key in the file must be
used, and every weight must be finite; otherwise the error lists the offending keys.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from opcircuits.codi import hub
from opcircuits.codi.config import CONFIG_NAME, PRESETS, CodiConfig, Preset, read_config
from opcircuits.codi.model import WEIGHTS_NAME, CodiModel
from opcircuits.errors import OpcircuitsError
from opcircuits.files import read_json_object

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


def check_finite(tensors: dict[str, torch.Tensor], path: Path | str) -> None:
    """Every floating-point weight is finite (NaN/inf would flow silently into every thought)."""
    bad = [
        k
        for k, t in tensors.items()
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise OpcircuitsError(
            f"{len(bad)} weights hold NaN or inf values: {_listing(bad)}", path=path
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
    config = CodiConfig.from_dict(data, path=ckpt_dir / CONFIG_NAME).replace(**overrides)
    declared = set(file_config) | {k for k, v in overrides.items() if v is not None}
    if preset is not None:
        declared |= set(preset.config)
    _require_declared(config, declared, ckpt_dir)
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


def _has_weight_files(directory: Path) -> bool:
    return any(directory.glob("*.safetensors")) or any(directory.glob("*.bin"))


def _weights_source(resolved: Resolved) -> Path | str:
    """The base's local dir when it holds weights, else its hub id (from_pretrained fetches)."""
    if _has_weight_files(resolved.base_dir) or not hub.looks_like_repo_id(resolved.base):
        return resolved.base_dir
    return resolved.base


def base_config(base_dir: Path) -> Any:
    """The base's transformers config; a folder that is not a model, or a `config.json` with a
    value of the wrong type, is an error naming the file and field."""
    from transformers import AutoConfig

    path = Path(base_dir) / "config.json"
    if not path.is_file():
        held = sorted(p.name for p in Path(base_dir).iterdir())[:10] if base_dir.is_dir() else []
        raise OpcircuitsError(
            f"not a model folder: no config.json (it holds {held})", path=base_dir, field="base"
        )
    raw = read_json_object(path)
    if not isinstance(raw.get("model_type"), str):
        raise OpcircuitsError(
            "missing or not a string (the transformers architecture, e.g. llama)",
            path=path,
            field="model_type",
        )
    try:
        config = AutoConfig.from_pretrained(base_dir)
    except Exception as exc:  # transformers' validation errors have no common base class
        message = str(exc).splitlines()
        field = re.search(r"field '(\w+)'", message[0]) if message else None
        detail = " ".join(x.strip() for x in message[1:2]) or (message[0] if message else "")
        raise OpcircuitsError(
            f"not a valid model config: {detail or type(exc).__name__}",
            path=path,
            field=field.group(1) if field else None,
        ) from exc
    # GPT-2's "gelu_new" is the tanh-approximated GELU written as five separate tensor ops;
    # torch's fused kernel computes the same function (equal to ~1e-7) several times faster.
    if getattr(config, "activation_function", None) == "gelu_new":
        config.activation_function = "gelu_pytorch_tanh"
    return config


def _build(
    config: CodiConfig, base_dir: Path, weights_source: Path | str | None = None
) -> tuple[CodiModel, set[int]]:
    """The CODI module on the base's architecture. Without `weights_source` its weights are left
    uninitialized (every one is then copied from a file); with it, the base's pretrained weights
    are loaded from there. Also returns the storage pointers of the base parameters that source
    did NOT hold (transformers initializes those randomly: they must not be used)."""
    from transformers import AutoModelForCausalLM

    hf_config = base_config(base_dir)
    absent: set[int] = set()
    try:
        if weights_source is not None:
            log.info("loading the base's pretrained weights from %s", weights_source)
            base_model, info = AutoModelForCausalLM.from_pretrained(
                weights_source, config=hf_config, dtype=torch.float32, output_loading_info=True
            )
            state = base_model.state_dict()
            not_loaded = set(info.get("missing_keys", ())) | {
                m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys", ())
            }
            absent = {state[k].data_ptr() for k in not_loaded if k in state}
        else:
            with _no_init():
                base_model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
            base_model.tie_weights()
    except OSError as exc:
        raise OpcircuitsError(f"cannot load the base model: {exc}; {hub.LOCAL_HINT}") from exc
    except (ValueError, TypeError, RuntimeError) as exc:
        raise OpcircuitsError(
            f"cannot build the base model: {type(exc).__name__}: {str(exc).splitlines()[0]}",
            path=Path(base_dir) / "config.json",
        ) from exc
    return CodiModel.from_base(config, base_model, mean_resizing=False), absent


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


def own_keys(model: CodiModel) -> set[str]:
    """Keys only a CODI checkpoint can supply: LoRA, the projection, and the resized input
    embedding / LM head (their last three rows are pad, bot and eot, which no base holds)."""
    resized = {model.lm.get_input_embeddings().weight.data_ptr()}
    head = model.lm.get_output_embeddings()
    if head is not None:
        resized.add(head.weight.data_ptr())
    return {
        k
        for k, t in model.state_dict().items()
        if ".lora_" in k or k.startswith("prj.") or t.data_ptr() in resized
    }


def check_unexpected(state: dict[str, Any], weights: dict[str, torch.Tensor], path: Path) -> None:
    unexpected = [k for k in weights if k not in state and not LEGACY_BUFFERS.search(k)]
    if unexpected:
        raise OpcircuitsError(
            f"{len(unexpected)} keys in the checkpoint match nothing in the CODI module "
            f"(wrong base, lora_r or prj settings?): {_listing(unexpected)}",
            path=path,
        )


def lacking_keys(model: CodiModel, weights: dict[str, torch.Tensor]) -> list[str]:
    """One key per parameter (tied aliases count once) that `weights` does not hold."""
    return [g[0] for g in _alias_groups(model.state_dict()) if not any(k in weights for k in g)]


def load_weights_strict(
    model: CodiModel,
    weights: dict[str, torch.Tensor],
    *,
    path: Path,
    from_base: Collection[str] = (),
) -> None:
    """Copy `weights` into `model`, strictly: every key of the file must be used, and every
    parameter must come from it, except the base weights in `from_base` (already loaded from the
    base). CODI's own weights (`own_keys`) always come from the file."""
    state = model.state_dict()
    check_unexpected(state, weights, path)
    own = own_keys(model)
    filled: dict[str, torch.Tensor] = {}
    missing_own: list[str] = []
    missing_base: list[str] = []
    kept = set(from_base)
    for group in _alias_groups(state):
        present = [k for k in group if k in weights]
        if not present:
            if own.intersection(group):
                missing_own.append(group[0])
            elif not kept.intersection(group):
                missing_base.append(group[0])
            continue
        value = weights[present[0]]
        for other in present[1:]:
            if not torch.equal(weights[other], value):
                log.warning(
                    "%s differs from its tied alias %s; using the latter", other, present[0]
                )
        for key in group:
            filled[key] = value
    if missing_own:
        raise OpcircuitsError(
            f"{len(missing_own)} of CODI's own weights (LoRA, projection, or the resized "
            f"embedding / LM head holding the pad, bot and eot rows) are missing from the "
            f"checkpoint: {_listing(missing_own)}",
            path=path,
        )
    if missing_base:
        where = "in neither the checkpoint nor the base" if kept else "missing from the checkpoint"
        raise OpcircuitsError(
            f"{len(missing_base)} base weights are {where}: {_listing(missing_base)}", path=path
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


def _with_base_weights(resolved: Resolved, lacking: list[str]) -> tuple[CodiModel, list[str]]:
    """Rebuild the module with the base's pretrained weights; returns it and the keys of
    `lacking` the base really held (the others stay missing, and loading then fails)."""
    source = _weights_source(resolved)
    if isinstance(source, Path) and not _has_weight_files(source):
        raise OpcircuitsError(
            f"{len(lacking)} base weights are missing from the checkpoint, and the base "
            f"{source} holds no weights to take them from: {_listing(lacking)}",
            path=resolved.weights_path,
        )
    codi, absent = _build(resolved.config, resolved.base_dir, weights_source=source)
    state = codi.state_dict()
    held = [k for k in lacking if state[k].data_ptr() not in absent]
    check_finite({k: state[k] for k in held}, source)
    return codi, held


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
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    resolved, weights = resolve(model, checkpoint=checkpoint, base=base, **config_overrides)
    check_finite(weights, resolved.weights_path)
    codi, _ = _build(resolved.config, resolved.base_dir)
    check_unexpected(codi.state_dict(), weights, resolved.weights_path)
    own = own_keys(codi)
    # A checkpoint holding every base weight needs only the base's config and tokenizer.
    lacking = [k for k in lacking_keys(codi, weights) if k not in own]
    from_base: list[str] = []
    if lacking:
        log.info("the checkpoint lacks %d base weights; looking in %s", len(lacking), resolved.base)
        codi, from_base = _with_base_weights(resolved, lacking)
    load_weights_strict(codi, weights, path=resolved.weights_path, from_base=from_base)
    if from_base:
        log.info("%d base weights taken from the pretrained base %s", len(from_base), resolved.base)
    del weights
    codi.eval()
    if merge:
        codi.merge_lora()
    codi.to(device=torch_device, dtype=torch_dtype)
    codi.source = resolved
    return codi, load_tokenizer(resolved.base_dir)


def load_tokenizer(base_dir: Path) -> Any:
    """The base's tokenizer; an empty or broken `tokenizer.json` is an error naming the file."""
    from transformers import AutoTokenizer

    path = Path(base_dir) / "tokenizer.json"
    if path.is_file():
        if path.stat().st_size == 0:
            raise OpcircuitsError("empty file: the tokenizer is missing", path=path)
        read_json_object(path)  # not JSON → an error naming the line
    try:
        return AutoTokenizer.from_pretrained(base_dir)
    except Exception as exc:  # tokenizers raises plain Exceptions for malformed files
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise OpcircuitsError(
            f"cannot load the tokenizer: {type(exc).__name__}: {first}", path=base_dir
        ) from exc
