"""Feature views: which hidden states (positions × layers) a probe sees, and how they are pooled.

- `cell` views: one (position, layer), named ``"{position}@{layer}"`` — the token × layer map.
- `position` views: one position, the chosen layers concatenated, named after the position
  (``"bot"`` is the pre-thought control; ``"latent_k"`` each latent step).
- `main` views over the latent positions, each with the chosen layers concatenated:
  ``mean`` (mean over latent steps — the earlier analysis's view), ``first``, ``last``, ``concat``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAIN_VIEWS = ("mean", "first", "last", "concat")


@dataclass(frozen=True)
class View:
    name: str
    kind: str  # "cell" | "position" | "main"
    positions: tuple[str, ...]
    layers: tuple[int, ...]
    pool: str  # "none" (concatenate) | "mean"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "positions": list(self.positions),
            "layers": list(self.layers),
            "pool": self.pool,
        }


def latent_positions(positions: Sequence[str]) -> list[str]:
    return [p for p in positions if p.startswith("latent")]


def build_views(positions: Sequence[str], layers: Sequence[int]) -> list[View]:
    """All views for the chosen positions and layers, in a fixed order."""
    layers = tuple(int(x) for x in layers)
    views = [
        View(f"{p}@{layer}", "cell", (p,), (layer,), "none") for p in positions for layer in layers
    ]
    views += [View(p, "position", (p,), layers, "none") for p in positions]
    lat = latent_positions(positions)
    if lat:
        views += [
            View("mean", "main", tuple(lat), layers, "mean"),
            View("first", "main", (lat[0],), layers, "none"),
            View("last", "main", (lat[-1],), layers, "none"),
            View("concat", "main", tuple(lat), layers, "none"),
        ]
    return views


def view_matrix(
    hidden: np.ndarray,
    view: View,
    positions: Sequence[str],
    layers: Sequence[int],
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Feature matrix [N, F] (float32) of `view` from `hidden` [N, P, L, D] ordered as given
    (only `rows` of it, when given)."""
    p_idx = [list(positions).index(p) for p in view.positions]
    l_idx = [list(layers).index(x) for x in view.layers]
    block = hidden[:, p_idx][:, :, l_idx]
    if rows is not None:
        block = block[rows]
    block = np.asarray(block, dtype=np.float32)  # [N, p, l, D]
    if view.pool == "mean":
        block = block.mean(axis=1, keepdims=True)
    return np.ascontiguousarray(block.reshape(block.shape[0], -1))
