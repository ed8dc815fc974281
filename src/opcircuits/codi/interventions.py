"""Causal interventions on the batched latent loop: ablate, resample, patch, steer, truncate.

A *site* is a (position, layer) pair: positions `bot` (step 0) and `latent_1 … latent_K` (steps
1…K), layers as in the thought store (Hugging Face `hidden_states` indices: 0 = the input of block
1 — for latent steps the fed-back projected vector (GPT-2 adds its position embedding) —, l = the
output of block l, and the last layer is the final hidden state after the final norm, the one the
projection and the LM head read). An intervention replaces the state at its sites during the
forward of that step, so later layers and later steps (through the KV cache) see the change
exactly as if the model had produced it:

- `zero` — zeros; `mean` — the site's mean over the reference set (the problems of the run);
  `resample` — the same site's state from another problem of the set (a seeded draw per problem);
  `patch` — the same site's state from a given source problem (a counterfactual partner, or any
  mapping); `steer` — `h + α · s · u`, u a unit direction (a difference of category means at the
  site, a seeded random direction as its control, or any given vector) and s the site's mean
  state norm; `truncate` — stop after k < K thoughts and go to eot early; `none` — the clean run.

Measured per problem: the greedy answer, and the log-probability of the gold answer's value
tokens and EOS, teacher-forced through the answer prompt CODI was trained on (eot [eos] "The
answer is: N" eos; `codi.train_data.tokenize_example`); for patching also the source's.

Speed. Each batch's prompt is prefilled once (without bot) and the clean loop run once; an
intervention that starts at step s rewinds the preallocated KV cache to step s and reruns only
steps s…K (the entries before s are the clean run's, untouched: interventions run in decreasing
order of their first step, and each only writes at or after it). The answer is decoded by
verifying drafts — the gold answer, the source's gold answer, the clean run's answer — in one
forward each (greedy decoding accepts a draft when every next-token argmax equals the draft's next
token), so an answer the intervention does not change costs one forward instead of one per token;
rows no draft explains are decoded token by token, as `latent.run_batch` does. The same forward
gives the gold answer's teacher-forced log-probability. `naive=True` instead reruns the prompt and
every step and decodes token by token (the baseline of `benchmarks/intervene.py`).

Layer edits are forward hooks on the decoder blocks (layer 0: a pre-hook on block 1's input; layer
l < n: block l's output; layer n: the final hidden state after the forward). The clean run goes
through the same step function as the interventions, so an identity intervention (patching a
problem from itself, steering with α = 0, truncating at K) reproduces it bit for bit.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from opcircuits.codi.latent import (
    _layer_kv,
    _new_cache,
    _one_query_attention,
    _prefill,
    _step,
    answer_start_ids,
    decode_answer,
    extract_number,
    prompt_ids,
)
from opcircuits.codi.model import CodiModel, cache_arg_name
from opcircuits.errors import OpcircuitsError

log = logging.getLogger(__name__)

KINDS = ("none", "zero", "mean", "resample", "patch", "steer", "truncate")
SITE_KINDS = ("zero", "mean", "resample", "patch", "steer")
DIRECTIONS = ("diff", "random")  # built-in steering directions (others are given by the caller)


# --- sites and interventions ----------------------------------------------------------------------


def position_name(step: int) -> str:
    return "bot" if step == 0 else f"latent_{step}"


def position_step(name: str, num_latent: int) -> int:
    """`bot` → 0, `latent_k` → k (1 ≤ k ≤ K)."""
    if name == "bot":
        return 0
    m = re.fullmatch(r"latent_(\d+)", name)
    if m and 1 <= int(m.group(1)) <= num_latent:
        return int(m.group(1))
    raise OpcircuitsError(
        f"unknown position {name!r}: positions are bot, latent_1 .. latent_{num_latent}",
        field="sites",
    )


@dataclass(frozen=True, order=True)
class Site:
    step: int  # 0 = bot, k = latent_k
    layer: int  # hidden_states index: 0 = block input, l = block l output, n = final (normed)

    @property
    def name(self) -> str:
        return f"{position_name(self.step)}@{self.layer}"


def parse_sites(spec: str, num_latent: int, num_layers: int) -> list[tuple[Site, ...]]:
    """Site sets from text: comma-separated items, each `POS@LAYER` or several joined by `+` (one
    intervention on all of them). POS is `bot`, `latent_k`, `latents` (every latent step at once)
    or `*` (each position in turn); LAYER is a number, `*` (each layer in turn) or `all` (every
    layer at once). `all` alone = every single site. Example: `latent_3@*,latents@0,bot@2+bot@3`."""
    positions = [position_name(s) for s in range(num_latent + 1)]
    out: list[tuple[Site, ...]] = []
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        if item == "all":
            item = "*@*"
        # Expand `*` into one set per value; `latents` / `all` stay joint within a set.
        variants: list[list[str]] = [[]]
        for part in item.split("+"):
            if "@" not in part:
                raise OpcircuitsError(
                    f"site {part!r} must be POS@LAYER (e.g. latent_3@2)", field="sites"
                )
            pos, layer = (p.strip() for p in part.split("@", 1))
            choices = [
                f"{p}@{lay}"
                for p in (positions if pos == "*" else [pos])
                for lay in (range(num_layers + 1) if layer == "*" else [layer])
            ]
            variants = [v + [c] for v in variants for c in choices]
        for v in variants:
            sites: set[Site] = set()
            for part in v:
                pos, layer = part.split("@", 1)
                steps = (
                    list(range(1, num_latent + 1))
                    if pos == "latents"
                    else [position_step(pos, num_latent)]
                )
                if layer == "all":
                    layers = list(range(num_layers + 1))
                else:
                    try:
                        layers = [int(layer)]
                    except ValueError:
                        raise OpcircuitsError(
                            f"layer {layer!r} in {item!r} is not a number, * or all", field="sites"
                        ) from None
                    if not 0 <= layers[0] <= num_layers:
                        raise OpcircuitsError(
                            f"layer {layers[0]} in {item!r} out of range: this model has "
                            f"{num_layers} blocks, so layers are 0 .. {num_layers}",
                            field="sites",
                        )
                sites.update(Site(s, lay) for s in steps for lay in layers)
            key = tuple(sorted(sites))
            if key not in out:
                out.append(key)
    if not out:
        raise OpcircuitsError("no sites given", field="sites")
    return out


def sites_name(sites: Sequence[Site]) -> str:
    return "+".join(s.name for s in sites)


@dataclass(frozen=True)
class Intervention:
    """One intervention, applied to every problem of a run. See the module docstring."""

    kind: str
    sites: tuple[Site, ...] = ()
    alpha: float = 0.0  # steer: multiples of the site's mean state norm
    direction: str = ""  # steer: "diff", "random" or a key of Reference.directions
    keep: int | None = None  # truncate: the number of thoughts kept (0 … K-1)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise OpcircuitsError(
                f"unknown intervention {self.kind!r}; one of {', '.join(KINDS)}", field="kinds"
            )
        if (self.kind in SITE_KINDS) != bool(self.sites):
            raise OpcircuitsError(f"{self.kind}: sites are needed for {SITE_KINDS} only")
        if self.kind == "truncate" and (self.keep is None or self.keep < 0):
            raise OpcircuitsError("truncate needs keep >= 0", field="keep")
        if self.kind == "steer" and not self.direction:
            raise OpcircuitsError("steer needs a direction", field="direction")

    @property
    def label(self) -> str:
        """A unique, readable name (the `intervention` column)."""
        if self.kind == "none":
            return "none"
        if self.kind == "truncate":
            return f"truncate {self.keep}"
        if self.kind == "steer":
            return f"steer {self.direction} {self.alpha:+g} {sites_name(self.sites)}"
        return f"{self.kind} {sites_name(self.sites)}"

    def start(self, num_latent: int) -> int:
        """The first step this intervention changes (K + 1 = only the answer)."""
        if self.kind == "truncate":
            return min(self.keep, num_latent) + 1  # type: ignore[type-var]
        if self.kind == "none":
            return num_latent + 1
        return min(s.step for s in self.sites)

    def thoughts(self, num_latent: int) -> int:
        return min(self.keep, num_latent) if self.kind == "truncate" else num_latent  # type: ignore[type-var]


# --- problems and the reference set ---------------------------------------------------------------


@dataclass
class Problem:
    """What the loop needs of one problem record."""

    id: str
    question: str
    gold: str  # the final answer as written after "The answer is: " in training
    category: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Problem:
        gold = record.get("final_answer")
        if gold is None and record.get("final_value") is not None:
            value = record["final_value"]
            gold = str(int(value)) if float(value).is_integer() else str(value)
        if not isinstance(gold, str) or not gold.strip():
            raise OpcircuitsError("no final answer", field="final_answer")
        question = record.get("question")
        if not isinstance(question, str) or not question.strip():
            raise OpcircuitsError("empty question", field="question")
        return cls(str(record["id"]), question, gold.strip(), record.get("category"))

    @property
    def gold_value(self) -> float | None:
        return extract_number(self.gold)


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
    mean: torch.Tensor = field(init=False)  # [K+1, L, D]
    norm: torch.Tensor = field(init=False)  # [K+1, L]
    index: dict[str, int] = field(init=False)  # problem id → row
    directions: dict[str, torch.Tensor] = field(default_factory=dict)  # name → [K+1, L, D] unit

    def __post_init__(self) -> None:
        if not torch.isfinite(self.states).all():
            raise OpcircuitsError("the clean run produced NaN or inf hidden states")
        ref = self.states[self.reference_rows]
        self.mean = ref.mean(0)
        self.norm = ref.norm(dim=-1).mean(0)
        self.index = {p.id: i for i, p in enumerate(self.problems)}

    def layer_index(self, layer: int) -> int:
        return self.layers.index(layer)

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


# --- the engine ----------------------------------------------------------------------------------


def _blocks(backbone: nn.Module, n: int) -> nn.ModuleList:
    for name in ("layers", "h", "blocks"):
        mods = getattr(backbone, name, None)
        if isinstance(mods, nn.ModuleList) and len(mods) == n:
            return mods
    raise OpcircuitsError(f"cannot find the {n} decoder blocks of {type(backbone).__name__}")


def _rewind(cache, length: int) -> None:
    """Make the cache hold its first `length` positions (later ones are overwritten next)."""
    layers = getattr(cache, "layers", None)
    if layers and hasattr(layers[0], "cumulative_length"):
        for layer in layers:
            layer.cumulative_length.fill_(length)
    else:
        cache.crop(length)


Edit = Callable[[torch.Tensor], torch.Tensor]  # state [B, D] → new state [B, D]


class _Hooks:
    """Forward hooks that edit and record the last position's state at chosen layers."""

    def __init__(self, backbone: nn.Module, num_layers: int) -> None:
        self.n = num_layers
        self.edits: dict[int, Edit] = {}
        self.record: dict[int, torch.Tensor] | None = None
        blocks = _blocks(backbone, num_layers)
        self.handles = [blocks[0].register_forward_pre_hook(self._pre)]
        for i in range(num_layers - 1):  # output of block i+1 = hidden_states[i+1]
            self.handles.append(blocks[i].register_forward_hook(self._post(i + 1)))

    def _apply(self, layer: int, h: torch.Tensor) -> None:
        edit = self.edits.get(layer)
        if edit is not None:
            h[:, -1] = edit(h[:, -1])
        if self.record is not None:
            self.record[layer] = h[:, -1].clone()

    def _pre(self, module, args):
        self._apply(0, args[0])

    def _post(self, layer: int):
        def hook(module, args, output):
            self._apply(layer, output[0] if isinstance(output, tuple) else output)

        return hook

    def final(self, h: torch.Tensor) -> None:
        """The last layer (after the final norm) is edited and recorded after the forward."""
        self._apply(self.n, h)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@dataclass
