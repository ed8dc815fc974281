"""The engine: the latent loop of a loaded CODI model with edits at chosen sites.

Each batch's prompt is prefilled once (without bot) and the clean loop run once; an intervention
that starts at step s rewinds the preallocated KV cache to step s and reruns only steps s…K. The
answer is decoded by verifying drafts (the gold answer, the source's, the clean run's answer) in
one forward each: greedy decoding accepts a draft when every next-token argmax equals the draft's
next token; rows no draft explains are decoded token by token, as `latent.run_batch` does. The
same forward gives the gold answer's teacher-forced log-probability.

Every forward is one segment (a step, or the answer) with its key mask as `codi.masks` builds it
for the model's routing options (`thoughts_read_prompt`, `answer_reads_prompt`), so a model is
run as it was trained; attention knockouts act on top of that (`hooks.Hooks`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from opcircuits.codi.interventions.hooks import Hooks, rewind
from opcircuits.codi.interventions.kinds import Edit
from opcircuits.codi.interventions.spec import Problem
from opcircuits.codi.latent import forward_step, layer_kv, max_positions, new_cache, prefill
from opcircuits.codi.masks import answer_mask, thought_mask
from opcircuits.codi.model import CodiModel, cache_arg_name
from opcircuits.codi.prompt import answer_start_ids, gold_answer_ids, prompt_ids
from opcircuits.errors import OpcircuitsError


@dataclass
class Answer:
    """The decoded answer of one problem under one intervention."""

    ids: list[int]
    logp_gold: float
    logp_source: float | None = None
    # The source's answer token minus the gold's, log-probabilities at the first answer token
    # where they differ, teacher-forced along the gold answer (the logit difference).
    ld_first: float | None = None


@dataclass
class Batch:
    """One batch of problems with its prompt in the KV cache and its clean latent run."""

    rows: list[int]  # indices into the run's problem list
    cache: Any
    mask: torch.Tensor  # [B, T + extra] attention mask: prompt (left-padded), then ones
    last: torch.Tensor  # [B, 1] position id of bot (minus masked gaps before cache entries)
    T: int  # prompt length incl. bot (bot sits at cache index T - 1)
    clean_final: list[torch.Tensor] = field(default_factory=list)  # per step: [B, 1, D]
    clean_states: torch.Tensor | None = None  # [B, K+1, L, D] (recorded layers)
    clean_pos0: torch.Tensor | None = None  # [B, K+1, D] position embedding at layer 0
    # A stacked batch (`groups`): per row, which of its interventions the row runs.
    owner: torch.Tensor | None = None

    def positions(self, index: int, n: int) -> torch.Tensor:
        """Position ids of n tokens starting at cache index `index` (bot is at T - 1)."""
        offs = torch.arange(n, device=self.last.device)[None, :] + (index - (self.T - 1))
        return (self.last + offs).clamp(min=0)  # (< 0 only at masked pads of a window)


class Engine:
    """Runs the latent loop of a loaded CODI model with interventions (one model, many runs)."""

    def __init__(
        self,
        model: CodiModel,
        tokenizer,
        *,
        max_new_tokens: int = 64,
        prefill_tokens: int = 4096,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.K = model.config.num_latent
        self.n_layers = model.num_layers
        self.max_new_tokens = max_new_tokens
        self.prefill_tokens = prefill_tokens
        # The model's positions: an answer stops where they end, as `latent.run_batch` stops it
        # (a model with absolute positions cannot index beyond them).
        self.limit = max_positions(model)
        self.device = model.prj[1].weight.device
        self.dtype = model.prj[1].weight.dtype
        self.backbone = model.lm.base_model
        self.cache_name = cache_arg_name(self.backbone)
        self.eos = int(tokenizer.eos_token_id)
        self.answer_prefix = answer_start_ids(model, tokenizer)  # eot [eos]
        # GPT-2's absolute position embedding (layer 0 = input + it); None for rotary models.
        self.wpe = getattr(self.backbone, "wpe", None)
        self._pos0: list[torch.Tensor] = []  # the last `latents` call's position embeddings
        self._gold_cache: dict[str, tuple[list[int], int]] = {}
        # How answers were found: "draft" (a verified draft), "continued" (decoded on from a
        # draft's confirmed start), "decoded" (token by token from the answer prompt).
        self.stats: Counter[str] = Counter()

    # -- token sequences --------------------------------------------------------------------
    def gold_ids(self, gold: str) -> tuple[list[int], int]:
        """The answer prompt for a gold answer and the index whose logits predict its value's
        first token (the teacher-forced log-probability sums from there to the final EOS)."""
        if gold not in self._gold_cache:
            m = self.model
            ids, pos = gold_answer_ids(self.tokenizer, gold, m.eot_id, m.config.remove_eos)
            assert ids[: len(self.answer_prefix)] == self.answer_prefix
            self._gold_cache[gold] = (ids, pos)
        return self._gold_cache[gold]

    def prompt_length(self, question: str) -> int:
        return len(prompt_ids(self.model, self.tokenizer, question))

    # -- one forward ------------------------------------------------------------------------
    def _forward(self, b: Batch, index: int, embeds: torch.Tensor, segment: int | str):
        """Run `embeds` [B, n, D] at cache indices index … index+n-1 (the cache is rewound) as
        `segment` (a step: 0 = bot, k = thought k; or "answer"), with its key mask."""
        n = embeds.shape[1]
        rewind(b.cache, index)
        mask = b.mask[:, : index + n]
        if segment == "answer":
            mask = answer_mask(self.model.config, mask, b.T)
        elif segment != 0:
            mask = thought_mask(self.model.config, mask, b.T)
        positions = b.positions(index, n)
        if self.limit is not None:  # only tokens past a row's answer budget get here: unused
            positions = positions.clamp(max=self.limit - 1)
        self.hooks.segment, self.hooks.owner = segment, b.owner
        self.hooks.pos0 = None if self.wpe is None else self.wpe(positions[:, -1])
        return forward_step(
            self.backbone,
            self.cache_name,
            b.cache,
            mask,
            positions,
            embeds=embeds,
            hidden=False,
        )

    # -- batches ----------------------------------------------------------------------------
    def open_batch(
        self, problems: Sequence[Problem], rows: Sequence[int], room: int = 0, width: int = 0
    ) -> Batch:
        """Left-pad the prompts (to at least `width` tokens), prefill all but bot once, allocate
        the cache for the loop (and for answer prompts of up to `room` tokens besides the batch's
        own gold answers)."""
        m = self.model
        prompts = [prompt_ids(m, self.tokenizer, problems[i].question) for i in rows]
        B, T = len(prompts), max(width, *map(len, prompts))
        room = max([room] + [len(self.gold_ids(problems[i].gold)[0]) for i in rows])
        # Room for a draft or token-by-token decoding; no more, since attention reads the whole
        # preallocated cache at every step (a continuation needing more gets a cache of its own).
        extra = self.K + 1 + max(self.max_new_tokens + len(self.answer_prefix) + 1, room)
        ids = torch.full((B, T), m.pad_id, dtype=torch.long)
        mask = torch.zeros((B, T + extra), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, T - len(p) :] = torch.tensor(p)
            mask[i, T - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask[:, :T].cumsum(-1) - 1).clamp(min=0)
        cache = new_cache(m, T + extra)
        if T > 1:
            if not bool(mask[:, : T - 1].any(-1).all()):
                raise OpcircuitsError("a prompt has no token before bot", field="question")
            prefill(
                m,
                self.backbone,
                self.cache_name,
                ids[:, : T - 1],
                mask[:, : T - 1],
                pos[:, : T - 1],
                [0],
                cache,
                self.prefill_tokens,
            )
        return Batch(list(rows), cache, mask, pos[:, -1:], T)

    def latents(
        self,
        b: Batch,
        start: int,
        stop: int,
        edits: Mapping[int, Mapping[int, Edit]] | None = None,
        record: Sequence[int] | None = None,
    ) -> tuple[list[torch.Tensor], list[dict[int, torch.Tensor]]]:
        """Run steps start … stop (0 = bot) with `edits[step][layer]`, from the clean run's final
        state of step start-1. Returns each step's final state [B, 1, D] and, if `record`, the
        states at those layers."""
        m = self.model
        finals = b.clean_final[:start]
        recorded: list[dict[int, torch.Tensor]] = []
        pos0: list[torch.Tensor] = []
        hooks = self.hooks
        B = len(b.rows)
        for s in range(start, stop + 1):
            if s == 0:
                x = m.embed(torch.full((B, 1), m.bot_id, dtype=torch.long, device=self.device))
            else:
                x = m.project(finals[s - 1])
            hooks.edits = dict((edits or {}).get(s, {}))
            hooks.record = {} if record is not None else None
            try:
                out = self._forward(b, b.T - 1 + s, x, s)
                final = out.last_hidden_state[:, -1:]
                hooks.final(final)
            finally:
                rec, hooks.edits, hooks.record = hooks.record, {}, None
            finals.append(final)
            if hooks.pos0 is not None:
                pos0.append(hooks.pos0)
            if record is not None:
                assert rec is not None
                recorded.append({layer: rec[layer] for layer in record})
        self._pos0 = pos0
        return finals, recorded

    def run_clean(self, b: Batch, layers: Sequence[int]) -> torch.Tensor:
        """The clean latent loop of a batch; returns its states [B, K+1, L, D] (float32, CPU)."""
        finals, rec = self.latents(b, 0, self.K, record=layers)
        b.clean_final = finals
        states = torch.stack([torch.stack([r[x] for x in layers], 1) for r in rec], 1)
        b.clean_states = states
        b.clean_pos0 = torch.stack(self._pos0, 1).float().cpu() if self._pos0 else None
        return states.float().cpu()

    def swap_prompt(self, b: Batch, other: Batch) -> None:
        """Exchange the prompts' keys, values and masks (question + bot, cache indices 0 … T-1)
        of two batches of equal T, row by row (calling it again swaps them back)."""
        assert b.T == other.T and len(b.rows) == len(other.rows)
        for layer in range(self.n_layers):
            for mine, theirs in zip(
                layer_kv(b.cache, layer), layer_kv(other.cache, layer), strict=True
            ):
                tmp = mine[:, :, : b.T].clone()
                mine[:, :, : b.T] = theirs[:, :, : b.T]
                theirs[:, :, : b.T] = tmp
        tmp = b.mask[:, : b.T].clone()
        b.mask[:, : b.T] = other.mask[:, : b.T]
        other.mask[:, : b.T] = tmp

    # -- answers ----------------------------------------------------------------------------
    def budgets(self, b: Batch, index: int) -> list[int]:
        """Answer tokens each row may decode after the answer prompt fed at cache index `index`:
        `max_new_tokens`, or fewer where the model's positions end (as `latent._budgets`)."""
        if self.limit is None:
            return [self.max_new_tokens] * len(b.rows)
        eot = (b.last[:, 0] + (index - (b.T - 1))).tolist()  # position of eot, per row
        P = len(self.answer_prefix)
        return [max(0, min(self.max_new_tokens, self.limit - int(e) - P + 1)) for e in eot]

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden).float()

    def _verify(
        self,
        b: Batch,
        index: int,
        drafts: Sequence[Sequence[int]],
        score_from: Sequence[int],
        contrast: Sequence[Sequence[int] | None] | None = None,
    ) -> tuple[list[list[int]], list[bool], list[float]]:
        """Feed each row's draft answer prompt (all but its last token) at cache index `index`.

        Greedy decoding would produce the draft's answer tokens as long as each next-token argmax
        (eot excluded) equals the draft's next token, and at the first mismatch it produces the
        argmax. Returns per row those greedy tokens (the confirmed start of the greedy answer),
        whether they are the whole answer (EOS or `max_new_tokens` reached), and the draft's
        teacher-forced log-probability from token `score_from[row]` on. With `contrast` (another
        answer prompt per row, or None), `self.first_ld` holds per row the log-probability of the
        contrast's token minus the draft's at the first token where they differ."""
        m = self.model
        n = max(len(d) for d in drafts) - 1
        ids = torch.full((len(drafts), n), self.eos, dtype=torch.long)
        for i, d in enumerate(drafts):
            ids[i, : len(d) - 1] = torch.tensor(d[:-1])
        ids = ids.to(self.device)
        out = self._forward(b, index, m.embed(ids), "answer")
        logp = torch.log_softmax(self._logits(out.last_hidden_state), dim=-1)
        target = torch.zeros_like(ids)
        target[:, :-1] = ids[:, 1:]
        for i, d in enumerate(drafts):
            target[i, len(d) - 2] = d[-1]
        tok_logp = logp.gather(-1, target[..., None])[..., 0].cpu()
        self.first_ld = [_first_ld(logp[i], d, c) for i, (d, c) in enumerate(
            zip(drafts, contrast or [None] * len(drafts), strict=True))]  # fmt: skip
        logp[..., m.eot_id] = float("-inf")
        greedy = logp.argmax(-1).cpu().tolist()
        P = len(self.answer_prefix)
        budgets = self.budgets(b, index)
        prefixes, complete, scores = [], [], []
        for i, d in enumerate(drafts):
            scores.append(float(tok_logp[i, score_from[i] : len(d) - 1].sum()))
            ans = list(d[P:])
            g = greedy[i][P - 1 : len(d) - 1]  # greedy's token at each answer position
            limit = min(len(ans), budgets[i])
            j = next((t for t in range(limit) if g[t] != ans[t]), limit)
            got = ans[:j] + ([g[j]] if j < limit else [])
            prefixes.append(got)
            complete.append(len(got) >= budgets[i] or (bool(got) and got[-1] == self.eos))
        return prefixes, complete, scores

    def subset(self, b: Batch, keep: Sequence[int], index: int, capacity: int = 0) -> Batch:
        """A batch of some rows, with a copy of their first `index` cache positions in a cache of
        at least `capacity` positions (the batch itself when it has all rows and room)."""
        capacity = max(capacity, b.mask.shape[1])
        if len(keep) == len(b.rows) and capacity == b.mask.shape[1]:
            return b
        r = torch.tensor(list(keep), device=self.device)
        cache = new_cache(self.model, capacity)
        for layer in range(self.n_layers):
            k, v = layer_kv(b.cache, layer)
            cache.update(k[r, :, :index].contiguous(), v[r, :, :index].contiguous(), layer)
        mask = b.mask.new_ones((len(keep), capacity))
        mask[:, : b.mask.shape[1]] = b.mask[r]
        owner = None if b.owner is None else b.owner[r]
        return Batch([b.rows[i] for i in keep], cache, mask, b.last[r], b.T, owner=owner)

    def _greedy(self, b: Batch, index: int, known: Sequence[list[int]]) -> list[list[int]]:
        """Greedy decoding after the answer prompt, each row continuing from its `known` first
        answer tokens: one forward of the rows' prompts plus known tokens, left-padded to a common
        length (pads masked, position ids counted per row, as for the question prompts), then one
        forward per token."""
        m = self.model
        B = len(b.rows)
        budgets = self.budgets(b, index)
        seqs = [list(self.answer_prefix) + list(k) for k in known]
        W = max(map(len, seqs))
        ids = torch.full((B, W), self.eos, dtype=torch.long)
        mask = b.mask.clone()
        shift = torch.zeros((B, 1), dtype=torch.long)
        for i, q in enumerate(seqs):
            ids[i, W - len(q) :] = torch.tensor(q)
            mask[i, index : index + W - len(q)] = 0
            shift[i] = W - len(q)
        b = Batch(b.rows, b.cache, mask, b.last - shift.to(self.device), b.T, owner=b.owner)
        x = m.embed(ids.to(self.device))
        answers = [list(k) for k in known]
        running = [i for i in range(B) if len(answers[i]) < budgets[i]]
        for _ in range(max(budgets) - min(map(len, known))):
            if not running:
                break
            out = self._forward(b, index, x, "answer")
            index += x.shape[1]
            logits = self._logits(out.last_hidden_state[:, -1])
            logits[:, m.eot_id] = float("-inf")
            nxt = logits.argmax(-1)
            tokens = nxt.tolist()
            for i in running:
                answers[i].append(tokens[i])
            running = [i for i in running if tokens[i] != self.eos and len(answers[i]) < budgets[i]]
            if not running:
                break
            x = m.embed(nxt[:, None])
        return answers

    def decode(
        self,
        b: Batch,
        thoughts: int,
        gold: Sequence[tuple[list[int], int]],
        drafts: Sequence[Sequence[Sequence[int]]] = (),
        source: Sequence[tuple[list[int], int] | None] | None = None,
        naive: bool = False,
        shift: int = 0,
    ) -> list[Answer]:
        """Answers after `thoughts` latent steps (eot at cache index T + thoughts, position ids
        `shift` later than right after them): the gold answer's teacher-forced log-probability
        (and the source's, with the logit difference at their first differing token), and the
        greedy answer, found by verifying the gold answer, the source's and each row's `drafts`
        in one forward each, then decoding token by token from the longest confirmed start what
        none of them explains."""
        if shift:
            b = dataclasses.replace(b, last=b.last + shift)
        index = b.T + thoughts
        B = len(b.rows)
        P = list(self.answer_prefix)
        contrast = [s[0] if s is not None else None for s in source] if source else None
        known, done, logp_gold = self._verify(
            b, index, [g[0] for g in gold], [g[1] for g in gold], contrast
        )
        ld_first = list(self.first_ld)
        tried = [[list(g[0])] for g in gold]

        def take(rows: Sequence[int], got, complete) -> None:
            for i, k, c in zip(rows, got, complete, strict=True):
                if len(k) > len(known[i]) or c:
                    known[i], done[i] = k, c

        if naive:  # token by token from the answer prompt
            known, done = [[] for _ in range(B)], [False] * B
        logp_source: list[float | None] = [None] * B
        if source is not None and any(s is not None for s in source):
            src = [s if s is not None else g for s, g in zip(source, gold, strict=True)]
            got, complete, scores = self._verify(b, index, [s[0] for s in src], [s[1] for s in src])
            for i in range(B):
                if source[i] is not None:
                    logp_source[i] = scores[i]
                    tried[i].append(list(src[i][0]))
            if not naive:
                take(range(B), got, complete)
        for r in range(0 if naive else max(map(len, drafts), default=0)):
            rows = [i for i in range(B) if not done[i] and r < len(drafts[i])]
            cand = {i: P + list(drafts[i][r]) for i in rows}
            rows = [i for i in rows if cand[i] not in tried[i]]
            if not rows:
                continue
            sub = self.subset(b, rows, index)
            # A truncated draft (no EOS) gets a dummy last token: the last token is never fed.
            feed = [cand[i] if cand[i][-1] == self.eos else cand[i] + [self.eos] for i in rows]
            got, complete, _ = self._verify(sub, index, feed, [len(P)] * len(rows))
            take(rows, got, complete)
            for i in rows:
                tried[i].append(cand[i])
        todo = [i for i in range(B) if not done[i]]
        self.stats["draft"] += B - len(todo)
        self.stats["continued"] += sum(bool(known[i]) for i in todo)
        self.stats["decoded"] += sum(not known[i] for i in todo)
        if todo:
            start = [known[i] for i in todo]
            # The window (answer prompt + longest known start), then the shortest one's rest.
            need = len(P) + max(map(len, start)) + self.max_new_tokens - min(map(len, start))
            sub = self.subset(b, todo, index, index + need)
            rest = self._greedy(sub, index, start)
            for i, ids in zip(todo, rest, strict=True):
                known[i] = ids
        return [Answer(known[i], logp_gold[i], logp_source[i], ld_first[i]) for i in range(B)]

    # -- hooks ------------------------------------------------------------------------------
    def __enter__(self) -> Engine:
        self.hooks = Hooks(self.backbone, self.n_layers)
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.close()


def _first_ld(logp: torch.Tensor, draft: Sequence[int], other: Sequence[int] | None):
    """log p(other's token) − log p(draft's token) at the first answer token where they differ,
    from the draft's teacher-forced log-probabilities `logp` [n, V] (None: no contrast, or the
    same answer)."""
    if other is None:
        return None
    n = min(len(draft), len(other))
    d = next((t for t in range(n) if draft[t] != other[t]), None)
    if d is None or d == 0:
        return None
    return float(logp[d - 1, other[d]] - logp[d - 1, draft[d]])
