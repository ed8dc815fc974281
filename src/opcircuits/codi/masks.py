"""Which keys a segment of the latent loop may attend to: the routing options of a CODI config.

The loop runs each segment (the prompt, one thought, the answer) as its own forward over the KV
cache with a 2-D key mask, so "these queries may not read the prompt" is that forward's mask with
the prompt's columns (question + bot) set to 0. Training, `latent.run_batch` and the
interventions engine all build their masks here, so a model is run as it was trained.
"""

from __future__ import annotations

import torch

from opcircuits.codi.config import CodiConfig


def without_prompt(mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """`mask` [B, L] with its first `prompt_len` columns (question + bot) masked."""
    out = mask.clone()
    out[:, :prompt_len] = 0
    return out


def thought_mask(config: CodiConfig, mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """The key mask of a thought step (the prompt masked when thoughts may not read it)."""
    return mask if config.thoughts_read_prompt else without_prompt(mask, prompt_len)


def answer_mask(config: CodiConfig, mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """The key mask of eot and the answer tokens (the prompt masked in a bottleneck model)."""
    return mask if config.answer_reads_prompt else without_prompt(mask, prompt_len)
