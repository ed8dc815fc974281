"""The batches of CODI training: padding one micro-batch (`collate`) and which examples each
process sees at each step (`batch_indices`, a seeded order that depends only on the step)."""

from __future__ import annotations

import functools

import torch

from opcircuits.codi.training.examples import IGNORE, TokenExample
from opcircuits.options import TrainOptions


def collate(examples: list[TokenExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad one micro-batch: encoder on the left (the latent loop appends after it), teacher and
    decoder on the right (their labels and gather positions stay put)."""

    def pad(seqs: list[list[int]], value: int, left: bool) -> torch.Tensor:
        width = max(len(s) for s in seqs)
        rows = [
            ([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s)))
            for s in seqs
        ]
        return torch.tensor(rows, dtype=torch.long)

    enc = [e.encoder_ids for e in examples]
    dec = [e.decoder_ids for e in examples]
    tea = [e.teacher_ids for e in examples]
    out = {
        "encoder_ids": pad(enc, pad_id, left=True),
        "encoder_mask": pad([[1] * len(s) for s in enc], 0, left=True),
        "decoder_ids": pad(dec, pad_id, left=False),
        "decoder_mask": pad([[1] * len(s) for s in dec], 0, left=False),
        "decoder_labels": pad(dec, IGNORE, left=False),
        "teacher_ids": pad(tea, pad_id, left=False),
        "teacher_mask": pad([[1] * len(s) for s in tea], 0, left=False),
        "teacher_labels": pad([e.teacher_labels for e in examples], IGNORE, left=False),
        "teacher_pos": torch.tensor([e.teacher_pos for e in examples], dtype=torch.long),
        "student_pos": torch.tensor([e.student_pos for e in examples], dtype=torch.long),
    }
    if examples[0].step_ids:
        out["step_ids"] = torch.tensor([list(e.step_ids) for e in examples], dtype=torch.long)
    return out


def batch_indices(
    n: int, step: int, micro: int, rank: int, options: TrainOptions, world: int
) -> list[int]:
    """Example indices of (optimizer step, micro-step, process): a seeded permutation per epoch,
    consumed as one endless stream, so the data order depends only on the seed and the step."""
    per_step = options.batch_size * options.grad_accum * world
    start = step * per_step + (micro * world + rank) * options.batch_size
    out = []
    for pos in range(start, start + options.batch_size):
        epoch, i = divmod(pos, n)
        out.append(int(_permutation(n, options.seed, epoch)[i]))
    return out


@functools.lru_cache(maxsize=2)
def _permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The example order of one epoch (memoised: a step only ever needs this or the next one)."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen)
