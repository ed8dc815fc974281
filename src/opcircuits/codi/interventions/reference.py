"""The reference set: the clean run's states of a set of problems, and what interventions derive
from them (per-site means and mean norms, steering directions, resample and patch sources)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from opcircuits.codi.interventions.spec import Problem
from opcircuits.errors import OpcircuitsError


@dataclass
class Reference:
    """Clean-run states of a set of problems at every step and the chosen layers, and what the
    interventions derive from them (per-site means, mean norms, steering directions).

    `states` [N, K+1, L, D] float32 (CPU), one row per problem of `problems`; `layers` the
    hidden_states indices of axis 2. `mean` and `norm` are over `reference_rows` (the problems of
    the run; extra patch sources such as counterfactual partners are not part of it)."""

    problems: list[Problem]
    states: torch.Tensor
    layers: list[int]
    reference_rows: list[int]
    # [N, K+1, D]: the absolute position embedding layer 0 holds at each step (None: none, as
    # with rotary positions); `content` removes it.
    pos0: torch.Tensor | None = None
    mean: torch.Tensor = field(init=False)  # [K+1, L, D]
    norm: torch.Tensor = field(init=False)  # [K+1, L]
    index: dict[str, int] = field(init=False)  # problem id → row
    directions: dict[str, torch.Tensor] = field(default_factory=dict)  # name → [K+1, L, D] unit
    # erase, erase_random (`erasure`): the seed of the folds and random subspaces, the erasers
    # fitted so far per (step, layer index), and each row's fold (FOLDS: outside the reference)
    erase_seed: int = 0
    erasers: dict = field(default_factory=dict)
    erase_fold: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not torch.isfinite(self.states).all():
            raise OpcircuitsError("the clean run produced NaN or inf hidden states")
        ref = self.states[self.reference_rows]
        self.mean = ref.mean(0)
        self.norm = ref.norm(dim=-1).mean(0)
        self.index = {p.id: i for i, p in enumerate(self.problems)}

    def layer_index(self, layer: int) -> int:
        return self.layers.index(layer)

    def content(self, rows, step: int, li: int) -> torch.Tensor:
        """The states [len(rows), D] of `rows` at a site, without their own position embedding
        at layer 0 (what an edit there replaces: the fed-back vector)."""
        x = self.states[rows, step, li]
        if self.pos0 is not None and self.layers[li] == 0:
            x = x - self.pos0[rows, step]
        return x

    def content_mean(self, step: int, li: int) -> torch.Tensor:
        """The mean over the reference rows of `content` at a site [D]."""
        if self.pos0 is None or self.layers[li] != 0:
            return self.mean[step, li]
        return self.content(self.reference_rows, step, li).mean(0)

    def add_category_direction(self, a: str, b: str) -> None:
        """`diff`: the unit vector from category a's mean to category b's at every site (over the
        reference rows)."""
        rows = np.asarray(self.reference_rows)
        cats = np.asarray([str(self.problems[r].category) for r in rows])
        for c in (a, b):
            if not (cats == c).any():
                raise OpcircuitsError(
                    f"no problem of category {c!r} to build the steering direction",
                    field="steer_categories",
                )
        ma = self.states[rows[cats == a]].mean(0)
        mb = self.states[rows[cats == b]].mean(0)
        self.add_direction("diff", mb - ma)

    def add_random_direction(self, seed: int) -> None:
        """`random`: a seeded Gaussian direction per site (the steering control)."""
        gen = torch.Generator().manual_seed(seed)
        self.add_direction("random", torch.randn(self.mean.shape, generator=gen))

    def add_direction(self, name: str, vectors: torch.Tensor) -> None:
        """A steering direction per site ([K+1, L, D], or [D] for every site), normalized to unit
        length at each site (zero where it is zero)."""
        v = torch.as_tensor(vectors, dtype=torch.float32)
        if v.dim() == 1:
            v = v.expand(self.mean.shape)
        if v.shape != self.mean.shape:
            raise OpcircuitsError(
                f"direction {name!r} has shape {tuple(v.shape)}, expected {tuple(self.mean.shape)}"
                f" or ({self.mean.shape[-1]},)",
                field="direction",
            )
        if not torch.isfinite(v).all():
            raise OpcircuitsError(f"direction {name!r} holds NaN or inf", field="direction")
        n = v.norm(dim=-1, keepdim=True)
        # A site where the direction vanishes is not steered: e.g. `bot` at layer 0, where every
        # problem has the same bot embedding and two category means differ by rounding only.
        tiny = 1e-5 * self.norm[..., None].clamp_min(1e-12)
        self.directions[name] = torch.where(n > tiny, v / n.clamp_min(1e-30), 0.0)


def resample_sources(n: int, seed: int) -> list[int]:
    """For each of n problems, another problem of the set drawn uniformly (seeded)."""
    if n < 2:
        raise OpcircuitsError("resample needs at least two problems", field="kinds")
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, n - 1, size=n)
    return [int(j + (j >= i)) for i, j in enumerate(draw)]  # skip i itself


@dataclass
class Sources:
    """Where `resample` and `patch` take each problem's states from: per reference row, the
    reference row of its source (`patch`: None where a problem has none)."""

    resample: list[int] | None = None
    patch: list[int | None] | None = None
