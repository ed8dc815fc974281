"""The CODI latent loop, batched: prompt → bot → K continuous thoughts → eot → greedy answer.

Problems are LEFT-padded; the attention mask and explicit position ids are carried through every
step (prompt, latents, eot, each answer token), so a problem's numbers do not depend on which
other problems share its batch. (The official batched evaluation drops the mask after the prompt,
so padded problems attend to pads during the latent steps; we do not reproduce that.) One KV
cache serves the whole loop, and one forward per step with `output_hidden_states` yields every
layer at once.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from opcircuits.codi.model import CodiModel

NUMBER = re.compile(r"-?\d+\.?\d*")


def format_question(question: str) -> str:
    """CODI's prompt text: stripped, each pair of spaces replaced by one (str.replace semantics)."""
    return question.strip().replace("  ", " ")


def prompt_ids(model: CodiModel, tokenizer, question: str) -> list[int]:
    """Token ids of one prompt: the tokenized question (BOS if the tokenizer adds one), then bot
    (EOS before bot only for checkpoints trained without `remove_eos`)."""
    ids = list(tokenizer(format_question(question))["input_ids"])
    if not model.config.remove_eos:
        ids.append(int(tokenizer.eos_token_id))
    return ids + [model.bot_id]


def extract_number(text: str) -> float | None:
    """The last number in a decoded answer, commas removed (None when there is none)."""
    found = NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


@dataclass
class LatentBatch:
    """Everything one batch produces (tensors on CPU, float32)."""

    hidden: torch.Tensor  # [B, P, L, D] at positions bot, latent_1..K and the chosen layers
    latent_inputs: torch.Tensor  # [B, K, D]: the projected inputs fed back at latent steps 1..K
    lens_ids: torch.Tensor  # [B, P, top_k] logit lens over the final hidden state
    lens_probs: torch.Tensor  # [B, P, top_k] softmax probabilities of those ids
    answer_ids: list[list[int]]  # greedy answer tokens (up to and including EOS)


def _forward_names(model: CodiModel) -> tuple[str, str | None]:
    """Keyword names of the KV cache and of "logits for the last positions only": transformers
    renamed `past_key_values` to `cache` (5.x) and `num_logits_to_keep` to `logits_to_keep`."""
    params = inspect.signature(model.lm.forward).parameters
    cache = "cache" if "cache" in params else "past_key_values"
    keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    return cache, keep


def _step(model, names, cache, mask, positions, *, ids=None, embeds=None, hidden=True):
    cache_name, keep_name = names
    extra = {cache_name: cache}
    if keep_name is not None:
        extra[keep_name] = 1  # only the last position's logits are ever used
    return model.lm(
        input_ids=ids,
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        output_hidden_states=hidden,
        **extra,
    )


@torch.inference_mode()
def run_batch(
    model: CodiModel,
    tokenizer,
    questions: Sequence[str],
    *,
    layers: Sequence[int],
    max_new_tokens: int = 64,
    top_k: int = 5,
) -> LatentBatch:
    """Run the latent loop on a batch of questions; see the module docstring."""
    from transformers import DynamicCache

    device = model.prj[1].weight.device
    prompts = [prompt_ids(model, tokenizer, q) for q in questions]
    B, T = len(prompts), max(map(len, prompts))
    ids = torch.full((B, T), model.pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.tensor(p)
        mask[i, T - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    # Left padding: real tokens count positions from 0; pads get 0 (they are masked anyway).
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    last = pos[:, -1:]
    ones = torch.ones((B, 1), dtype=mask.dtype, device=device)

    K = model.config.num_latent
    layer_idx = list(layers)
    hiddens, lens_logits, inputs = [], [], []
    cache = DynamicCache()
    names = _forward_names(model)

    out = _step(model, names, cache, mask, pos, ids=ids)
    for k in range(K + 1):  # k = 0: the bot position; k >= 1: latent k
        hs = out.hidden_states
        hiddens.append(torch.stack([hs[layer][:, -1] for layer in layer_idx], dim=1))
        lens_logits.append(out.logits[:, -1])
        final = hs[-1][:, -1:]
        if k == K:
            break
        x = model.project(final)  # [B, 1, D]
        inputs.append(x[:, 0])
        mask, last = torch.cat([mask, ones], dim=1), last + 1
        out = _step(model, names, cache, mask, last, embeds=x)

    # End of thought, then greedy decoding; every id but eot may be chosen.
    eos = tokenizer.eos_token_id
    x = model.embed(torch.full((B, 1), model.eot_id, dtype=torch.long, device=device))
    answers: list[list[int]] = [[] for _ in range(B)]
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        mask, last = torch.cat([mask, ones], dim=1), last + 1
        out = _step(model, names, cache, mask, last, embeds=x, hidden=False)
        logits = out.logits[:, -1].float()
        logits[:, model.eot_id] = float("-inf")
        nxt = logits.argmax(-1)
        for i in torch.nonzero(~finished).flatten().tolist():
            answers[i].append(int(nxt[i]))
        if eos is not None:
            finished |= nxt == eos
        if bool(finished.all()):
            break
        x = model.embed(nxt[:, None])

    lens = torch.softmax(torch.stack(lens_logits, dim=1).float(), dim=-1)  # [B, P, V+3]
    probs, top = lens.topk(min(top_k, lens.shape[-1]), dim=-1)
    return LatentBatch(
        hidden=torch.stack(hiddens, dim=1).float().cpu(),
        latent_inputs=torch.stack(inputs, dim=1).float().cpu(),
        lens_ids=top.cpu(),
        lens_probs=probs.cpu(),
        answer_ids=answers,
    )


def token_text(model: CodiModel, tokenizer, token_id: int) -> str:
    """A readable string for one id (the three CODI ids have no text in the base tokenizer)."""
    special = {model.pad_id: "<pad>", model.bot_id: "<bot>", model.eot_id: "<eot>"}
    if token_id in special:
        return special[token_id]
    return tokenizer.decode([token_id])


def decode_answer(model: CodiModel, tokenizer, ids: Sequence[int]) -> str:
    """Answer text without special tokens (ids >= V are CODI's own and have no text)."""
    return tokenizer.decode([i for i in ids if i < model.base_vocab_size], skip_special_tokens=True)
