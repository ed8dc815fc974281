"""Forward hooks on the decoder blocks that edit and record one layer's state, and the KV-cache
rewind that lets an intervention rerun only the steps from its first site on.

Layer 0 is a pre-hook on block 1's input; layer l < n block l's output; layer n (the final hidden
state after the final norm) is edited after the forward (`Hooks.final`). At layer 0 an edit sees
and replaces the fed-back vector only: `pos0` (the target's absolute position embedding, GPT-2)
is taken off before it and added back after.

Attention knockouts (`edges.Edge`): a pre-hook on each block's attention module sets the
attention mask it receives to "masked" (−inf, or the dtype's minimum as transformers itself masks,
or False for a boolean mask) at the named key columns, for every query of the forward of a
matching segment (`segment`: the step, or "answer"), on all heads or the named ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from opcircuits.codi.interventions.edges import Edge
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
    elif "tokens_to_remove" in inspect.signature(cache.crop).parameters:
        cache.crop(length - cache.get_seq_length())  # transformers 5.x: minus the count to remove
    else:
        cache.crop(length)  # 4.x: the length to keep


def attention(block: nn.Module) -> nn.Module:
    """A decoder block's self-attention module (LLaMA `self_attn`, GPT-2 `attn`)."""
    for name in ("self_attn", "attn", "attention"):
        mod = getattr(block, name, None)
        if isinstance(mod, nn.Module):
            return mod
    raise OpcircuitsError(f"cannot find the attention module of {type(block).__name__}")


def knock_out(
    mask: torch.Tensor,
    columns: Sequence[int],
    heads: Sequence[int],
    n_heads: int,
    rows: torch.Tensor | None = None,
    n_rows: int | None = None,
):
    """`mask` [B or 1, 1 or H, q, k] with `columns` masked (on `heads` only when given; in the
    rows where `rows` [n_rows] is True only, when given: one intervention of a stacked batch)."""
    B, _, q, k = mask.shape
    B = max(B, n_rows or 0)
    H = n_heads if heads else mask.shape[1]
    blocked = False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min
    where = torch.zeros((1, H, 1, k), dtype=torch.bool, device=mask.device)
    cols = torch.tensor([c for c in columns if c < k], device=mask.device, dtype=torch.long)
    for h in heads or [slice(None)]:
        where[0, h, 0, cols] = True
    if rows is not None:
        where = where & rows.to(mask.device)[:, None, None, None]
    fill = torch.tensor(blocked, dtype=mask.dtype, device=mask.device)
    return torch.where(where, fill, mask.expand(B, H, q, k))


class Hooks:
    """Forward hooks that edit and record the last position's state at chosen layers, and cut
    attention edges."""

    def __init__(self, backbone: nn.Module, num_layers: int) -> None:
        self.n = num_layers
        self.edits: dict[int, Edit] = {}
        self.record: dict[int, torch.Tensor] | None = None
        self.pos0: torch.Tensor | None = None  # [B, D] the target's position embedding
        self.segment: int | str = 0  # the step being run, or "answer"
        # (edge, its key columns, the stacked batch's intervention it cuts or None for all)
        self.knockouts: list[tuple[Edge, range, int | None]] = []
        # Per row of the batch being run, the intervention of a stacked batch it belongs to
        # (`Batch.owner`): knockouts of one intervention cut its rows only.
        self.owner: torch.Tensor | None = None
        mods = blocks(backbone, num_layers)
        self.handles = [mods[0].register_forward_pre_hook(self._pre)]
        for i in range(num_layers - 1):  # output of block i+1 = hidden_states[i+1]
            self.handles.append(mods[i].register_forward_hook(self._post(i + 1)))
        for i, block in enumerate(mods):
            attn = attention(block)
            self.handles.append(attn.register_forward_pre_hook(self._mask(i + 1), with_kwargs=True))
        config = getattr(backbone, "config", None)
        self.n_heads = int(getattr(config, "num_attention_heads", 0) or 0)

    def _apply(self, layer: int, h: torch.Tensor) -> None:
        edit = self.edits.get(layer)
        if edit is not None:
            if layer == 0 and self.pos0 is not None:  # replace only the fed-back vector
                new = edit(h[:, -1] - self.pos0) + self.pos0
            else:
                new = edit(h[:, -1])
            # A stacked batch's edit (`groups.RowEdit`) names the rows it changes: the others
            # keep their state bit for bit (not `(h - pos0) + pos0`).
            rows = getattr(edit, "rows", None)
            h[:, -1] = new if rows is None else torch.where(rows[:, None], new, h[:, -1])
        if self.record is not None:
            self.record[layer] = h[:, -1].clone()

    def _mask(self, block: int):
        def hook(module, args, kwargs):
            cut = [
                (e, cols, g)
                for e, cols, g in self.knockouts
                if e.applies(self.segment) and (not e.layers or block in e.layers)
            ]
            if not cut:
                return None
            mask = kwargs.get("attention_mask")
            if mask is None or mask.dim() != 4:
                raise OpcircuitsError(
                    "attention knockouts need the 4-D attention mask transformers builds "
                    f"(block {block} got {None if mask is None else tuple(mask.shape)})"
                )
            hidden = args[0] if args else kwargs["hidden_states"]
            for e, cols, g in cut:
                rows = None if g is None or self.owner is None else self.owner == g
                mask = knock_out(mask, cols, e.heads, self.n_heads, rows, hidden.shape[0])
            return args, {**kwargs, "attention_mask": mask}

        return hook

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
