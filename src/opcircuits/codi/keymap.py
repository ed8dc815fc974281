"""Older spellings of a CODI checkpoint's keys, mapped to the module's by an explicit table.

The official training script saves its `CODI` module's state dict (`codi.base_model.model.…`,
`prj.…`); what the keys look like depends on the peft version it ran with and on the module's
name at the time. Each rule below says where its spelling comes from; a key no rule maps onto a
parameter of the module stays as it is, and strict loading then names it. Nothing is guessed:
a rule applies only when its result is a key of the module and no other key of the file has it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch

from opcircuits.codi.weights import listing
from opcircuits.errors import OpcircuitsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    replacement: str
    needs_module: bool  # whether the result must be checked against the module's keys
    source: str  # where the spelling comes from


RULES: tuple[Rule, ...] = (
    Rule(
        "coconut prefix",
        re.compile(r"^coconut\."),
        "codi.",
        False,
        "the official code's earlier module name (its test.py keeps the commented rename)",
    ),
    Rule(
        "peft adapter prefix",
        re.compile(r"^base_model\.model\."),
        "codi.base_model.model.",
        False,
        "peft's save_pretrained: the adapter file's keys start at the peft model",
    ),
    Rule(
        "adapter name dropped",
        re.compile(r"\.(lora_[AB])\.weight$"),
        r".\1.default.weight",
        False,
        "peft's save_pretrained drops the adapter name ('default') from LoRA keys",
    ),
    Rule(
        "no base_layer",
        re.compile(r"\.(weight|bias)$"),
        r".base_layer.\1",
        True,
        "peft < 0.7.0 kept a LoRA-wrapped layer's own weight beside lora_A/lora_B",
    ),
)


def _apply(
    weights: dict[str, torch.Tensor],
    origin: dict[str, str],
    rules: tuple[Rule, ...],
    module_keys: Collection[str] | None,
    path: Path,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    out: dict[str, torch.Tensor] = {}
    new_origin = dict(origin)
    counts: dict[str, int] = {}
    for key, value in weights.items():
        target = key
        if module_keys is None or key not in module_keys:
            for rule in rules:
                candidate = rule.pattern.sub(rule.replacement, target)
                if candidate == target:
                    continue
                if module_keys is not None and candidate not in module_keys:
                    continue
                counts[rule.name] = counts.get(rule.name, 0) + 1
                target = candidate
        if target in out or (target != key and target in weights):
            raise OpcircuitsError(
                f"two keys of the file mean the same weight {target}: "
                f"{origin.get(key, key)} and {origin.get(target, target)}",
                path=path,
            )
        out[target] = value
        if target != key:
            new_origin[target] = new_origin.pop(key, key)
    if counts:
        log.info(
            "%s: read older key spellings (%s)",
            path.name,
            ", ".join(f"{n}: {c} keys" for n, c in counts.items()),
        )
    return out, new_origin


def rename_static(
    weights: dict[str, torch.Tensor], path: Path, origin: dict[str, str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The renames that need no module (prefixes, the adapter name), before the config is read
    off the keys. Returns the weights and, for each renamed key, its spelling in the file."""
    rules = tuple(r for r in RULES if not r.needs_module)
    return _apply(weights, dict(origin or {}), rules, None, path)


def rename_for_module(
    weights: dict[str, torch.Tensor],
    module_keys: Collection[str],
    path: Path,
    origin: dict[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The renames whose result must be a key of the built module (peft's `base_layer`)."""
    rules = tuple(r for r in RULES if r.needs_module)
    return _apply(weights, dict(origin or {}), rules, set(module_keys), path)


def check_renamed_used(
    weights: dict[str, torch.Tensor],
    module_keys: Collection[str],
    origin: dict[str, str],
    path: Path,
) -> None:
    """A renamed key that still matches nothing is named as the file spells it."""
    keys = set(module_keys)
    unused = [f"{origin[k]} (read as {k})" for k in weights if k in origin and k not in keys]
    if unused:
        raise OpcircuitsError(
            f"{len(unused)} keys in the checkpoint match nothing in the CODI module: "
            f"{listing(unused)}",
            path=path,
        )
