"""The CODI latent loop, batched: prompt → bot → K continuous thoughts → eot → greedy answer
(eot + EOS for checkpoints trained with EOS kept, `remove_eos = false`).

Problems are LEFT-padded; the attention mask and explicit position ids are carried through every
step (prompt, latents, eot, each answer token), so a problem's numbers do not depend on which
other problems share its batch. (The official batched evaluation drops the mask after the prompt,
so padded problems attend to pads during the latent steps; we do not reproduce that.) Prompts
are prefilled in groups of similar length and their keys/values written into one preallocated KV
cache that then serves the latent and answer steps of the whole batch; one forward per step with
`output_hidden_states` yields every layer at once, and the LM head runs only where its logits are
used (the logit lens and each next answer token).

The step primitives (`new_cache`, `forward_step`, `layer_kv`, `prefill`, `one_query_attention`)
are public: `codi.interventions` runs the same loop with them. The prompt and answer format
(`prompt_ids`, `answer_start_ids`, `decode_answer`, `extract_number`) is `codi.prompt`'s, and is
re-exported here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from opcircuits.codi.masks import answer_mask, thought_mask
from opcircuits.codi.model import CodiModel, cache_arg_name
from opcircuits.codi.prompt import (  # the format's names, re-exported where callers import them
    answer_start_ids,
    decode_answer,  # noqa: F401
    extract_number,  # noqa: F401
    format_question,  # noqa: F401
    prompt_ids,
)
from opcircuits.errors import OpcircuitsError
from opcircuits.options import DEFAULT_MAX_NEW_TOKENS


def max_positions(model: CodiModel) -> int | None:
    """The most positions the base can encode (GPT-2's `n_positions` maps to this name)."""
    value = getattr(model.lm.config, "max_position_embeddings", None)
    return int(value) if value else None


def check_lengths(
    model: CodiModel,
    tokenizer,
    questions: Sequence[str],
    ids: Sequence[str] | None = None,
    *,
    num_latent: int | None = None,
) -> None:
    """Every prompt, its K thoughts and the answer start fit in the model's positions; otherwise
    an error naming the problems (never a silent cut, nor positions past what the model knows)."""
    limit = max_positions(model)
    if limit is None:
        return
    K = model.config.num_latent if num_latent is None else num_latent
    extra = K + len(answer_start_ids(model, tokenizer))
    lengths = [len(prompt_ids(model, tokenizer, q)) for q in questions]
    bad = [i for i, n in enumerate(lengths) if n + extra > limit]
    if bad:
        names = [str(ids[i]) if ids is not None else f"#{i}" for i in bad]
        shown = ", ".join(names[:20]) + (f" … ({len(bad)} in all)" if len(bad) > 20 else "")
        raise OpcircuitsError(
            f"{len(bad)} questions are too long for this model: {shown} need up to "
            f"{max(lengths[i] for i in bad) + extra} positions (prompt, {K} thoughts, answer "
            f"start), the model has {limit}; shorten or leave out those problems",
            field="question",
        )


@dataclass
class LatentBatch:
    """Everything one batch produces (tensors on CPU, float32)."""

    hidden: torch.Tensor  # [B, P, L, D] at positions bot, latent_1..K and the chosen layers
    latent_inputs: torch.Tensor  # [B, K, D]: the projected inputs fed back at latent steps 1..K
    lens_ids: torch.Tensor  # [B, P, top_k] logit lens over the final hidden state
    lens_probs: torch.Tensor  # [B, P, top_k] softmax probabilities of those ids
    answer_ids: list[list[int]]  # greedy answer tokens (up to and including EOS)
    truncated: list[bool]  # the answer hit the decoding limit before EOS


def new_cache(model: CodiModel, max_len: int):
    """A preallocated KV cache for the whole loop (a growing one re-copies every layer's keys
    and values at each step, which dominated CPU time); a dynamic one where unavailable."""
    try:
        from transformers import StaticCache

        return StaticCache(config=model.lm.config, max_cache_len=max_len)
    except (ImportError, TypeError):  # transformers 4.x signature
        from transformers import DynamicCache

        return DynamicCache()


def forward_step(
    backbone, cache_name, cache, mask, positions, *, ids=None, embeds=None, hidden=True
):
    """One forward of the transformer (no LM head: logits are computed only where used)."""
    return backbone(
        input_ids=ids,
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        output_hidden_states=hidden,
        **{cache_name: cache},
    )


def layer_kv(cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [B, H, T, hd] of one layer of a DynamicCache (5.x and 4.x layouts)."""
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]


def _chunks(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Rows grouped by similar prompt length, each group padded to at most `token_budget`."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= token_budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def prefill(model, backbone, cache_name, ids, mask, pos, layer_idx, cache, token_budget):
    """Run the prompts in groups of similar length (little padding), then write every group's
    keys and values into the batch's cache, left-padded to the longest prompt. Returns the
    chosen layers' hidden states and the final hidden state at the last (bot) position."""
    from transformers import DynamicCache

    B, T = ids.shape
    lengths = mask.sum(-1).tolist()
    hidden = final = None
    groups = []
    for rows in _chunks(lengths, token_budget):
        t = lengths[rows[0]]
        sub = DynamicCache()
        r = torch.tensor(rows, device=ids.device)
        out = forward_step(
            backbone, cache_name, sub, mask[r, T - t :], pos[r, T - t :], ids=ids[r, T - t :]
        )
        hs = out.hidden_states
        h = torch.stack([hs[layer][:, -1] for layer in layer_idx], dim=1)
        f = out.last_hidden_state[:, -1:]  # after the final norm (= hidden_states[-1])
        if hidden is None:
            hidden = h.new_zeros((B, *h.shape[1:]))
            final = f.new_zeros((B, *f.shape[1:]))
        hidden[r], final[r] = h, f
        groups.append((r, t, sub))
        del out, hs
    # One layer at a time, so only one left-padded copy of a layer exists besides the cache.
    for layer in range(model.num_layers):
        full = []
        for kind in (0, 1):
            first = layer_kv(groups[0][2], layer)[kind]
            x = first.new_zeros((B, first.shape[1], T, first.shape[3]))
            for r, t, sub in groups:
                x[r, :, T - t :] = layer_kv(sub, layer)[kind]
            full.append(x)
        cache.update(full[0], full[1], layer)
        for _, _, sub in groups:  # free this layer of the group caches
            _drop_layer(sub, layer)
    return hidden, final


def _drop_layer(cache, layer: int) -> None:
    """Release one layer's tensors of a group cache once copied (memory only; best effort)."""
    if hasattr(cache, "layers"):
        cache.layers[layer].keys = cache.layers[layer].values = None
    elif hasattr(cache, "key_cache"):
        cache.key_cache[layer] = cache.value_cache[layer] = None


@torch.inference_mode()
def run_batch(
    model: CodiModel,
    tokenizer,
    questions: Sequence[str],
    *,
    layers: Sequence[int],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    top_k: int = 5,
    prefill_tokens: int = 4096,
    num_latent: int | None = None,
    keep_positions: bool = False,
) -> LatentBatch:
    """Run the latent loop on a batch of questions; see the module docstring.

    `num_latent` overrides the model's K (0 = question, bot, then straight to the answer: the
    positions are `bot` alone and `latent_inputs` is empty); with `keep_positions` eot and the
    answer keep the position ids they have after the model's own K thoughts (the skipped steps
    leave no keys), so a shorter loop changes the thoughts, not where the answer sits.

    Decoding stops once every problem has produced EOS; a problem's answer stops at
    `max_new_tokens`, or earlier where the model's positions end, and is then marked
    `truncated`. A question too long for the model's positions is an error (`check_lengths`).

    Prompts are run in groups of similar length of at most `prefill_tokens` padded tokens (a
    batch's prompts vary a lot in length; padding them all to the longest wasted up to half of
    the prompt compute); the latent and answer steps then run on the whole batch."""
    device = model.prj[1].weight.device
    K = model.config.num_latent if num_latent is None else int(num_latent)
    if K < 0:
        raise ValueError(f"num_latent must be >= 0, got {K}")
    # The position the answer counts from: after K thoughts, or the model's own K.
    K_pos = max(K, model.config.num_latent) if keep_positions else K
    check_lengths(model, tokenizer, questions, num_latent=K_pos)
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
    start = answer_start_ids(model, tokenizer)
    layer_idx = list(layers)
    k_top = min(top_k, model.eot_id + 1)
    backbone = model.lm.base_model  # the transformer without its LM head
    cache_name = cache_arg_name(backbone)
    cache = new_cache(model, T + K + len(start) + max_new_tokens)
    limit = max_positions(model)
    budgets = _budgets(limit, [len(p) for p in prompts], K_pos + len(start), max_new_tokens)

    hidden, final = prefill(
        model, backbone, cache_name, ids, mask, pos, layer_idx, cache, prefill_tokens
    )
    with one_query_attention(model):
        return _latents_and_answer(
            model,
            tokenizer,
            backbone,
            cache_name,
            cache,
            mask,
            last,
            hidden,
            final,
            num_latent=K,
            skipped=K_pos - K,
            start=start,
            budgets=budgets,
            limit=limit,
            layer_idx=layer_idx,
            k_top=k_top,
            max_new_tokens=max_new_tokens,
        )


def _budgets(limit: int | None, lengths: list[int], extra: int, max_new_tokens: int) -> list[int]:
    """Answer tokens each problem may decode: the limit, or fewer where the positions end."""
    if limit is None:
        return [max_new_tokens] * len(lengths)
    return [min(max_new_tokens, limit - n - extra + 1) for n in lengths]


@contextlib.contextmanager
def one_query_attention(model: CodiModel):
    """On CPU, steps with one query per problem run attention as plain matmuls ("eager"):
    reading the cache is the bottleneck there, and eager reads it once where torch's fused CPU
    kernel took ~1.6x longer (measured). Restored afterwards."""
    lm = model.lm
    before = getattr(lm.config, "_attn_implementation", None)
    switch = (
        model.prj[1].weight.device.type == "cpu"
        and before == "sdpa"
        and hasattr(lm, "set_attn_implementation")
    )
    if switch:
        lm.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            lm.set_attn_implementation(before)


def _latents_and_answer(
    model,
    tokenizer,
    backbone,
    cache_name,
    cache,
    mask,
    last,
    hidden,
    final,
    *,
    num_latent,
    skipped,
    start,
    budgets,
    limit,
    layer_idx,
    k_top,
    max_new_tokens,
) -> LatentBatch:
    device = mask.device
    B, K = mask.shape[0], num_latent
    T = mask.shape[1]  # the prompt: question + bot
    config = model.config
    ones = torch.ones((B, 1), dtype=mask.dtype, device=device)
    hiddens, inputs, lens_ids, lens_probs = [], [], [], []
    for k in range(K + 1):  # k = 0: the bot position; k >= 1: latent k
        hiddens.append(hidden)
        # Logit lens: the LM head on the final hidden state, as CODI decodes its latents.
        probs, top = torch.softmax(model.lm_head(final[:, 0]).float(), dim=-1).topk(k_top)
        lens_ids.append(top)
        lens_probs.append(probs)
        if k == K:
            break
        x = model.project(final)  # [B, 1, D]
        inputs.append(x[:, 0])
        mask, last = torch.cat([mask, ones], dim=1), last + 1
        keys = thought_mask(config, mask, T)
        out = forward_step(backbone, cache_name, cache, keys, last, embeds=x)
        hidden = torch.stack([out.hidden_states[layer][:, -1] for layer in layer_idx], dim=1)
        final = out.last_hidden_state[:, -1:]  # after the final norm (= hidden_states[-1])

    answers, truncated = _greedy_answers(
        model,
        (backbone, cache_name, cache),
        mask,
        last + skipped,  # position-preserved truncation: as after the model's own K
        T,
        start=start,
        eos=tokenizer.eos_token_id,
        budgets=budgets,
        limit=limit,
        max_new_tokens=max_new_tokens,
    )
    latent_inputs = (
        torch.stack(inputs, dim=1) if inputs else hidden.new_zeros((B, 0, model.hidden_size))
    )
    return LatentBatch(
        hidden=torch.stack(hiddens, dim=1).float().cpu(),
        latent_inputs=latent_inputs.float().cpu(),
        lens_ids=torch.stack(lens_ids, dim=1).cpu(),
        lens_probs=torch.stack(lens_probs, dim=1).cpu(),
        answer_ids=answers,
        truncated=truncated,
    )


def _greedy_answers(
    model, run, mask, last, T, *, start, eos, budgets, limit, max_new_tokens
) -> tuple[list[list[int]], list[bool]]:
    """End of thought (eot, or eot + EOS), then greedy decoding; every id but eot may be chosen.
    `run` = (backbone, cache argument name, cache); `last` the position before eot."""
    backbone, cache_name, cache = run
    B, device, n = mask.shape[0], mask.device, len(start)
    ones = torch.ones((B, 1), dtype=mask.dtype, device=device)
    x = model.embed(torch.tensor([start] * B, dtype=torch.long, device=device))
    answers: list[list[int]] = [[] for _ in range(B)]
    truncated = [False] * B
    running = list(range(B))  # problems that have not produced EOS yet
    for step in range(max_new_tokens):
        mask = torch.cat([mask, ones.expand(B, n)], dim=1)
        positions = last + torch.arange(1, n + 1, device=device)
        last = positions[:, -1:]
        if limit is not None:  # finished problems run on (ignored) past their last position
            positions = positions.clamp(max=limit - 1)
        keys = answer_mask(model.config, mask, T)
        out = forward_step(backbone, cache_name, cache, keys, positions, embeds=x, hidden=False)
        logits = model.lm_head(out.last_hidden_state[:, -1]).float()
        logits[:, model.eot_id] = float("-inf")
        nxt = logits.argmax(-1)
        tokens = nxt.tolist()  # one device → host copy per step
        for i in running:
            answers[i].append(tokens[i])
        running = [i for i in running if tokens[i] != eos]
        for i in [i for i in running if step + 1 >= budgets[i]]:
            truncated[i] = True
        running = [i for i in running if not truncated[i]]
        if not running:
            break
        # Finished problems keep decoding (their tokens are ignored): the batch stays whole.
        x, n = model.embed(nxt[:, None]), 1
    return answers, truncated


@torch.no_grad()
def layer_lens_ids(
    model: CodiModel, hidden: torch.Tensor, layers: Sequence[int], top_k: int
) -> torch.Tensor:
    """The logit lens at every stored layer: [B, P, L, k] top-k ids of the LM head on each
    (position, layer) state of `hidden` [B, P, L, D] (`LatentBatch.hidden`), after the final norm
    except at the last layer, whose HF hidden state already has it (so that layer's ids are the
    `lens_ids`). Ids only: k per site keeps the store small."""
    weight = model.lm.get_output_embeddings().weight
    k = min(top_k, model.eot_id + 1)
    out = []
    for li, layer in enumerate(layers):
        x = hidden[:, :, li].to(device=weight.device, dtype=weight.dtype)
        if layer != model.num_layers:
            x = model.final_norm(x)
        out.append(torch.softmax(model.lm_head(x).float(), dim=-1).topk(k).indices)
    return torch.stack(out, dim=2).cpu()


def token_text(model: CodiModel, tokenizer, token_id: int) -> str:
    """A readable string for one id (the three CODI ids have no text in the base tokenizer)."""
    special = {model.pad_id: "<pad>", model.bot_id: "<bot>", model.eot_id: "<eot>"}
    if token_id in special:
        return special[token_id]
    return tokenizer.decode([token_id])
