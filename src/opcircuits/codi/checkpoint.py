"""Load a CODI checkpoint exactly: presets, hub ids or local dirs, strict key matching.

The earlier scripts loaded with `strict=False`, which silently runs an unadapted model when key
names drift. Here every parameter of the loaded module comes from a file: CODI's own weights (LoRA,
the projection, and the resized embedding / LM head whose last rows are pad, bot and eot) from the
checkpoint, and the base model's own weights from the checkpoint or, only when it lacks them and
the base really holds them, from the base (logged with the count). Every key in the file must be
used, and every weight must be finite; otherwise the error lists the offending keys.

The pieces: `resolve.py` (presets, folders, the config; dtype and device names), `weights.py`
(the weight files, sharded or not), `adapter.py` (peft adapters), `keymap.py` (older key
spellings), `strict.py` (the strict copy into the module); here, building the module on its base
and `load_codi`, which chains them. Their names are importable from here too.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any

import torch

from opcircuits.codi import hub
from opcircuits.codi.config import CodiConfig
from opcircuits.codi.keymap import check_renamed_used, rename_for_module
from opcircuits.codi.model import CodiModel
from opcircuits.codi.resolve import (
    DTYPES,
    MUST_DECLARE,
    Resolved,
    resolve,
    resolve_device,
    resolve_dtype,
)
from opcircuits.codi.strict import (
    LEGACY_BUFFERS,
    check_unexpected,
    lacking_keys,
    load_weights_strict,
    own_keys,
)
from opcircuits.codi.weights import (
    BIN_NAME,
    check_finite,
    find_weights,
    infer_config,
    listing,
    read_weights,
)
from opcircuits.errors import OpcircuitsError
from opcircuits.files import read_json_object

log = logging.getLogger(__name__)

__all__ = [
    "BIN_NAME",
    "DTYPES",
    "LEGACY_BUFFERS",
    "MUST_DECLARE",
    "Resolved",
    "base_config",
    "check_finite",
    "check_unexpected",
    "find_weights",
    "infer_config",
    "lacking_keys",
    "load_codi",
    "load_tokenizer",
    "load_weights_strict",
    "own_keys",
    "read_weights",
    "resolve",
    "resolve_device",
    "resolve_dtype",
    "skeleton",
]


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
    if path.stat().st_size == 0:  # as in some hub repos of released checkpoints
        raise OpcircuitsError(
            "empty file (0 bytes): not the base's config; pass the base model with --base",
            path=path,
            field="base",
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


def skeleton(config: CodiConfig, base_dir: Path) -> CodiModel:
    """The CODI module on the base's architecture, weights uninitialized: the keys, shapes and
    tying a checkpoint must match (what `opcircuits doctor` inspects)."""
    return _build(config, base_dir)[0]


def _with_base_weights(resolved: Resolved, lacking: list[str]) -> tuple[CodiModel, list[str]]:
    """Rebuild the module with the base's pretrained weights; returns it and the keys of
    `lacking` the base really held (the others stay missing, and loading then fails)."""
    source = _weights_source(resolved)
    if isinstance(source, Path) and not _has_weight_files(source):
        raise OpcircuitsError(
            f"{len(lacking)} base weights are missing from the checkpoint, and the base "
            f"{source} holds no weights to take them from: {listing(lacking)}",
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
    keys = codi.state_dict().keys()
    weights, resolved.renamed = rename_for_module(
        weights, keys, resolved.weights_path, resolved.renamed
    )
    check_renamed_used(weights, keys, resolved.renamed, resolved.weights_path)
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
