"""Strict loading: every key of a checkpoint file must be used, and every parameter of the CODI
module must come from it (or, for base weights the file lacks, from the pretrained base). The
earlier scripts' `strict=False` silently ran an unadapted model when key names drifted."""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from opcircuits.codi.model import CodiModel, alias_groups, weight_identity
from opcircuits.codi.weights import listing
from opcircuits.errors import OpcircuitsError

log = logging.getLogger(__name__)

# Deterministic buffers that older transformers versions saved; they carry no learned weights.
LEGACY_BUFFERS = re.compile(r"(\.attn\.(masked_)?bias|rotary_emb\.inv_freq)$")


def own_keys(model: CodiModel) -> set[str]:
    """Keys only a CODI checkpoint can supply: LoRA, the projection, and the resized input
    embedding / LM head (their last three rows are pad, bot and eot, which no base holds)."""
    resized = {weight_identity(model.lm.get_input_embeddings().weight)}
    head = model.lm.get_output_embeddings()
    if head is not None:
        resized.add(weight_identity(head.weight))
    return {
        k
        for k, t in model.state_dict().items()
        if ".lora_" in k or k.startswith("prj.") or weight_identity(t) in resized
    }


def check_unexpected(state: dict[str, Any], weights: dict[str, torch.Tensor], path: Path) -> None:
    unexpected = [k for k in weights if k not in state and not LEGACY_BUFFERS.search(k)]
    if unexpected:
        raise OpcircuitsError(
            f"{len(unexpected)} keys in the checkpoint match nothing in the CODI module "
            f"(wrong base, lora_r or prj settings?): {listing(unexpected)}",
            path=path,
        )


def lacking_keys(model: CodiModel, weights: dict[str, torch.Tensor]) -> list[str]:
    """One key per parameter (tied aliases count once) that `weights` does not hold."""
    return [g[0] for g in alias_groups(model.state_dict()) if not any(k in weights for k in g)]


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
    for group in alias_groups(state):
        present = [k for k in group if k in weights]
        if not present:
            if own.intersection(group):
                missing_own.append(group[0])
            elif not kept.intersection(group):
                missing_base.append(group[0])
            continue
        # The last alias in module order wins, as in the official test.py: load_state_dict
        # copies each into the one shared tensor in that order, then tie_weights keeps it.
        value = weights[present[-1]]
        for other in present[:-1]:
            if not torch.equal(weights[other], value):
                log.warning(
                    "%s differs from its tied alias %s; using the latter", other, present[-1]
                )
        for key in group:
            filled[key] = value
    if missing_own:
        raise OpcircuitsError(
            f"{len(missing_own)} of CODI's own weights (LoRA, projection, or the resized "
            f"embedding / LM head holding the pad, bot and eot rows) are missing from the "
            f"checkpoint: {listing(missing_own)}",
            path=path,
        )
    if missing_base:
        where = "in neither the checkpoint nor the base" if kept else "missing from the checkpoint"
        raise OpcircuitsError(
            f"{len(missing_base)} base weights are {where}: {listing(missing_base)}", path=path
        )
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(state[k].shape)})"
        for k, v in filled.items()
        if tuple(v.shape) != tuple(state[k].shape)
    ]
    if wrong:
        raise OpcircuitsError(
            f"{len(wrong)} weights have the wrong shape (check prj_dim, lora_r and the base): "
            f"{listing(wrong)}",
            path=path,
        )
    with torch.no_grad():
        model.load_state_dict(filled, strict=False)