class Answer:
    """The decoded answer of one problem under one intervention."""

    ids: list[int]
    logp_gold: float
    logp_source: float | None = None


@dataclass
class _Batch:
    """One batch of problems with its prompt in the KV cache and its clean latent run."""

    rows: list[int]  # indices into the run's problem list
    cache: Any
    mask: torch.Tensor  # [B, T + extra] attention mask: prompt (left-padded), then ones
    last: torch.Tensor  # [B, 1] position id of bot (minus masked gaps before cache entries)
    T: int  # prompt length incl. bot (bot sits at cache index T - 1)
    clean_final: list[torch.Tensor] = field(default_factory=list)  # per step: [B, 1, D]
    clean_states: torch.Tensor | None = None  # [B, K+1, L, D] (recorded layers)

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
        self.device = model.prj[1].weight.device
        self.dtype = model.prj[1].weight.dtype
        self.backbone = model.lm.base_model
        self.cache_name = cache_arg_name(self.backbone)
        self.eos = int(tokenizer.eos_token_id)
        self.answer_prefix = answer_start_ids(model, tokenizer)  # eot [eos]
        self._gold_cache: dict[str, tuple[list[int], int]] = {}
        # How answers were found: "draft" (a verified draft), "continued" (decoded on from a
        # draft's confirmed start), "decoded" (token by token from the answer prompt).
        self.stats: Counter[str] = Counter()

    # -- token sequences --------------------------------------------------------------------
    def gold_ids(self, gold: str) -> tuple[list[int], int]:
        """The answer prompt for a gold answer and the index whose logits predict its value's
        first token (the teacher-forced log-probability sums from there to the final EOS)."""
        from opcircuits.codi.training.examples import ANSWER_PREFIX, TextExample, tokenize_example

        if gold not in self._gold_cache:
            m = self.model
            ex = tokenize_example(
                TextExample("", "", "", ANSWER_PREFIX + gold),
                self.tokenizer,
                m.bot_id,
                m.eot_id,
                m.config.remove_eos,
            )
            assert ex.decoder_ids[: len(self.answer_prefix)] == self.answer_prefix
            self._gold_cache[gold] = (ex.decoder_ids, ex.student_pos)
        return self._gold_cache[gold]

    def prompt_length(self, question: str) -> int:
        return len(prompt_ids(self.model, self.tokenizer, question))

    # -- one forward ------------------------------------------------------------------------
    def _forward(self, b: _Batch, index: int, embeds: torch.Tensor, hidden: bool = False):
        """Run `embeds` [B, n, D] at cache indices index … index+n-1 (the cache is rewound)."""
        n = embeds.shape[1]
        _rewind(b.cache, index)
        return _step(
            self.backbone,
            self.cache_name,
            b.cache,
            b.mask[:, : index + n],
            b.positions(index, n),
            embeds=embeds,
            hidden=hidden,
        )

    # -- batches ----------------------------------------------------------------------------
    def open_batch(self, problems: Sequence[Problem], rows: Sequence[int], room: int = 0) -> _Batch:
        """Left-pad the prompts, prefill all but bot once, allocate the cache for the loop (and
        for answer prompts of up to `room` tokens besides the batch's own gold answers)."""
        m = self.model
        prompts = [prompt_ids(m, self.tokenizer, problems[i].question) for i in rows]
        B, T = len(prompts), max(map(len, prompts))
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
        cache = _new_cache(m, T + extra)
        if T > 1:
            if not bool(mask[:, : T - 1].any(-1).all()):
                raise OpcircuitsError("a prompt has no token before bot", field="question")
            _prefill(
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
        return _Batch(list(rows), cache, mask, pos[:, -1:], T)

    def latents(
        self,
        b: _Batch,
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
                out = self._forward(b, b.T - 1 + s, x)
                final = out.last_hidden_state[:, -1:]
                hooks.final(final)
            finally:
                rec, hooks.edits, hooks.record = hooks.record, {}, None
            finals.append(final)
            if record is not None:
                assert rec is not None
                recorded.append({layer: rec[layer] for layer in record})
        return finals, recorded

    def run_clean(self, b: _Batch, layers: Sequence[int]) -> torch.Tensor:
        """The clean latent loop of a batch; returns its states [B, K+1, L, D] (float32, CPU)."""
        finals, rec = self.latents(b, 0, self.K, record=layers)
        b.clean_final = finals
        states = torch.stack([torch.stack([r[x] for x in layers], 1) for r in rec], 1)
        b.clean_states = states
        return states.float().cpu()

    # -- answers ----------------------------------------------------------------------------
    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden).float()

    def _verify(
        self, b: _Batch, index: int, drafts: Sequence[Sequence[int]], score_from: Sequence[int]
    ) -> tuple[list[list[int]], list[bool], list[float]]:
        """Feed each row's draft answer prompt (all but its last token) at cache index `index`.

        Greedy decoding would produce the draft's answer tokens as long as each next-token argmax
        (eot excluded) equals the draft's next token, and at the first mismatch it produces the
        argmax. Returns per row those greedy tokens (the confirmed start of the greedy answer),
        whether they are the whole answer (EOS or `max_new_tokens` reached), and the draft's
        teacher-forced log-probability from token `score_from[row]` on."""
        m = self.model
        n = max(len(d) for d in drafts) - 1
        ids = torch.full((len(drafts), n), self.eos, dtype=torch.long)
        for i, d in enumerate(drafts):
            ids[i, : len(d) - 1] = torch.tensor(d[:-1])
        ids = ids.to(self.device)
        out = self._forward(b, index, m.embed(ids))
        logp = torch.log_softmax(self._logits(out.last_hidden_state), dim=-1)
        target = torch.zeros_like(ids)
        target[:, :-1] = ids[:, 1:]
        for i, d in enumerate(drafts):
            target[i, len(d) - 2] = d[-1]
        tok_logp = logp.gather(-1, target[..., None])[..., 0].cpu()
        logp[..., m.eot_id] = float("-inf")
        greedy = logp.argmax(-1).cpu().tolist()
        P = len(self.answer_prefix)
        prefixes, complete, scores = [], [], []
        for i, d in enumerate(drafts):
            scores.append(float(tok_logp[i, score_from[i] : len(d) - 1].sum()))
            ans = list(d[P:])
            g = greedy[i][P - 1 : len(d) - 1]  # greedy's token at each answer position
            limit = min(len(ans), self.max_new_tokens)
            j = next((t for t in range(limit) if g[t] != ans[t]), limit)
            got = ans[:j] + ([g[j]] if j < limit else [])
            prefixes.append(got)
            complete.append(len(got) >= self.max_new_tokens or (bool(got) and got[-1] == self.eos))
        return prefixes, complete, scores

    def _subset(self, b: _Batch, keep: Sequence[int], index: int, capacity: int = 0) -> _Batch:
        """A batch of some rows, with a copy of their first `index` cache positions in a cache of
        at least `capacity` positions (the batch itself when it has all rows and room)."""
        capacity = max(capacity, b.mask.shape[1])
        if len(keep) == len(b.rows) and capacity == b.mask.shape[1]:
            return b
        r = torch.tensor(list(keep), device=self.device)
        cache = _new_cache(self.model, capacity)
        for layer in range(self.n_layers):
            k, v = _layer_kv(b.cache, layer)
            cache.update(k[r, :, :index].contiguous(), v[r, :, :index].contiguous(), layer)
        mask = b.mask.new_ones((len(keep), capacity))
        mask[:, : b.mask.shape[1]] = b.mask[r]
        return _Batch([b.rows[i] for i in keep], cache, mask, b.last[r], b.T)

    def _greedy(self, b: _Batch, index: int, known: Sequence[list[int]]) -> list[list[int]]:
        """Greedy decoding after the answer prompt, each row continuing from its `known` first
        answer tokens: one forward of the rows' prompts plus known tokens, left-padded to a common
        length (pads masked, position ids counted per row, as for the question prompts), then one
        forward per token."""
        m = self.model
        B = len(b.rows)
        seqs = [list(self.answer_prefix) + list(k) for k in known]
        W = max(map(len, seqs))
        ids = torch.full((B, W), self.eos, dtype=torch.long)
        mask = b.mask.clone()
        shift = torch.zeros((B, 1), dtype=torch.long)
        for i, q in enumerate(seqs):
            ids[i, W - len(q) :] = torch.tensor(q)
            mask[i, index : index + W - len(q)] = 0
            shift[i] = W - len(q)
        b = _Batch(b.rows, b.cache, mask, b.last - shift.to(self.device), b.T)
        x = m.embed(ids.to(self.device))
        answers = [list(k) for k in known]
        running = list(range(B))
        for _ in range(self.max_new_tokens - min(map(len, known))):
            out = self._forward(b, index, x)
            index += x.shape[1]
            logits = self._logits(out.last_hidden_state[:, -1])
            logits[:, m.eot_id] = float("-inf")
            nxt = logits.argmax(-1)
            tokens = nxt.tolist()
            for i in running:
                answers[i].append(tokens[i])
            running = [
                i
                for i in running
                if tokens[i] != self.eos and len(answers[i]) < self.max_new_tokens
            ]
            if not running:
                break
            x = m.embed(nxt[:, None])
        return answers

    def decode(
        self,
        b: _Batch,
        thoughts: int,
        gold: Sequence[tuple[list[int], int]],
        drafts: Sequence[Sequence[Sequence[int]]] = (),
        source: Sequence[tuple[list[int], int] | None] | None = None,
        naive: bool = False,
    ) -> list[Answer]:
        """Answers after `thoughts` latent steps (eot at cache index T + thoughts): the gold
        answer's teacher-forced log-probability (and the source's), and the greedy answer, found by
        verifying the gold answer, the source's and each row's `drafts` in one forward each, then
        decoding token by token from the longest confirmed start what none of them explains."""
        index = b.T + thoughts
        B = len(b.rows)
        P = list(self.answer_prefix)
        known, done, logp_gold = self._verify(b, index, [g[0] for g in gold], [g[1] for g in gold])
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
            sub = self._subset(b, rows, index)
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
            sub = self._subset(b, todo, index, index + need)
            rest = self._greedy(sub, index, start)
            for i, ids in zip(todo, rest, strict=True):
                known[i] = ids
        return [Answer(known[i], logp_gold[i], logp_source[i]) for i in range(B)]

    # -- hooks ------------------------------------------------------------------------------
    def __enter__(self) -> Engine:
        self.hooks = _Hooks(self.backbone, self.n_layers)
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.close()


# --- runs ---------------------------------------------------------------------------------------


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar prompt length (longest first, ties by index)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def clean_reference(
    engine: Engine,
    problems: Sequence[Problem],
    batches: Sequence[Sequence[int]],
    layers: Sequence[int],
    *,
    reference_rows: Sequence[int] | None = None,
) -> Reference:
    """The clean states of `problems` at every step and `layers`, batched as `batches`. Use the
    interventions' own batches for the problems they run on, so that the states an intervention
    copies in (mean, resample, patch) are bit-identical to its clean run's."""
    states: torch.Tensor | None = None
    with engine:
        for rows in batches:
            b = engine.open_batch(problems, rows)
            with _one_query_attention(engine.model):
                got = engine.run_clean(b, layers)
            if states is None:
                states = torch.empty((len(problems), *got.shape[1:]))
            states[list(rows)] = got
    assert states is not None
    ref_rows = list(range(len(problems))) if reference_rows is None else list(reference_rows)
    return Reference(list(problems), states, list(layers), ref_rows)


@dataclass
class Sources:
    """Where `resample` and `patch` take each problem's states from: per reference row, the
    reference row of its source (`patch`: None where a problem has none)."""

    resample: list[int] | None = None
    patch: list[int | None] | None = None


def _site_edit(
    iv: Intervention,
    site: Site,
    ref: Reference,
    src_rows: list[int] | None,
    dtype: torch.dtype,
    device: torch.device,
) -> Edit:
    li = ref.layer_index(site.layer)
    if iv.kind == "zero":
        return torch.zeros_like
    if iv.kind == "mean":
        mean = ref.mean[site.step, li].to(device=device, dtype=dtype)
        return lambda h: mean.expand_as(h)
    if iv.kind in ("resample", "patch"):
        assert src_rows is not None
        value = ref.states[src_rows, site.step, li].to(device=device, dtype=dtype)
        return lambda h: value
    if iv.kind == "steer":
        if iv.direction not in ref.directions:
            raise OpcircuitsError(f"no steering direction {iv.direction!r}", field="direction")
        u = ref.directions[iv.direction][site.step, li]
        delta = (iv.alpha * float(ref.norm[site.step, li]) * u).to(device=device, dtype=dtype)
        return lambda h: h + delta
    raise AssertionError(iv.kind)


@dataclass
class Outcome:
    """One problem under one intervention."""

    problem: int  # index into the run's problems
    intervention: Intervention
    answer_ids: list[int]
    answer_text: str
    predicted: float | None
    correct: bool
    logp_gold: float
    source: int | None = None  # resample/patch: the source's reference row
    logp_source: float | None = None  # patch: the source's gold answer, teacher-forced
    states: torch.Tensor | None = None  # [K+1, L, D] at the reference layers, when recorded


@torch.inference_mode()
def run_interventions(
    engine: Engine,
    problems: Sequence[Problem],
    batches: Sequence[Sequence[int]],
    interventions: Sequence[Intervention],
    reference: Reference,
    *,
    sources: Sources | None = None,
    record: bool = False,
    naive: bool = False,
) -> Iterator[list[Outcome]]:
    """Every intervention on every problem of `batches`, one batch at a time: yields that batch's
    outcomes, the clean run's (`none`) first, then each intervention's in the given order.

    Problem i's states are `reference.states[reference.index[problems[i].id]]`. With `record`, each
    outcome carries its states (for tests). With `naive`, each intervention reruns the prompt and
    every step and decodes token by token: the benchmark's baseline, same results."""
    sources = sources or Sources()
    K = engine.K
    order = sorted(range(len(interventions)), key=lambda j: -interventions[j].start(K))
    room = max((len(engine.gold_ids(p.gold)[0]) for p in reference.problems), default=0)
    with engine:
        for rows in batches:
            ref_rows = [reference.index[problems[i].id] for i in rows]
            b = engine.open_batch(problems, rows, room)
            with _one_query_attention(engine.model):
                engine.run_clean(b, reference.layers)
                gold = [engine.gold_ids(problems[i].gold) for i in rows]
                clean = engine.decode(b, K, gold, naive=naive)
                out = [
                    _outcome(engine, problems[i], i, Intervention("none"), a, None)
                    for i, a in zip(rows, clean, strict=True)
                ]
                if record:
                    assert b.clean_states is not None
                    for o, st in zip(out, b.clean_states, strict=True):
                        o.states = st.float().cpu()
                done: dict[int, list[Outcome]] = {}
                for j in order:
                    done[j] = _run_one(
                        engine, b, problems, rows, ref_rows, interventions[j], reference,
                        sources, gold, [a.ids for a in clean], record, naive, room,
                    )  # fmt: skip
            yield out + [o for j in range(len(interventions)) for o in done[j]]


def _run_one(
    engine: Engine,
    b: _Batch,
    problems: Sequence[Problem],
    rows: Sequence[int],
    ref_rows: Sequence[int],
    iv: Intervention,
    reference: Reference,
    sources: Sources,
    gold: Sequence[tuple[list[int], int]],
    clean_ids: Sequence[list[int]],
    record: bool,
    naive: bool,
    room: int,
) -> list[Outcome]:
    K = engine.K
    thoughts = iv.thoughts(K)
    src: list[int | None] = [None] * len(rows)
    src_rows = None
    if iv.kind in ("resample", "patch"):
        table = sources.resample if iv.kind == "resample" else sources.patch
        if table is None:
            raise OpcircuitsError(f"{iv.kind}: no source problems given", field="kinds")
        src = [table[r] for r in ref_rows]
        # A problem without a source is left as it is (patched from itself).
        src_rows = [s if s is not None else r for s, r in zip(src, ref_rows, strict=True)]
    edits: dict[int, dict[int, Edit]] = {}
    for site in iv.sites:
        edit = _site_edit(iv, site, reference, src_rows, engine.dtype, engine.device)
        edits.setdefault(site.step, {})[site.layer] = edit
    start = iv.start(K)
    if naive:  # the whole loop again: the prompt, then every step
        b = engine.open_batch(problems, rows, room)
        start = 0
    layers = reference.layers if record else None
    recorded = engine.latents(b, start, thoughts, edits, layers)[1] if start <= thoughts else []
    source_gold = None
    if iv.kind == "patch":
        source_gold = [
            engine.gold_ids(reference.problems[s].gold) if s is not None else None for s in src
        ]
    drafts = [[c] for c in clean_ids]
    answers = engine.decode(b, thoughts, gold, drafts, source_gold, naive=naive)
    outcomes = [
        _outcome(engine, problems[i], i, iv, a, s)
        for i, a, s in zip(rows, answers, src, strict=True)
    ]
    if record:
        B, L, D = len(rows), len(reference.layers), engine.model.hidden_size
        steps = []
        for s in range(K + 1):
            if s < start:
                assert b.clean_states is not None
                steps.append(b.clean_states[:, s].float().cpu())
            elif s - start < len(recorded):
                r = recorded[s - start]
                steps.append(torch.stack([r[x] for x in reference.layers], 1).float().cpu())
            else:  # steps after a truncation never ran
                steps.append(torch.full((B, L, D), float("nan")))
        for o, st in zip(outcomes, torch.stack(steps, 1), strict=True):
            o.states = st
    return outcomes


def _outcome(
    engine: Engine, problem: Problem, i: int, iv: Intervention, a: Answer, source: int | None
) -> Outcome:
    text = decode_answer(engine.model, engine.tokenizer, a.ids)
    predicted = extract_number(text)
    gold = problem.gold_value
    return Outcome(
        problem=i,
        intervention=iv,
        answer_ids=a.ids,
        answer_text=text,
        predicted=predicted,
        # As extraction scores it: the last number of the answer equals the gold value.
        correct=predicted is not None and predicted == gold,
        logp_gold=a.logp_gold,
        source=source,
        logp_source=a.logp_source,
    )


def outcome_rows(
    outcomes: Sequence[Outcome], problems: Sequence[Problem], reference: Reference
) -> list[dict[str, Any]]:
    """One table row per outcome (the `interventions.parquet` columns; see
    `opcircuits.analysis.causal`). `outcomes` must hold each problem's clean run (`none`), which
    `changed` compares with; patch outcomes of problems without a source are left out."""
    clean = {o.problem: o for o in outcomes if o.intervention.kind == "none"}
    K = reference.states.shape[1] - 1
    rows = []
    for o in outcomes:
        iv, p = o.intervention, problems[o.problem]
        if iv.kind == "patch" and o.source is None:
            continue
        single = iv.sites[0] if len(iv.sites) == 1 else None
        src = reference.problems[o.source] if o.source is not None else None
        src_gold = src.gold_value if src is not None else None
        follows = None
        if iv.kind == "patch" and src_gold is not None:
            follows = o.predicted is not None and o.predicted == src_gold
        rows.append(
            {
                "id": p.id,
                "category": p.category,
                "intervention": iv.label,
                "kind": iv.kind,
                "sites": sites_name(iv.sites),
                "position": position_name(single.step) if single else None,
                "layer": single.layer if single else None,
                "alpha": iv.alpha if iv.kind == "steer" else None,
                "direction": iv.direction or None,
                "thoughts": iv.thoughts(K),
                "gold": p.gold_value,
                "answer_text": o.answer_text,
                "predicted": o.predicted,
                "correct": o.correct,
                "changed": o.answer_ids != clean[o.problem].answer_ids,
                "logp_gold": o.logp_gold,
                "source_id": src.id if src is not None else None,
                "source_gold": src_gold,
                "logp_source": o.logp_source,
                "follows_source": follows,
            }
        )
    return rows
