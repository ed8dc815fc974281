"""`hooks.rewind` on a growing cache (transformers' DynamicCache, the loop's cache where no
StaticCache exists and DAS's differentiable one): the first `length` positions are kept, whatever
`crop` means in the installed transformers (5.x: a count to remove; 4.x: the length to keep)."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from opcircuits.codi.interventions.hooks import rewind


def test_rewind_keeps_the_first_positions_of_a_dynamic_cache():
    cache = DynamicCache()
    keys = torch.arange(2 * 3 * 7 * 4, dtype=torch.float32).reshape(2, 3, 7, 4)
    for layer in range(2):
        cache.update(keys + layer, -keys - layer, layer)
    rewind(cache, 5)
    assert cache.get_seq_length() == 5
    k, v = cache.layers[1].keys, cache.layers[1].values
    assert torch.equal(k, keys[:, :, :5] + 1) and torch.equal(v, -keys[:, :, :5] - 1)
