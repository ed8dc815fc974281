"""The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the
Tuned Lens"): one affine translator A_l h + b_l per recorded layer, initialised to the identity,
trained so that the model's own unembedding (final norm + LM head) of the translated state
predicts the final layer's next-token distribution at the same position (loss KL(final ‖ tuned)).
With the identity translator it is the logit lens.

The store's final layer is HF's `hidden_states[-1]`, already through the final norm, so it is
unembedded by the LM head alone; every earlier layer by the norm and the head. Here: the
translators, the unembedding, fitting and held-out measuring, and the weight file (written and
read with safetensors, never a pickle). The command is `codi/lens_train.py`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from opcircuits.codi.model import CodiModel
from opcircuits.errors import OpcircuitsError
from opcircuits.files import atomic_path, sha256_file
from opcircuits.store.lens_file import LENS_WEIGHTS, read_lens_json

_NORMS = ("norm", "ln_f", "final_layernorm")  # LLaMA, GPT-2, others' final norm attribute


def final_norm(model: CodiModel) -> nn.Module:
    """The norm the backbone applies after its last block (before the LM head)."""
    backbone = model.lm.base_model
    for name in _NORMS:
        module = getattr(backbone, name, None)
        if isinstance(module, nn.Module):
            return module
    raise OpcircuitsError(
        f"no final norm found on {type(backbone).__name__} (looked for {', '.join(_NORMS)}): "
        "the tuned lens supports LLaMA and GPT-2 style models",
        field="model",
    )


class Unembed:
    """The model's unembedding of a hidden state: final norm (layers before the last) and LM head,
    in the model's dtype; logits come back as float32."""

    def __init__(self, model: CodiModel) -> None:
        self.model = model
        self.norm = final_norm(model)
        self.dtype = model.lm.get_output_embeddings().weight.dtype

    def __call__(self, hidden: torch.Tensor, *, final: bool) -> torch.Tensor:
        h = hidden.to(self.dtype)
        return self.model.lm_head(h if final else self.norm(h)).float()


class Translators(nn.Module):
    """One affine map per layer in `layers` (HF hidden_states indices): weight [L, D, D] starts
    as the identity, bias [L, D] at zero."""

    def __init__(self, layers: list[int], hidden_size: int) -> None:
        super().__init__()
        self.layers = list(layers)
        n = len(self.layers)
        self.weight = nn.Parameter(torch.eye(hidden_size).repeat(n, 1, 1))
        self.bias = nn.Parameter(torch.zeros(n, hidden_size))

    def forward(self, hidden: torch.Tensor, index: int) -> torch.Tensor:
        """Translate the states [B, D] of the `index`-th layer."""
        return hidden @ self.weight[index].T + self.bias[index]


