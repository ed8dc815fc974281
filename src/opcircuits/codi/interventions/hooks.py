"""Forward hooks on the decoder blocks that edit and record one layer's state, and the KV-cache
rewind that lets an intervention rerun only the steps from its first site on.

Layer 0 is a pre-hook on block 1's input; layer l < n block l's output; layer n (the final hidden
state after the final norm) is edited after the forward (`Hooks.final`).
"""

from __future__ import annotations

import torch
from torch import nn

from opcircuits.codi.interventions.kinds import Edit
from opcircuits.errors import OpcircuitsError


def blocks(backbone: nn.Module, n: int) -> nn.ModuleList:
    """The n decoder blocks of a backbone (LLaMA `layers`, GPT-2 `h`, or `blocks`)."""
    for name in ("layers", "h", "blocks"):
        mods = getattr(backbone, name, None)
        if isinstance(mods, nn.ModuleList) and len(mods) == n:
            return mods
    raise OpcircuitsError(f"cannot find the {n} decoder blocks of {type(backbone).__name__}")


def rewind(cache, length: int) -> None:
    """Make the cache hold its first `length` positions (later ones are overwritten next)."""
    layers = getattr(cache, "layers", None)
    if layers and hasattr(layers[0], "cumulative_length"):
        for layer in layers:
            layer.cumulative_length.fill_(length)
    else:
        cache.crop(length)


class Hooks:
    """Forward hooks that edit and record the last position's state at chosen layers."""

    def __init__(self, backbone: nn.Module, num_layers: int) -> None:
        self.n = num_layers
        self.edits: dict[int, Edit] = {}
        self.record: dict[int, torch.Tensor] | None = None
        mods = blocks(backbone, num_layers)
        self.handles = [mods[0].register_forward_pre_hook(self._pre)]
        for i in range(num_layers - 1):  # output of block i+1 = hidden_states[i+1]
            self.handles.append(mods[i].register_forward_hook(self._post(i + 1)))

    def _apply(self, layer: int, h: torch.Tensor) -> None:
        edit = self.edits.get(layer)
        if edit is not None:
            h[:, -1] = edit(h[:, -1])
        if self.record is not None:
            self.record[layer] = h[:, -1].clone()

    def _pre(self, module, args):
        self._apply(0, args[0])

    def _post(self, layer: int):
        def hook(module, args, output):
            self._apply(layer, output[0] if isinstance(output, tuple) else output)

        return hook

    def final(self, h: torch.Tensor) -> None:
        """The last layer (after the final norm) is edited and recorded after the forward."""
        self._apply(self.n, h)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
