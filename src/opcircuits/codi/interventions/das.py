"""Distributed alignment search (DAS, Geiger et al. 2023/24) on the engine's latent loop.

A subspace of dimension r at one site is r orthonormal rows W [r, D] (a `Linear(D, r)` under
`torch.nn.utils.parametrizations.orthogonal`: the first r rows of a rotation R, the only part the
intervention uses, so a D × D rotation is never built). The interchange intervention replaces
the base run's coordinates in that subspace by the partner's:

    h' = h + Wᵀ (W h_src − W h)

(the complement: h' = h_src − Wᵀ W (h_src − h), every other coordinate swapped). W is trained
with the model frozen so that the intervened base run gives the partner's answer: cross-entropy
of the partner's gold answer tokens, teacher-forced after the K thoughts as `Engine.decode`
scores them. The gradient path runs through steps s … K and the answer on a `DynamicCache`
copy of the base's clean prefix (the engine's preallocated cache is written in place, which
autograd cannot differentiate through); evaluation uses the engine itself (greedy answers).

Why not pyvene's `RotatedSpaceIntervention`: it wraps a whole D × D rotation around a module's
forward and owns its own model call, while our loop edits one position of a step inside a
batched, KV-cached run through `Hooks`; the edit here is one line on those hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from opcircuits.codi.interventions.engine import Batch, Engine
from opcircuits.codi.interventions.kinds import Edit
from opcircuits.codi.interventions.run import plan_batches
from opcircuits.codi.interventions.spec import Problem, Site
from opcircuits.codi.latent import one_query_attention
from opcircuits.codi.prompt import decode_answer, extract_number
from opcircuits.errors import OpcircuitsError

log = logging.getLogger(__name__)


class Subspace(nn.Module):
    """r trainable orthonormal directions in a D-dimensional state space."""

    def __init__(self, dim: int, r: int, seed: int = 0) -> None:
        super().__init__()
        if not 1 <= r <= dim:
            raise OpcircuitsError(f"subspace dimension {r} must be in 1 .. {dim}", field="dims")
        gen = torch.Generator().manual_seed(seed)
        lin = nn.Linear(dim, r, bias=False)
        with torch.no_grad():
            lin.weight.copy_(random_basis(dim, r, gen))
        self.proj = nn.utils.parametrizations.orthogonal(lin)

    def basis(self) -> torch.Tensor:
        """W [r, D], orthonormal rows."""
        return self.proj.weight


def random_basis(dim: int, r: int, gen: torch.Generator) -> torch.Tensor:
    """r orthonormal rows drawn uniformly (QR of a Gaussian, signs fixed): the random control."""
    q, rr = torch.linalg.qr(torch.randn(dim, r, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(rr))[None, :]
    return q.T.contiguous().float()


def interchange(basis: torch.Tensor, source: torch.Tensor, complement: bool = False) -> Edit:
    """The edit swapping the subspace's coordinates (or every other one) in from `source`
    [B, D]: h + Wᵀ W (source − h), or source − Wᵀ W (source − h)."""

    def edit(h: torch.Tensor) -> torch.Tensor:
        W = basis.to(device=h.device, dtype=h.dtype)
        src = source.to(device=h.device, dtype=h.dtype)
        inside = (src - h) @ W.T @ W
        return src - inside if complement else h + inside

    return edit


@dataclass
class PairSet:
    """Interchange pairs: each base problem and the partner whose subspace it receives."""

    problems: list[Problem]  # every problem the pairs name (bases and partners)
    base: list[int]  # rows of `problems`
    source: list[int]


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise OpcircuitsError(f"{what} holds NaN or inf", field="dims")


@torch.inference_mode()
def site_states(
    engine: Engine, problems: Sequence[Problem], site: Site, batch_size: int
) -> torch.Tensor:
    """The clean states [N, D] of `problems` at `site` (GPT-2 layer 0: without the position
    embedding, as the hooks' edits see it)."""
    lengths = [engine.prompt_length(p.question) for p in problems]
    out = torch.empty((len(problems), engine.model.hidden_size))
    with engine:
        for rows in plan_batches(lengths, batch_size):
            b = engine.open_batch(problems, rows)
            with one_query_attention(engine.model):
                engine.run_clean(b, [site.layer])
            x = b.clean_states[:, site.step, 0].float().cpu()  # type: ignore[index]
            if b.clean_pos0 is not None and site.layer == 0:
                x = x - b.clean_pos0[:, site.step]
            out[list(rows)] = x
    _check_finite(out, f"the clean states at {site.name}")
    return out


@dataclass
class Prefix:
    """A batch's clean run up to the site's step: what the gradient path starts from."""

    batch: Batch  # cache and mask of the engine's batch (read-only here)
    finals: list[torch.Tensor]  # clean final states of steps 0 … K
    rows: list[int]  # indices into the pair list
    target: torch.Tensor  # [B, n] partner's answer prompt, eos-padded
    score: torch.Tensor  # [B, n - 1] bool: the tokens the cross-entropy sums


@torch.no_grad()  # not inference_mode: autograd saves these tensors on the gradient path
def prefixes(engine: Engine, pairs: PairSet, idx: Sequence[int], batch_size: int) -> list[Prefix]:
    """The clean runs of the bases of pairs `idx`, in batches, with their partners' answers."""
    bases = [pairs.problems[pairs.base[i]] for i in idx]
    golds = [engine.gold_ids(pairs.problems[pairs.source[i]].gold) for i in idx]
    room = max(len(g[0]) for g in golds)
    out = []
    with engine:
        for rows in plan_batches([engine.prompt_length(p.question) for p in bases], batch_size):
            b = engine.open_batch(bases, rows, room)
            with one_query_attention(engine.model):
                engine.run_clean(b, [0])  # (a layer is recorded; only the final states are used)
            n = max(len(golds[i][0]) for i in rows)
            target = torch.full((len(rows), n), engine.eos, dtype=torch.long)
            score = torch.zeros((len(rows), n - 1), dtype=torch.bool)
            for j, i in enumerate(rows):
                ids, first = golds[i]
                target[j, : len(ids)] = torch.tensor(ids)
                score[j, first : len(ids) - 1] = True
            finals = [f.detach() for f in b.clean_final]
            out.append(Prefix(b, finals, [idx[i] for i in rows], target, score))
    return out


def _dynamic_copy(engine: Engine, b: Batch, length: int) -> Batch:
    """A batch whose cache is a `DynamicCache` holding the first `length` positions of `b`'s."""
    from transformers import DynamicCache

    from opcircuits.codi.latent import layer_kv

    class GradCache(DynamicCache):
        """`hooks.rewind` crops to an absolute length; this transformers' crop takes the number
        of tokens to remove (negative)."""

        def crop(self, length: int) -> None:
            extra = self.get_seq_length() - length
            if extra > 0:
                super().crop(-extra)

    cache = GradCache()
    for layer in range(engine.n_layers):
        k, v = layer_kv(b.cache, layer)
        cache.update(k[:, :, :length].clone(), v[:, :, :length].clone(), layer)
    return Batch(b.rows, cache, b.mask, b.last, b.T)


def answer_loss(engine: Engine, p: Prefix, site: Site, edit: Edit) -> torch.Tensor:
    """Mean over the batch of −log p(partner's answer) with `edit` at `site` (differentiable)."""
    b = _dynamic_copy(engine, p.batch, p.batch.T - 1 + site.step)
    b.clean_final = list(p.finals)
    finals, _ = engine.latents(b, site.step, engine.K, {site.step: {site.layer: edit}})
    ids = p.target.to(engine.device)
    out = engine._forward(b, b.T + engine.K, engine.model.embed(ids[:, :-1]), "answer")
    logp = torch.log_softmax(engine._logits(out.last_hidden_state), dim=-1)
    tok = logp.gather(-1, ids[:, 1:, None])[..., 0]
    loss = -(tok * p.score.to(tok.device)).sum(-1).mean()
    _check_finite(loss.detach(), f"the DAS loss at {site.name}")
    return loss


def fit(
    sub: Subspace,
    batches: Sequence[object],
    loss: Callable[[object, Edit], torch.Tensor],
    sources: Callable[[object], torch.Tensor],
    *,
    epochs: int,
    lr: float,
    seed: int,
) -> list[float]:
    """Adam on the subspace only: each epoch visits `batches` in a seeded order; the loss of a
    batch is `loss(batch, interchange(W, sources(batch)))`. Returns each epoch's mean loss."""
    opt = torch.optim.Adam(sub.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        total = 0.0
        for j in torch.randperm(len(batches), generator=gen).tolist():
            opt.zero_grad()
            value = loss(batches[j], interchange(sub.basis(), sources(batches[j])))
            value.backward()
            opt.step()
            total += float(value.detach())
        history.append(total / max(1, len(batches)))
    return history


def train_codi(
    engine: Engine,
    pairs: PairSet,
    idx: Sequence[int],
    site: Site,
    r: int,
    source_states: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> tuple[torch.Tensor, list[float]]:
    """Train an r-dimensional subspace at `site` on pairs `idx` (the model stays frozen);
    `source_states[i]` is pair i's partner state at the site. Returns W [r, D] and the losses."""
    for p in engine.model.parameters():
        p.requires_grad_(False)
    sub = Subspace(engine.model.hidden_size, r, seed).to(engine.device)
    todo = prefixes(engine, pairs, idx, batch_size)
    with engine, one_query_attention(engine.model):
        history = fit(
            sub,
            todo,
            lambda p, edit: answer_loss(engine, p, site, edit),  # type: ignore[arg-type]
            lambda p: source_states[p.rows].to(engine.device),  # type: ignore[attr-defined]
            epochs=epochs,
            lr=lr,
            seed=seed,
        )
    W = sub.basis().detach().float().cpu()
    _check_finite(W, f"the trained subspace at {site.name}")
    return W, history


@torch.inference_mode()
def evaluate_codi(
    engine: Engine,
    pairs: PairSet,
    idx: Sequence[int],
    site: Site,
    basis: torch.Tensor | None,
    source_states: torch.Tensor,
    *,
    complement: bool = False,
    batch_size: int,
) -> list[float | None]:
    """The greedy answer's value of each base of pairs `idx` with the subspace `basis` (None:
    the whole state) swapped in from its partner at `site` (`complement`: everything else)."""
    bases = [pairs.problems[pairs.base[i]] for i in idx]
    srcs = [pairs.problems[pairs.source[i]] for i in idx]
    room = max(len(engine.gold_ids(p.gold)[0]) for p in srcs)
    D = engine.model.hidden_size
    W = torch.eye(D) if basis is None else basis
    values: list[float | None] = [None] * len(idx)
    with engine:
        for rows in plan_batches([engine.prompt_length(p.question) for p in bases], batch_size):
            b = engine.open_batch(bases, rows, room)
            with one_query_attention(engine.model):
                engine.run_clean(b, [0])
                edit = interchange(W, source_states[[idx[i] for i in rows]], complement)
                finals, _ = engine.latents(b, site.step, engine.K, {site.step: {site.layer: edit}})
                _check_finite(torch.cat(finals[site.step :], 1), f"the states after {site.name}")
                gold = [engine.gold_ids(bases[i].gold) for i in rows]
                other = [engine.gold_ids(srcs[i].gold) for i in rows]
                for i, a in zip(rows, engine.decode(b, engine.K, gold, source=other), strict=True):
                    values[i] = extract_number(decode_answer(engine.model, engine.tokenizer, a.ids))
    return values
