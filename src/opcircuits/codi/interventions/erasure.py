"""Concept erasure at a site: LEACE (`erase`) and its control, a random subspace (`erase_random`).

`erase` replaces the state h at a site by LEACE's affine edit (Belrose et al. 2023, "LEACE:
Perfect linear concept erasure in closed form"; `concept_erasure.LeaceFitter`), fitted on the
reference states at that site against the one-hot operation category: afterwards no linear
classifier of the category does better than a constant one on the fitted states, and the
edit is the least-squares smallest that does so. `erase_random` is its control: the orthogonal
projection onto the complement of a seeded random subspace of the same rank, centred on the
same mean (h − m)·(I − QQᵀ) + m, so both move the state about the same mean and differ only in
which directions they remove.

Cross-fitting. The reference set is the problems the sweep evaluates, so an eraser fitted on it
would have seen each evaluated problem's own label. The reference rows are split into `FOLDS`
folds (seeded, stratified by category); each problem's state is edited by the eraser fitted
on the other folds (its own label never enters the fit that edits it). Rows outside the
reference set (counterfactual partners, which no intervention evaluates) get the eraser fitted
on every reference row.

Both edits are h − ((h − m) Rᵀ) Lᵀ with L, R of shape [D, C] (C = the number of categories;
LEACE's rank is at most C − 1), stored per fold, so a site costs O(D·C) memory per fold.
LEACE is fitted exactly (`constrain_cov_trace=False`: the package's trace constraint mixes in
a projection that no longer guarantees erasure), in float64.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from opcircuits.errors import OpcircuitsError

FOLDS = 5  # cross-fitting folds of the reference rows
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Erasers:
    """One site's erasers, one per fold plus one fitted on every reference row (index FOLDS):
    `left`, `right` [F+1, D, C], `mean` [F+1, D], `rank` [F+1] (LEACE's rank; the random
    subspace has the same)."""

    leace: tuple[torch.Tensor, torch.Tensor]
    random: tuple[torch.Tensor, torch.Tensor]
    mean: torch.Tensor
    rank: list[int]


def folds(categories: Sequence[str], n_folds: int, seed: int) -> np.ndarray:
    """A fold per item, stratified by category: within each category, a seeded permutation dealt
    round-robin over the folds."""
    cats = np.asarray(categories)
    out = np.empty(len(cats), dtype=np.int64)
    rng = np.random.default_rng([seed, 22])
    for k, c in enumerate(sorted(set(cats.tolist()))):
        members = np.flatnonzero(cats == c)
        start = k % n_folds  # small categories do not all land in fold 0
        out[rng.permutation(members)] = (start + np.arange(len(members))) % n_folds
    return out


def _leace(x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LEACE fitted on x [n, D] against one-hot z [n, C]: (left [D, C], right [D, C], mean)."""
    from concept_erasure import LeaceFitter

    fitter = LeaceFitter(x.shape[1], z.shape[1], dtype=torch.float64, constrain_cov_trace=False)
    eraser = fitter.update(x, z).eraser
    return eraser.proj_left, eraser.proj_right.mH, fitter.mean_x.clone()


def _random_basis(d: int, rank: int, c: int, gen: torch.Generator) -> torch.Tensor:
    """An orthonormal basis [D, C] of a uniformly random rank-dimensional subspace (columns
    beyond `rank` zero)."""
    out = torch.zeros(d, c, dtype=torch.float64)
    if rank:
        q, r = torch.linalg.qr(torch.randn(d, rank, generator=gen, dtype=torch.float64))
        out[:, :rank] = q * torch.sign(torch.diagonal(r))  # Haar-uniform (sign-fixed QR)
    return out


def fit_site(x: torch.Tensor, labels: Sequence[str], fold: np.ndarray, seed: int) -> Erasers:
    """The erasers of one site from the reference rows' states x [n, D], their categories and
    folds: per fold the fit on the other folds, then (index FOLDS) the fit on all."""
    cats = sorted(set(labels))
    z = torch.zeros(len(labels), len(cats), dtype=torch.float64)
    z[torch.arange(len(labels)), torch.tensor([cats.index(c) for c in labels])] = 1.0
    x = x.double()
    d, c = x.shape[1], len(cats)
    gen = torch.Generator().manual_seed(seed)
    parts: list[tuple[torch.Tensor, ...]] = []
    ranks = []
    for f in [*range(FOLDS), FOLDS]:
        train = torch.from_numpy(fold != f)
        if int(train.sum()) < 2:
            raise OpcircuitsError(
                f"erase: {int(train.sum())} reference problems to fit on; need at least 2 "
                f"outside each of the {FOLDS} folds",
                field="kinds",
            )
        left, right, mean = _leace(x[train], z[train])
        rank = int((right.norm(dim=0) > 0).sum())  # LEACE zeroes the columns it truncates
        q = _random_basis(d, rank, c, gen)
        parts.append((left, right, q, mean))
        ranks.append(rank)
    left, right, q, mean = (torch.stack(t) for t in zip(*parts, strict=True))
    for t in (left, right, mean):
        if not torch.isfinite(t).all():
            raise OpcircuitsError("erase: the LEACE fit produced NaN or inf", field="kinds")
    return Erasers((left, right), (q, q), mean, ranks)


def site_erasers(ref, step: int, li: int) -> Erasers:
    """The erasers of a site of `ref` (a `Reference`), fitted once and kept on it."""
    key = (step, li)
    if key not in ref.erasers:
        rows = list(ref.reference_rows)
        labels = [ref.problems[r].category for r in rows]
        missing = [ref.problems[r].id for r, c in zip(rows, labels, strict=True) if c is None]
        if missing:
            raise OpcircuitsError(
                f"erase needs each problem's category; {len(missing)} have none "
                f"({', '.join(missing[:5])})",
                field="category",
            )
        names = [str(c) for c in labels]
        fold = folds(names, FOLDS, ref.erase_seed)
        where = np.full(len(ref.problems), FOLDS, dtype=np.int64)
        where[rows] = fold
        ref.erase_fold = where
        # The random subspace's seed names the site (not its index among the sweep's layers).
        seed = int(np.random.default_rng([ref.erase_seed, step, ref.layers[li]]).integers(2**62))
        ref.erasers[key] = fit_site(ref.content(rows, step, li), names, fold, seed)
        ranks = ref.erasers[key].rank
        log.info("erase at step %d, layer %d: LEACE rank %s (folds, then all)", step,
                 ref.layers[li], ranks)  # fmt: skip
    return ref.erasers[key]


Edit = Callable[[torch.Tensor], torch.Tensor]


def _edit(which: str) -> Callable[..., Edit]:
    def make(iv, ref, step, li, src_rows, dtype, device) -> Edit:
        assert src_rows is not None  # the problems' own reference rows
        e = site_erasers(ref, step, li)
        f = torch.from_numpy(ref.erase_fold[list(src_rows)])
        left, right = e.leace if which == "leace" else e.random
        L, R, m = (t[f].to(device=device, dtype=torch.float32) for t in (left, right, e.mean))

        def edit(h: torch.Tensor) -> torch.Tensor:
            x = h.float()
            coef = torch.einsum("bd,bdc->bc", x - m, R)
            return (x - torch.einsum("bc,bdc->bd", coef, L)).to(h.dtype)

        return edit

    return make


erase_edit = _edit("leace")
erase_random_edit = _edit("random")
