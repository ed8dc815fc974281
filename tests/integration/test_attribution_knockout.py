"""The acceptance test of attribution patching (issue 22): in a tiny trained model where one MLP
is knocked out for one operation only (built here), the method ranks that MLP first for that
operation, and its exact patch confirms it (sign-flip permutation p < 0.05 over pairs).

The model is the shipped `demo-rules` (trained from scratch; its answer may not read the
question, so every path to the answer runs through the six thoughts, and thought k is trained to
hold step k's result). The knockout zeroes block 1's MLP output at thought 1 in the rows whose
problem's first step is a multiplication, and nowhere else. Pairs are `data synth --kind rules`
problems and their partners (the start changed so that a step's operation changes):

- "*" pairs (the problem's first step multiplies, the partner's does not): that MLP's output is
  zero in the problem's run and intact in the partner's, so patching it restores it. AtP (the
  real `attribute` path) must rank it first among the heads and MLPs — the model's components;
  a residual position carries the sum of everything upstream of it, the knocked-out MLP
  included — and its exact patch must move the metric with p < 0.05 over the pairs;
- the control: pairs where neither first step multiplies (the knockout never fires), and the
  same "*" pairs on the model without the knockout: there it is not ranked first, so the first
  assertion is the knockout's doing (the test fails without it).

Block 1 at thought 1 is the first MLP to read the fed-back first thought. Knocking out a later
block's MLP or thought 2's (measured once on these pairs) moves the metric by less than 0.4
with p > 0.15: the trained model absorbs those, so no method could confirm them on 16 pairs.
"""

from __future__ import annotations

import json

import pytest
import torch

from opcircuits.analysis.attribution import sign_flip_p
from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.interventions import attribution as at
from opcircuits.codi.interventions.hooks import blocks
from opcircuits.codi.interventions.spec import Problem
from opcircuits.codi.model import cache_arg_name
from opcircuits.data.synth import synth
from opcircuits.options import SynthOptions

LAYER, STEP = 1, 1  # the knocked-out MLP: block 1's, at thought 1
KNOCKED = "*"  # for problems whose first step is a multiplication
N_PAIRS = 16


def _first_op(record: dict) -> str:
    return next(c for c in record["steps"][0]["expr"] if c in "+-*/")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, tok = load_codi("demo-rules", device="cpu")
    out = tmp_path_factory.mktemp("rules") / "r.jsonl"
    synth(SynthOptions(out=out, kind="rules", n=300, seed=5, split="test"))
    read = [json.loads(line) for line in out.read_text().splitlines()]
    partners = [
        json.loads(line) for line in out.with_name("r.pairs.jsonl").read_text().splitlines()
    ]
    base = {r["pair_id"]: r for r in read if r.get("pair_id")}
    pairs = [(base[q["pair_id"]], q) for q in partners]
    ops = {r["question"]: _first_op(r) for pair in pairs for r in pair}

    def chosen(keep) -> list[tuple[Problem, Problem]]:
        out = [(Problem.from_record(a), Problem.from_record(b)) for a, b in pairs if keep(a, b)]
        out = [p for p in out if at.scoring(model, tok, *p) is not None]  # gold answers differ
        assert len(out) >= N_PAIRS
        return out[:N_PAIRS]

    knocked = chosen(lambda a, b: _first_op(a) == KNOCKED != _first_op(b))
    others = chosen(
        lambda a, b: KNOCKED not in (_first_op(a), _first_op(b)) and _first_op(a) != _first_op(b)
    )
    return model.eval(), tok, ops, knocked, others


class Knockout:
    """Zeroes block LAYER's MLP output at thought STEP in the rows whose problem (per side of the
    layout: 0 = base, 1 = partner) is flagged. The side is found from the question's input
    embeddings, the segment from the KV cache's length before each backbone call (0: a
    question; its width T: bot; T + k: thought k) — alike on every path of the loop, a question
    run or a reused question cache."""

    def __init__(self, model, layout: at.Pairs, flags: torch.Tensor) -> None:
        backbone = model.lm.base_model
        self.cache_name = cache_arg_name(backbone)
        self.embeds = [model.embed(layout.ids[s]).detach() for s in (0, 1)]
        self.flags, self.rows, self.width, self.step = flags, flags[0], 0, -1
        mlp = blocks(backbone, model.num_layers)[LAYER - 1].mlp
        self.handles = [
            backbone.register_forward_pre_hook(self._segment, with_kwargs=True),
            mlp.register_forward_hook(self._zero),
        ]
        self.fired = 0

    def _segment(self, module, args, kwargs):
        embeds = kwargs["inputs_embeds"].detach()
        seen = kwargs[self.cache_name].get_seq_length()
        if seen == 0:  # a question: whose
            side = [s for s in (0, 1) if torch.equal(embeds, self.embeds[s])]
            assert side, "a question run of neither side"
            self.rows, self.width = self.flags[side[0]], embeds.shape[1]
        self.step = seen - self.width

    def _zero(self, module, args, output):
        if self.step != STEP:
            return output
        self.fired += int(self.rows.sum())
        return output * (~self.rows).to(output.dtype)[:, None, None]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _rank_and_exact(model, tok, ops, pairs, knockout: bool):
    """(rank of the target MLP among heads and MLPs by |mean AtP estimate|, its exact metric
    change per pair, the top three components, rows the knockout zeroed)."""
    P = at.make_pairs(model, tok, pairs)
    sides = ([p for p, _ in pairs], [q for _, q in pairs])
    flags = torch.tensor([[ops[p.question] == KNOCKED for p in side] for side in sides])
    knock = Knockout(model, P, flags) if knockout else None
    try:
        comps, r = at.attribute(model, P)
        est = r["estimate"].mean(0).numpy()
        order = sorted(
            (i for i, c in enumerate(comps) if c.kind in ("head", "mlp")),
            key=lambda i: -abs(est[i]),
        )
        target = comps.index(at.Component("mlp", f"latent_{STEP}", LAYER))
        exact = (at.exact_effects(model, P, [comps[target]])[:, 0] - r["base"]).numpy()
    finally:
        if knock is not None:
            knock.close()
    return order.index(target) + 1, exact, [comps[i] for i in order[:3]], knock and knock.fired


def test_the_knocked_out_mlp_is_ranked_first_for_its_operation_and_confirmed(setup):
    model, tok, ops, knocked, _ = setup
    rank, exact, top, fired = _rank_and_exact(model, tok, ops, knocked, knockout=True)
    assert fired > 0  # the knockout ran, in the problems' rows only
    assert rank == 1, top
    p = float(sign_flip_p(exact[:, None], 10_000, 0)[0])
    assert p < 0.05, (p, exact)


def test_without_the_knockout_or_for_other_operations_it_is_not_first(setup):
    model, tok, ops, knocked, others = setup
    rank, _, top, fired = _rank_and_exact(model, tok, ops, others, knockout=True)
    assert fired == 0 and rank > 1, top  # no "*" problem: the knockout never fires
    rank, _, top, _ = _rank_and_exact(model, tok, ops, knocked, knockout=False)
    assert rank > 1, top