def kl_to(target_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(target ‖ softmax(logits)) per row, in nats."""
    logq = torch.log_softmax(logits, dim=-1)
    return (target_logp.exp() * (target_logp - logq)).sum(-1)


def fit(
    translators: Translators,
    unembed: Unembed,
    states: torch.Tensor,
    lens_cols: list[int],
    final_col: int,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    on_step: Callable[[float], None] | None = None,
) -> float:
    """Adam on the mean held-in KL, summed over layers; `states` [R, L, D] rows of (problem,
    position), `lens_cols` the columns of the translated layers (in `translators.layers`' order),
    `final_col` the final layer's. Returns the last step's mean KL per layer. Each layer is
    backpropagated on its own, so memory holds one layer's logits at a time."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(translators.parameters(), lr=lr)
    last = float("nan")
    for _ in range(steps):
        idx = torch.randint(len(states), (min(batch_size, len(states)),), generator=gen)
        batch = states[idx.to(states.device)]
        with torch.no_grad():
            target = torch.log_softmax(unembed(batch[:, final_col], final=True), dim=-1)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i, col in enumerate(lens_cols):
            loss = kl_to(target, unembed(translators(batch[:, col], i), final=False)).mean()
            loss.backward()
            total += float(loss.detach())
        opt.step()
        last = total / max(len(lens_cols), 1)
        if not np.isfinite(last):
            raise OpcircuitsError(f"the tuned lens's loss became {last} (lower --lr)", field="lr")
        if on_step is not None:
            on_step(last)
    return last


@dataclass
class Measured:
    """Held-out rows through both lenses: KL(final ‖ tuned) and KL(final ‖ logit lens) per row
    and translated layer [R, L'], the tuned lens's top-1 id there [R, L'], and its probabilities
    summed over the rows of each position [P, L', V]."""

    tuned: np.ndarray
    logit: np.ndarray
    top1: np.ndarray
    prob_sums: np.ndarray


@torch.no_grad()
def measure(
    translators: Translators,
    unembed: Unembed,
    states: torch.Tensor,
    row_positions: np.ndarray,
    n_positions: int,
    lens_cols: list[int],
    final_col: int,
    *,
    batch_size: int,
) -> Measured:
    """Both lenses on the rows `states` [R, L, D] (`row_positions`: each row's position index)."""
    tuned, logit, top1 = [], [], []
    sums: torch.Tensor | None = None
    where = torch.as_tensor(row_positions, device=states.device)
    for a in range(0, len(states), batch_size):
        batch = states[a : a + batch_size]
        target = torch.log_softmax(unembed(batch[:, final_col], final=True), dim=-1)
        t_rows, l_rows, top_rows, p_rows = [], [], [], []
        for i, col in enumerate(lens_cols):
            t_logits = unembed(translators(batch[:, col], i), final=False)
            t_rows.append(kl_to(target, t_logits))
            l_rows.append(kl_to(target, unembed(batch[:, col], final=False)))
            p = torch.softmax(t_logits, dim=-1)
            top_rows.append(p.argmax(-1))
            p_rows.append(p)
        probs = torch.stack(p_rows, 1)  # [B, L', V]
        if sums is None:
            sums = torch.zeros((n_positions, *probs.shape[1:]), device=probs.device)
        sums.index_add_(0, where[a : a + batch_size], probs)
        tuned.append(torch.stack(t_rows, 1).cpu())
        logit.append(torch.stack(l_rows, 1).cpu())
        top1.append(torch.stack(top_rows, 1).cpu())
    if sums is None:
        raise OpcircuitsError("no held-out states to measure the lenses on", field="held_out")
    return Measured(
        torch.cat(tuned).numpy(),
        torch.cat(logit).numpy(),
        torch.cat(top1).numpy(),
        sums.cpu().numpy(),
    )


def check_finite_tensors(tensors: dict[str, torch.Tensor], where: str | Path) -> None:
    """A non-finite translator is an error naming the tensor (never written, never applied)."""
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise OpcircuitsError("holds NaN or inf values", path=where, field=name)


def save_translators(translators: Translators, folder: Path) -> str:
    """Write `folder/tuned-lens.safetensors` atomically (finite weights only); its sha256."""
    from safetensors.torch import save_file

    path = folder / LENS_WEIGHTS
    tensors = {
        "weight": translators.weight.detach().float().cpu().contiguous(),
        "bias": translators.bias.detach().float().cpu().contiguous(),
    }
    check_finite_tensors(tensors, path)
    meta = {"layers": json.dumps(translators.layers)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return sha256_file(path)


def load_translators(folder: str | Path, manifest: dict[str, Any]) -> tuple[Translators, dict]:
    """The translators of a lens folder, for the store whose manifest is given: a lens of another
    store, a weight file whose sha256 is not the recorded one, or a non-finite weight is an
    error naming the file."""
    from safetensors.torch import load_file

    lens = read_lens_json(folder, manifest)
    path = Path(folder) / LENS_WEIGHTS
    if not path.is_file():
        raise OpcircuitsError("the tuned lens's weights are missing", path=path)
    if sha256_file(path) != lens["weights"].get("sha256"):
        raise OpcircuitsError(
            "the file changed after the lens was trained (its sha256 differs from "
            "tuned-lens.json's)",
            path=path,
            field="weights.sha256",
        )
    tensors = load_file(str(path))
    check_finite_tensors(tensors, path)
    layers = [int(x) for x in lens["translated_layers"]]
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if weight is None or bias is None or weight.dim() != 3 or weight.shape[0] != len(layers):
        raise OpcircuitsError(
            f"expected weight [{len(layers)}, D, D] and bias [{len(layers)}, D]", path=path
        )
    translators = Translators(layers, int(weight.shape[-1]))
    with torch.no_grad():
        translators.weight.copy_(weight)
        translators.bias.copy_(bias)
    return translators, lens
