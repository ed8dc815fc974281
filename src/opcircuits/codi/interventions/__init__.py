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
  state norm; `erase` — LEACE erasure of the operation category, cross-fitted on the reference
  set, and `erase_random`, a random subspace of the same rank (its control); `truncate` — stop
  after k < K thoughts and go to eot early; `none` — the clean run.

Measured per problem: the greedy answer, and the log-probability of the gold answer's value
tokens and EOS, teacher-forced through the answer prompt CODI was trained on (eot [eos] "The
answer is: N" eos; `codi.prompt.gold_answer_ids`); for patching also the source's.

Speed. Each batch's prompt is prefilled once (without bot) and the clean loop run once; an
intervention that starts at step s rewinds the preallocated KV cache to step s and reruns only
steps s…K (the entries before s are the clean run's, untouched: interventions run in decreasing
order of their first step, and each only writes at or after it). The answer is decoded by
verifying drafts — the gold answer, the source's gold answer, the clean run's answer — in one
forward each (greedy decoding accepts a draft when every next-token argmax equals the draft's next
token), so an answer the intervention does not change costs one forward instead of one per token;
rows no draft explains are decoded token by token, as `latent.run_batch` does. The same forward
gives the gold answer's teacher-forced log-probability. `naive=True` instead reruns the prompt and
every step and decodes token by token (the baseline of `benchmarks/intervene.py`). Interventions
that start at the same step run stacked, G of them as one batch of G·B rows (`groups`,
`run_interventions(group=…)`, `--group-size`): equal within float rounding.

Layer edits are forward hooks on the decoder blocks (layer 0: a pre-hook on block 1's input; layer
l < n: block l's output; layer n: the final hidden state after the forward). The clean run goes
through the same step function as the interventions, so an identity intervention (patching a
problem from itself, steering with α = 0, truncating at K) reproduces it bit for bit.

The package, after pyvene (a kind is one entry of a table) and TransformerLens (one patching
engine, thin named variants): `spec` (sites, `parse_sites`, `Intervention`, `Problem`), `kinds`
(the table of kinds and their edits), `erasure` (LEACE and its control), `reference` (the clean
states and what is derived from them, `Sources`), `hooks` (block hooks, KV-cache rewind), `engine`
(`Engine`: the loop with edits, drafts and their verification), `outcomes` (an intervention's
edits and sources on a batch, its `Outcome`s), `groups` (stacked interventions), `run`
(`clean_reference`, `run_interventions`, `outcome_rows`).
"""

from opcircuits.codi.interventions.edges import DEFAULT_EDGES, Edge, parse_edges
from opcircuits.codi.interventions.engine import Answer, Batch, Engine
from opcircuits.codi.interventions.groups import DEFAULT_GROUP
from opcircuits.codi.interventions.kinds import DIRECTIONS, KINDS, SITE_KINDS, TABLE, Edit, Kind
from opcircuits.codi.interventions.reference import Reference, Sources, resample_sources
from opcircuits.codi.interventions.run import (
    Outcome,
    clean_reference,
    outcome_rows,
    partner_runs,
    plan_batches,
    run_interventions,
)
from opcircuits.codi.interventions.spec import (
    PATHS,
    Intervention,
    Problem,
    Site,
    joint_name,
    parse_sites,
    position_name,
    position_step,
    sites_name,
)

__all__ = [
    "DEFAULT_EDGES",
    "DIRECTIONS",
    "PATHS",
    "Edge",
    "KINDS",
    "SITE_KINDS",
    "TABLE",
    "Answer",
    "Batch",
    "Edit",
    "Engine",
    "Intervention",
    "Kind",
    "Outcome",
    "DEFAULT_GROUP",
    "Problem",
    "Reference",
    "Site",
    "Sources",
    "clean_reference",
    "outcome_rows",
    "partner_runs",
    "joint_name",
    "parse_edges",
    "parse_sites",
    "plan_batches",
    "position_name",
    "position_step",
    "resample_sources",
    "run_interventions",
    "sites_name",
]
