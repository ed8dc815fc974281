"""Attribution patching (AtP) over every component of the CODI loop, and its exact check.

For a pair (base problem, partner) the metric is the logit difference at the first answer token
where their gold answers differ, teacher-forced along their common answer prefix: the partner's
token's logit minus the base's. One forward of the partner records every component's output; one
forward of the base with a zero tensor added to each component's output, and one backward, give
∂metric/∂output; the first-order estimate of patching component c from the partner is
Σ (a_partner − a_base) · ∂metric/∂a over c's positions and dimensions (Nanda 2023; Kramár et al.
2024). The loop runs on a growing cache that is never detached, so the gradient of step k reaches
every earlier step through the fed-back projection and the keys and values.

Components, per segment (`question`, `bot`, `latent_k`, `answer`) and block:
- `head`: one attention head's output *before* the output projection mixes the heads — the
  head's slice of o_proj's (GPT-2: c_proj's) input. After o_proj the heads are summed into one
  vector, so no slice of it is one head's; before it, each slice of width head_dim is exactly the
  head's attention-weighted values, and patching it changes that head alone.
- `mlp`: the MLP's output (before it is added to the residual stream).
- `resid`: the residual stream at a layer (hidden_states index: 0 = block 1's input, l = block
  l's output, before the final norm), per token of the question and answer segments.
Heads and MLPs of the question and answer segments are patched at all the segment's tokens at
once (their estimate is the sum of the per-token ones). Question tokens are aligned from bot
(the prompts are left-padded to one width); a token where either prompt is padding is not patched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from opcircuits.codi.interventions.hooks import attention, blocks
from opcircuits.codi.interventions.spec import Problem, position_name
from opcircuits.codi.latent import layer_kv
from opcircuits.codi.masks import answer_mask, thought_mask
from opcircuits.codi.model import CodiModel, cache_arg_name
from opcircuits.codi.prompt import gold_answer_ids, prompt_ids
from opcircuits.errors import OpcircuitsError

KINDS = ("head", "mlp", "resid")


@dataclass(frozen=True)
class Component:
    """One patchable component: `token` is set for `resid` in the question (offset from bot,
    −1 = the last question token) and answer (0 = eot) segments; `head` for heads."""

    kind: str
    segment: str
    layer: int
    head: int = -1
    token: int | None = None


@dataclass
class Pairs:
    """A batch of (base, partner) pairs laid out for the loop."""

    ids: torch.Tensor  # [2, B, T] left-padded prompts without bot: base, partner
    mask: torch.Tensor  # [2, B, T]
    answer: torch.Tensor  # [B, A] the common answer prefix (right-padded)
    score_at: torch.Tensor  # [B] index in `answer` whose logits score the pair
    tokens: torch.Tensor  # [B, 2] the partner's and the base's token there

    @property
    def both(self) -> torch.Tensor:
        """[B, T] question tokens real in both prompts (the patchable ones)."""
        return (self.mask[0] > 0) & (self.mask[1] > 0)


def scoring(model: CodiModel, tokenizer, base: Problem, partner: Problem):
    """(common answer prefix, the partner's token, the base's token) at the first answer token
    where the two gold answers differ; None when they are the same answer."""
    rm = model.config.remove_eos
    a, _ = gold_answer_ids(tokenizer, base.gold, model.eot_id, rm)
    b, _ = gold_answer_ids(tokenizer, partner.gold, model.eot_id, rm)
    j = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    return None if j is None else (a[:j], b[j], a[j])


def make_pairs(model: CodiModel, tokenizer, pairs: Sequence[tuple[Problem, Problem]]) -> Pairs:
    """Lay out pairs whose gold answers differ (`scoring` is not None for each)."""
    prompts = [
        [prompt_ids(model, tokenizer, p.question)[:-1] for p, _ in pairs],
        [prompt_ids(model, tokenizer, q.question)[:-1] for _, q in pairs],
    ]
    B, T = len(pairs), max(len(x) for side in prompts for x in side)
    ids = torch.full((2, B, T), model.pad_id, dtype=torch.long)
    mask = torch.zeros((2, B, T), dtype=torch.long)
    for s, side in enumerate(prompts):
        for i, p in enumerate(side):
            ids[s, i, T - len(p) :] = torch.tensor(p)
            mask[s, i, T - len(p) :] = 1
    scored = [scoring(model, tokenizer, p, q) for p, q in pairs]
    if any(x is None for x in scored):
        raise OpcircuitsError("a pair's gold answers are the same: nothing to attribute")
    A = max(len(x[0]) for x in scored)
    answer = torch.full((B, A), int(tokenizer.eos_token_id), dtype=torch.long)
    for i, (prefix, _, _) in enumerate(scored):
        answer[i, : len(prefix)] = torch.tensor(prefix)
    at = torch.tensor([len(x[0]) - 1 for x in scored])
    tokens = torch.tensor([[x[1], x[2]] for x in scored])
    device = model.prj[1].weight.device
    return Pairs(ids.to(device), mask.to(device), answer.to(device), at.to(device), tokens)


class Taps:
    """Hooks on every block's o_proj input (`attn`), MLP output (`mlp`) and output (`resid`, and
    block 1's input as resid layer 0). Modes: `record` keeps each output; `grad` also adds a zero
    leaf whose gradient is ∂metric/∂output; `patch` replaces outputs where `patches` say."""

    def __init__(self, model: CodiModel, graddrop: bool = False) -> None:
        lm = model.lm
        n = model.num_layers
        self.heads = int(lm.config.num_attention_heads)
        # GradDrop: per block a factor on the gradient through its own contribution, read at
        # backward time, so one forward serves a backward per dropped block
        self.keep = [1.0] * (n + 1)
        self.mode = "record"
        self.segment = "question"
        self.acts: dict[tuple[str, int, str], torch.Tensor] = {}
        self.leaves: dict[tuple[str, int, str], torch.Tensor] = {}
        # (site, layer, segment) → (mask broadcastable to the output, the replacement)
        self.patches: dict[tuple[str, int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        mods = blocks(lm.base_model, n)
        self.handles = [mods[0].register_forward_pre_hook(self._pre)]
        if graddrop:  # before the resid tap, so a block's own output leaf stays undropped
            for i, block in enumerate(mods):
                self.handles.append(block.register_forward_hook(self._gate(i + 1)))
        for i, block in enumerate(mods):
            attn = attention(block)
            proj = getattr(attn, "o_proj", None) or getattr(attn, "c_proj", None)
            if proj is None:
                raise OpcircuitsError(f"cannot find the output projection of block {i + 1}")
            self.handles.append(proj.register_forward_pre_hook(self._proj(i + 1)))
            self.handles.append(block.mlp.register_forward_hook(self._out("mlp", i + 1)))
            self.handles.append(block.register_forward_hook(self._out("resid", i + 1)))

    def _tap(self, site: str, layer: int, x: torch.Tensor) -> torch.Tensor:
        key = (site, layer, self.segment)
        if self.mode == "patch":
            p = self.patches.get(key)
            return x if p is None else torch.where(p[0], p[1].to(x.dtype), x)
        self.acts[key] = x.detach()
        if self.mode == "grad":
            z = torch.zeros_like(x, requires_grad=True)
            self.leaves[key] = z
            return x + z
        return x

    def _pre(self, module, args):
        return (self._tap("resid", 0, args[0]), *args[1:])

    def _proj(self, layer: int):
        def hook(module, args):
            return (self._tap("attn", layer, args[0]), *args[1:])

        return hook

    def _out(self, site: str, layer: int):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (self._tap(site, layer, output[0]), *output[1:])
            return self._tap(site, layer, output)

        return hook

    def _gate(self, layer: int):
        def hook(module, args, output):
            if self.mode != "grad":
                return output
            if not args:
                raise OpcircuitsError(f"block {layer} was called without a positional input")
            out = output[0] if isinstance(output, tuple) else output
            gated = _Drop.apply(out, args[0], self.keep, layer)
            return (gated, *output[1:]) if isinstance(output, tuple) else gated

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class _Drop(torch.autograd.Function):
    """Identity on a block's output; backward sends `keep[layer]` of the gradient into the block
    (its attention and MLP, and its own skip) and the rest straight to its input, so keep = 0
    drops the gradient through the block's contribution while the residual skip still carries
    it (AtP*'s GradDrop, Kramár et al. 2024, §3.2)."""

    @staticmethod
    def forward(ctx, out, inp, keep, layer):  # inp: only for its gradient
        ctx.keep, ctx.layer = keep, layer
        return out.view_as(out)

    @staticmethod
    def backward(ctx, g):
        k = ctx.keep[ctx.layer]
        if k == 1.0:
            return g, None, None, None
        return g * k, g * (1.0 - k), None, None


def run_loop(
    model: CodiModel, pairs: Pairs, side: int, taps: Taps, prompt_kv: list | None = None
) -> torch.Tensor:
    """The whole CODI loop of one side (0 = base, 1 = partner) with `taps`: question, bot, K
    thoughts, the answer prefix; returns the metric [B] (float32). With `prompt_kv` (per layer the
    question's keys and values, as `question_kv` returns) the question is not run again."""
    from transformers import DynamicCache

    backbone = model.lm.base_model
    cache_name = cache_arg_name(backbone)
    ids, mask = pairs.ids[side], pairs.mask[side]
    B, T = ids.shape
    cache = DynamicCache()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    last = pos[:, -1:]

    def forward(embeds, keys, positions, segment):
        taps.segment = segment
        return backbone(
            inputs_embeds=embeds, attention_mask=keys, position_ids=positions,
            use_cache=True, **{cache_name: cache},
        ).last_hidden_state  # fmt: skip

    if prompt_kv is None:
        forward(model.embed(ids), mask, pos, "question")
    else:  # a growing cache concatenates, so the given tensors are never written to
        for i, (k, v) in enumerate(prompt_kv):
            cache.update(k, v, i)
    one = torch.ones((B, 1), dtype=mask.dtype, device=mask.device)
    keys = torch.cat([mask, one], 1)
    bot = torch.full((B, 1), model.bot_id, dtype=torch.long, device=ids.device)
    final = forward(model.embed(bot), keys, last + 1, position_name(0))[:, -1:]
    for k in range(1, model.config.num_latent + 1):
        keys = torch.cat([keys, one], 1)
        x = model.project(final)
        step_keys = thought_mask(model.config, keys, T + 1)
        final = forward(x, step_keys, last + 1 + k, position_name(k))[:, -1:]
    A = pairs.answer.shape[1]
    keys = torch.cat([keys, one.expand(B, A)], 1)
    offs = torch.arange(A, device=ids.device)[None] + model.config.num_latent + 2
    h = forward(model.embed(pairs.answer), answer_mask(model.config, keys, T + 1), last + offs,
                "answer")  # fmt: skip
    logits = model.lm_head(h[torch.arange(B), pairs.score_at]).float()
    tok = pairs.tokens.to(logits.device)
    metric = logits.gather(1, tok[:, :1])[:, 0] - logits.gather(1, tok[:, 1:])[:, 0]
    if not torch.isfinite(metric).all():
        raise OpcircuitsError("the loop produced NaN or inf logits")
    return metric


def _segment_mask(pairs: Pairs, segment: str) -> torch.Tensor:
    """[B, n] positions of a segment that are patched (question: real in both prompts)."""
    if segment == "question":
        return pairs.both
    if segment == "answer":
        A = pairs.answer.shape[1]
        return torch.arange(A, device=pairs.answer.device)[None] <= pairs.score_at[:, None]
    return torch.ones((pairs.ids.shape[1], 1), dtype=torch.bool, device=pairs.ids.device)


def _token(segment: str, t: int, n: int) -> int | None:
    return t - n if segment == "question" else (t if segment == "answer" else None)


def attribute(
    model: CodiModel, pairs: Pairs, graddrop: bool = False
) -> tuple[list[Component], dict[str, torch.Tensor]]:
    """AtP estimates of every component for a batch: (components, {"estimate": [B, C] raw
    metric changes, "base": [B], "partner": [B] the clean metrics}). With `graddrop` also
    "dropped": [L, B, C], the estimates with block l's gradient dropped (`_Drop`), one backward
    per block on the same forward."""
    taps = Taps(model, graddrop)
    # Only the activations' gradients are wanted: with the weights frozen the forward saves no
    # inputs for weight gradients and the backward computes none (about 40% of the CPU time)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            taps.mode = "record"
            partner = run_loop(model, pairs, 1, taps)
            theirs = dict(taps.acts)
        taps.mode, taps.acts = "grad", {}
        with torch.enable_grad():
            base = run_loop(model, pairs, 0, taps)
            keys = list(taps.leaves)
            leaves = [taps.leaves[k] for k in keys]
            # the patch (a_partner − a_base), taken once for every backward
            deltas = [(theirs[k] - taps.acts[k]).float() for k in keys]
            n = model.num_layers
            drops = list(range(1, n + 1)) if graddrop else []
            last = drops[-1] if drops else None
            runs = []
            for dropped in [None, *drops]:
                taps.keep[:] = [1.0] * (n + 1)
                if dropped is not None:
                    taps.keep[dropped] = 0.0
                # allow_unused: e.g. the last block's output at question tokens, which nothing
                # reads; the graph is kept for the next backward
                grads = torch.autograd.grad(
                    base.sum(), leaves, allow_unused=True, retain_graph=dropped != last
                )
                comps, estimate = _columns(pairs, keys, deltas, grads, taps.heads)
                runs.append(estimate)
        out = {"estimate": runs[0], "base": base.detach().cpu(), "partner": partner.cpu()}
        if graddrop:
            out["dropped"] = torch.stack(runs[1:], 0)
        return comps, out
    finally:
        taps.close()
        for p in frozen:
            p.requires_grad_(True)


def _columns(pairs: Pairs, keys, deltas, grads, heads: int):
    """(components, [B, C] estimates): Σ Δa · grad over each component's positions and dims."""
    comps: list[Component] = []
    cols: list[torch.Tensor] = []
    for key, d, g in zip(keys, deltas, grads, strict=True):
        site, layer, segment = key
        if g is None:  # nothing downstream reads it: no effect to first order
            g = torch.zeros_like(d)
        prod = d * g.float()
        m = _segment_mask(pairs, segment).to(prod.dtype)  # [B, n]
        n = prod.shape[1]
        if site == "attn":
            per = prod.reshape(*prod.shape[:2], heads, -1).sum(-1)  # [B, n, H]
            per = (per * m[..., None]).sum(1)
            for h in range(heads):
                comps.append(Component("head", segment, layer, h))
                cols.append(per[:, h])
        elif site == "mlp":
            comps.append(Component("mlp", segment, layer))
            cols.append((prod.sum(-1) * m).sum(1))
        else:
            per = prod.sum(-1) * m  # [B, n]
            for t in range(n):
                if segment == "question" and not bool(pairs.both[:, t].any()):
                    continue  # padding in every row
                comps.append(Component("resid", segment, layer, token=_token(segment, t, n)))
                cols.append(per[:, t])
    estimate = torch.stack(cols, 1).detach().cpu()
    if not torch.isfinite(estimate).all():
        raise OpcircuitsError("the backward produced NaN or inf gradients")
    return comps, estimate


def _present(c: Component, pairs: Pairs) -> bool:
    if c.token is None:
        return True
    if c.segment == "question":
        return -pairs.ids.shape[2] <= c.token < 0
    return 0 <= c.token < pairs.answer.shape[1]


def _patch_for(c: Component, pairs: Pairs, theirs: dict, heads: int):
    """(key, (mask, value)) replacing component c's output by the partner's."""
    site = {"head": "attn"}.get(c.kind, c.kind)
    key = (site, c.layer, c.segment)
    value = theirs[key]
    m = _segment_mask(pairs, c.segment)  # [B, n]
    if c.token is not None:
        n = value.shape[1]
        t = c.token + n if c.segment == "question" else c.token
        only = torch.zeros_like(m)
        only[:, t] = True
        m = m & only
    m = m[..., None]
    if c.kind == "head":
        width = value.shape[-1] // heads
        cols = torch.zeros(value.shape[-1], dtype=torch.bool, device=value.device)
        cols[c.head * width : (c.head + 1) * width] = True
        m = m & cols
    return key, (m, value)


def question_kv(model: CodiModel, pairs: Pairs, side: int) -> list:
    """Per layer the keys and values of one side's clean question (a loop reuses them when it
    patches only later segments)."""
    from transformers import DynamicCache

    backbone = model.lm.base_model
    ids, mask = pairs.ids[side], pairs.mask[side]
    cache = DynamicCache()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    backbone(inputs_embeds=model.embed(ids), attention_mask=mask, position_ids=pos,
             use_cache=True, **{cache_arg_name(backbone): cache})  # fmt: skip
    return [tuple(t.clone() for t in layer_kv(cache, i)) for i in range(model.num_layers)]


def exact_effects(
    model: CodiModel, pairs: Pairs, components: Sequence[Component], fraction: float = 1.0
) -> torch.Tensor:
    """The metric [B, len(components)] with each component alone patched from the partner (with
    `fraction` < 1: moved that share of the way, a_base + fraction · (a_partner − a_base), whose
    finite difference checks the gradient)."""
    taps = Taps(model)
    try:
        with torch.no_grad():
            taps.mode = "record"
            run_loop(model, pairs, 1, taps)
            theirs = dict(taps.acts)
            if fraction != 1.0:
                taps.acts = {}
                run_loop(model, pairs, 0, taps)
                theirs = {k: a + fraction * (theirs[k] - a) for k, a in taps.acts.items()}
            taps.mode = "patch"
            mine = question_kv(model, pairs, 0)
            taps.patches = {}
            clean = run_loop(model, pairs, 0, taps, mine)
            out = []
            for c in components:
                if not _present(c, pairs):  # a token this batch's layout lacks: nothing patched
                    out.append(clean)
                    continue
                key, p = _patch_for(c, pairs, theirs, taps.heads)
                taps.patches = {key: p}
                kv = None if c.segment == "question" else mine
                out.append(run_loop(model, pairs, 0, taps, kv))
        return torch.stack(out, 1).cpu() if out else torch.zeros((pairs.ids.shape[1], 0))
    finally:
        taps.close()
