"""The kinds of intervention, one table entry each (after pyvene's intervention types).

A *site kind* replaces the state h at each of its sites by what its edit function makes of it:
`zero` — zeros; `mean` — the site's mean over the reference set; `resample` and `patch` — the
same site's state of each problem's source problem (`Sources`); `patch_step` — the same, but at
each thought only in the problems whose pair changes that step (`Problem.changed_step`: the
sites of the thought that should hold the changed step); `steer` — `h + α · s · u`; `erase` —
LEACE erasure of the operation category, cross-fitted on the reference set, and `erase_random`
its control, a random subspace of the same rank (`erasure`). The
other kinds change the loop itself: `none` — the clean run; `truncate` — stop after `keep`
thoughts (`Intervention.start` / `thoughts`), eot and the answer at the next position ids (the
natural positions); `truncate_pos` — the same, but eot and the answer keep the position ids they
have after K thoughts (the skipped steps leave no keys); `knockout` — attention edges cut
(`edges`); `path` — the partner's prompt read by some segments (`Intervention.path`), optionally
with sites patched as `patch` does.

Layer 0 of a model with an absolute position embedding (GPT-2) is the fed-back vector plus the
position embedding of its position: the edits there see and replace only the vector (the hooks
subtract the target's position embedding before the edit and add it back after; `Reference`
gives the states with their own position embedding removed), so a mean, a resampled or a
patched input keeps the target's position.

To add a site kind: one small function `(iv, ref, step, li, src_rows, dtype, device) → Edit` and
one `Kind` in `TABLE` (`run.site_edit` calls it for each site; `src_rows` are the source
problems' reference rows, or the problems' own for a kind without a source).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from opcircuits.codi.interventions.erasure import erase_edit, erase_random_edit
from opcircuits.errors import OpcircuitsError

Edit = Callable[[torch.Tensor], torch.Tensor]  # state [B, D] → new state [B, D]
# (intervention, reference, step, layer index in the reference, source rows, dtype, device) → edit
EditMaker = Callable[..., Edit]

DIRECTIONS = ("diff", "random")  # built-in steering directions (others are given by the caller)


@dataclass(frozen=True)
class Kind:
    """One kind of intervention."""

    name: str
    edit: EditMaker | None = None  # site kinds: makes the edit of one site
    source: str | None = None  # the `Sources` field giving each problem's source problem
    sites: str = "none"  # "required", "optional" or "none"


def _zero(iv, ref, step, li, src_rows, dtype, device) -> Edit:
    return torch.zeros_like


def _mean(iv, ref, step, li, src_rows, dtype, device) -> Edit:
    mean = ref.content_mean(step, li).to(device=device, dtype=dtype)
    return lambda h: mean.expand_as(h)


def _copy(iv, ref, step, li, src_rows, dtype, device) -> Edit:
    """resample, patch: the source problem's state at the site."""
    assert src_rows is not None
    value = ref.content(src_rows, step, li).to(device=device, dtype=dtype)
    return lambda h: value


def _copy_step(iv, ref, step, li, src_rows, dtype, device) -> Edit:
    """patch_step: the source's state, only in the rows whose pair changes this step (the
    partner's `changed_step`); other rows keep theirs."""
    assert src_rows is not None
    value = ref.content(src_rows, step, li).to(device=device, dtype=dtype)
    which = [ref.problems[r].changed_step == step for r in src_rows]
    mask = torch.tensor(which, device=device)[:, None]
    return lambda h: torch.where(mask, value, h)


def _steer(iv, ref, step, li, src_rows, dtype, device) -> Edit:
    if iv.direction not in ref.directions:
        raise OpcircuitsError(f"no steering direction {iv.direction!r}", field="direction")
    u = ref.directions[iv.direction][step, li]
    delta = (iv.alpha * float(ref.norm[step, li]) * u).to(device=device, dtype=dtype)
    return lambda h: h + delta


TABLE: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("none"),
        Kind("zero", _zero, sites="required"),
        Kind("mean", _mean, sites="required"),
        Kind("resample", _copy, source="resample", sites="required"),
        Kind("patch", _copy, source="patch", sites="required"),
        Kind("patch_step", _copy_step, source="patch", sites="required"),
        Kind("steer", _steer, sites="required"),
        Kind("truncate"),
        Kind("truncate_pos"),
        Kind("knockout"),
        Kind("path", _copy, source="patch", sites="optional"),
        Kind("erase", erase_edit, sites="required"),
        Kind("erase_random", erase_random_edit, sites="required"),
    )
}
KINDS = tuple(TABLE)
SITE_KINDS = tuple(name for name, k in TABLE.items() if k.sites == "required")
