"""A random-model baseline: the same CODI architecture with every weight drawn afresh (seeded).

What probes find in such a model's thoughts is what the architecture and the input give without
any training; a trained model's probes are compared against it. Matrices (and embeddings) are
drawn from N(0, initializer_range²) as the transformers LMs initialize them, biases are zero and
norm weights one; the projection gets PyTorch's default initialization. Values are drawn on the
CPU from one seeded generator in parameter order, so the model is the same on any device.
"""

from __future__ import annotations

import torch
from torch import nn

from opcircuits.codi.model import CodiModel


@torch.no_grad()
def reinitialize(model: CodiModel, seed: int) -> CodiModel:
    """Re-draw every parameter of `model` in place (tied weights stay tied); return it."""
    gen = torch.Generator().manual_seed(int(seed))
    std = float(getattr(model.lm.config, "initializer_range", None) or 0.02)
    for name, param in model.codi.named_parameters():
        if name.endswith("bias"):
            fresh = torch.zeros(param.shape)
        elif param.dim() >= 2:
            fresh = torch.empty(param.shape).normal_(0.0, std, generator=gen)
        else:  # the weight of a norm layer
            fresh = torch.ones(param.shape)
        param.copy_(fresh.to(dtype=param.dtype))
    for module in model.prj.modules():
        if isinstance(module, nn.Linear):
            bound = 1.0 / module.in_features**0.5  # nn.Linear's default, from our generator
            module.weight.copy_(_uniform(module.weight.shape, bound, gen).to(module.weight.dtype))
            module.bias.copy_(_uniform(module.bias.shape, bound, gen).to(module.bias.dtype))
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
    return model


def _uniform(shape: torch.Size, bound: float, gen: torch.Generator) -> torch.Tensor:
    return torch.empty(shape).uniform_(-bound, bound, generator=gen)
