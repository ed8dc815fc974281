"""Intermediate values: where each solution step's result r_j is decoded (the report section
`intermediate_values`).

- **Logit lens, the CODI paper's Table 3 metric.** Whether r_j's token (`step_result_ids`: the
  first token of its text, the whole number where it is one token; or `step_result_space_ids`,
  the same after a space, a BPE vocabulary's other spelling) is among the top-k tokens the
  LM head reads off a position (`lens_top_ids`, kept at the final layer only). Per number of
  steps n: the share of steps j ≤ n whose result is among the top-k at some latent thought
  (latent_1…K, not `bot`), and of problems all of whose steps are; per (position, j): the share
  of the problems with at least j steps. Chance: the same rates with r_j's token taken from
  another problem with the same number of steps (permutations within step-count strata); each
  rate's p-value, and the step-down maxT over the (position, j) cells. Where the store has the
  lens at every stored layer (`lens_layer_top_ids`), the same per (position, layer, j) cell, its
  own maxT family (`layer_cells`); Table 3's rates stay the final layer's, as the paper's.
- **Value probes** (`value_probes`): ridge from every (position, layer) state to r_j, R² out of
  fold, against permutations of the results within step-count strata; family-wise p-values by
  the step-down maxT over every cell of the heat map. This section is its own family (values,
  not the operation labels the report's claims gate on): a cell "holds r_j" only where its
  family-wise p ≤ α = 0.05.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from opcircuits.analysis.inference import ALPHA, max_statistic
from opcircuits.analysis.inputs import AnalysisInput
from opcircuits.analysis.stats import permutation_p_value
from opcircuits.analysis.tasks import CHEAP_FACTOR
from opcircuits.analysis.value_probes import probe_cells, within_strata_permutations
from opcircuits.errors import OpcircuitsError

# The CODI paper's Table 3: top-5 decoded intermediate results matching the reference chain of
# thought, by the problem's number of steps (%).
PAPER_TABLE3 = {"1": 97.1, "2": 83.9, "3": 75.0}
PAPER = "Shen et al. 2025, CODI, arXiv:2502.21074, Table 3"
# The fewest problems of one step count that get their own probe maps (r_j for those problems
# only, so an intermediate result is not pooled with another step count's answer).
MIN_STRATUM = 40


def section(inp: AnalysisInput, *, folds: int, permutations: int, seed: int) -> dict[str, Any]:
    """The `intermediate_values` section of the analyzed problems (see the module docstring);
    `{"available": False}` with a note when the store has no `step_results`."""
    results = inp.column("step_results")
    out: dict[str, Any] = {"available": results is not None}
    if results is None:
        inp.notes.append(
            "The store has no step_results column (extracted before it): the intermediate-values "
            "section is skipped."
        )
        return out
    known = [i for i, r in enumerate(results) if _all_known(r)]
    values = [[float(v) for v in results[i]] for i in known]
    steps = np.array([len(v) for v in values], dtype=np.int64)
    if inp.n - len(known):
        inp.notes.append(
            f"{inp.n - len(known)} of {inp.n} problems have no step or a step result that is not "
            "one number: the intermediate-values section leaves them out."
        )
    out.update(
        n_problems=len(known),
        steps_histogram={str(s): int((steps == s).sum()) for s in sorted(set(steps.tolist()))},
        paper_table3=PAPER_TABLE3,
        paper=PAPER,
        permutations=permutations,
        strata="n_steps",
        alpha=ALPHA,
    )
    if not known:
        return out
    out["lens"] = _lens(inp, known, steps, CHEAP_FACTOR * permutations, seed)
    hidden = inp.hidden[inp.rows][known]
    cells = probe_cells(
        hidden, inp.positions, inp.layers, values, steps,
        folds=folds, permutations=permutations, seed=seed, min_stratum=MIN_STRATUM,
    )  # fmt: skip
    out["probes"] = {
        "method": "ridge regression (features standardized in each training fold, penalty by "
        "leave-one-out in it) from one (position, layer) state to r_j; out-of-fold R²",
        "folds": folds,
        "cells": _tested(cells, "r2"),
    }
    out["holds"] = holds(out)
    return out


def _all_known(r: Any) -> bool:
    if r is None or len(r) == 0:
        return False
    return all(v is not None and math.isfinite(float(v)) for v in r)


def _tested(cells: list[dict], stat: str) -> list[dict]:
    """Raw and family-wise (step-down maxT over the cells) permutation p-values; the nulls are
    dropped from the output."""
    tested = {i: c for i, c in enumerate(cells) if c[stat] is not None and c["null"] is not None}
    tested = {i: c for i, c in tested.items() if len(c["null"])}
    family = max_statistic(
        {str(i): c[stat] for i, c in tested.items()}, {str(i): c["null"] for i, c in tested.items()}
    )
    out = []
    for i, c in enumerate(cells):
        row = {k: v for k, v in c.items() if k != "null"}
        t = tested.get(i)
        row["null_mean"] = None if t is None else float(np.mean(t["null"]))
        row["p_value"] = None if t is None else permutation_p_value(t[stat], t["null"])
        row["p_family"] = family.get(str(i))
        out.append(row)
    return out


def _lens(inp: AnalysisInput, known: list[int], steps: np.ndarray, b: int, seed: int) -> dict:
    ids, top = inp.column("step_result_ids"), inp.column("lens_top_ids")
    if ids is None or top is None:
        inp.notes.append(
            "The store has no step_result_ids or no logit-lens column: the Table 3 metric "
            "(r_j among the lens's top-k) is skipped."
        )
        return {"available": False}
    positions = list(inp.store.positions)
    latent = np.array([p != "bot" for p in positions])
    rows = [
        k for k, i in enumerate(known) if ids[i] is not None and all(t is not None for t in ids[i])
    ]
    if not rows or any(top[known[k]] is None for k in rows):
        return {"available": False}
    longest = int(steps.max())
    rid = np.full((len(rows), longest), -1, dtype=np.int64)
    for r, k in enumerate(rows):
        if len(ids[known[k]]) != steps[k]:
            raise OpcircuitsError(
                f"problem {inp.records['id'].iloc[known[k]]!r} has {len(ids[known[k]])} step "
                f"result ids for {steps[k]} step results",
                path=inp.store.path, field="step_result_ids",
            )  # fmt: skip
        rid[r, : steps[k]] = [int(t) for t in ids[known[k]]]
    # The other spelling, after a space (GPT-2's `Ġ8`), where the store has it: either is a hit.
    spaced, rid2 = inp.column("step_result_space_ids"), np.full_like(rid, -1)
    for r, k in enumerate(rows):
        alt = None if spaced is None else spaced[known[k]]
        if alt is not None and len(alt) == steps[k] and all(t is not None for t in alt):
            rid2[r, : steps[k]] = [int(t) for t in alt]
    rid = np.stack([rid, rid2], axis=-1)  # [n, J, spellings]
    lens = _ids_grid([top[known[k]] for k in rows], 3, inp, "lens_top_ids")  # [n, P, k]
    strata = steps[rows]
    valid = rid[..., 0] >= 0  # [n, J]
    perms = within_strata_permutations(strata, b, seed + 2)

    observed = _hits(lens, rid, valid)
    null = [_hits(lens, rid[p], valid) for p in perms]
    cells = _rate_cells(observed, null, valid, positions, {})
    by_steps = []
    for n_steps in sorted(set(strata.tolist())):
        m = strata == n_steps
        found = observed[m][:, latent, :n_steps].any(1)  # [n, j]: at some latent thought
        null_found = [h[m][:, latent, :n_steps].any(1) for h in null]
        step_rate = float(found.mean())
        null_rates = np.array([f.mean() for f in null_found])
        by_steps.append(
            {
                "n_steps": int(n_steps),
                "n_problems": int(m.sum()),
                "step_rate": step_rate,
                "all_steps_rate": float(found.all(1).mean()),
                "by_step": [float(found[:, j].mean()) for j in range(n_steps)],
                "null_step_rate": float(null_rates.mean()) if b else None,
                "p_value": permutation_p_value(step_rate, null_rates) if b else None,
            }
        )
    # The lens at every stored layer, where the store has it (extracted after it was added).
    per_layer, layer_cells = inp.column("lens_layer_top_ids"), None
    if per_layer is not None and all(per_layer[known[k]] is not None for k in rows):
        grid = _ids_grid([per_layer[known[k]] for k in rows], 4, inp, "lens_layer_top_ids")
        layer_cells = []
        for li, layer in enumerate(inp.store.layers):
            obs = _hits(grid[:, :, li], rid, valid)
            nul = [_hits(grid[:, :, li], rid[p], valid) for p in perms]
            layer_cells += _rate_cells(obs, nul, valid, positions, {"layer": int(layer)})
    return {
        "available": True,
        "top_k": int(lens.shape[-1]),
        "layer_cells": None if layer_cells is None else _tested(layer_cells, "rate"),
        "n_problems": len(rows),
        "positions": positions,
        "layer": "final",
        "by_steps": by_steps,
        "cells": _tested(cells, "rate"),
    }


def _ids_grid(values: list, ndim: int, inp: AnalysisInput, field: str) -> np.ndarray:
    """Nested id lists as one int array, [problems, positions(, layers), k]; a ragged or
    misshapen column (not written by our extraction) is an error naming it."""
    want = len(inp.store.positions)
    try:
        grid = np.array([_nested(v, ndim - 1) for v in values], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise OpcircuitsError(f"ragged or non-integer ids ({exc})", path=inp.store.path,
                              field=field) from None  # fmt: skip
    if (
        grid.ndim != ndim
        or grid.shape[1] != want
        or (ndim == 4 and grid.shape[2] != len(inp.store.layers))
    ):
        raise OpcircuitsError(
            f"ids of shape {grid.shape[1:]} for {want} positions and {len(inp.store.layers)} "
            "layers", path=inp.store.path, field=field,
        )  # fmt: skip
    return grid


def _nested(v: Any, depth: int) -> Any:
    return [_nested(x, depth - 1) for x in v] if depth > 0 else v


def _hits(lens: np.ndarray, rid: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[n, P, J]: whether r_j's token (either spelling in `rid` [n, J, S]; -1: none) is among
    position p's top-k (`lens` [n, P, k]); False where the problem has no step j."""
    hit = lens[:, :, None, :, None] == rid[:, None, :, None, :]  # [n, P, J, k, S]
    return hit.any((-1, -2)) & valid[:, None, :]


def _rate_cells(
    observed: np.ndarray, null: list[np.ndarray], valid: np.ndarray, positions: list[str],
    extra: dict,
) -> list[dict]:  # fmt: skip
    """Per (position, step j): the share of the problems with ≥ j steps whose r_j is found, and
    the same under each permutation."""
    cells = []
    for j in range(1, valid.shape[1] + 1):
        m = valid[:, j - 1]
        for pi, pos in enumerate(positions):
            cells.append(
                {"position": pos, **extra, "step": j, "n": int(m.sum()),
                 "rate": float(observed[m, pi, j - 1].mean()),
                 "null": np.array([h[m, pi, j - 1].mean() for h in null])}
            )  # fmt: skip
    return cells


def holds(section_: dict) -> list[dict]:
    """Per step j (over every problem with ≥ j steps: `n_steps` None; then per step count): the
    positions whose value probe survives the family-wise test at some layer, the best cell, and
    (pooled only) the positions where the lens finds r_j beyond chance family-wise."""
    probes = section_.get("probes", {}).get("cells", [])
    lens = section_.get("lens", {}).get("cells", []) if section_.get("lens") else []
    keys = {(c["n_steps"], c["step"]) for c in probes} | {(None, c["step"]) for c in lens}
    out = []
    for n, j in sorted(keys, key=lambda k: (k[0] is not None, k[0] or 0, k[1])):
        ok = [c for c in probes if (c["n_steps"], c["step"]) == (n, j) and _survives(c)]
        best = max(ok, key=lambda c: c["r2"]) if ok else None
        entry = {
            "n_steps": n,
            "step": j,
            "positions": list(dict.fromkeys(c["position"] for c in ok)),
            "best": None if best is None else {k: best[k] for k in ("position", "layer", "r2")},
        }
        if n is None:
            entry["lens_positions"] = [
                c["position"] for c in lens if c["step"] == j and _survives(c)
            ]
        out.append(entry)
    return out


def _survives(cell: dict) -> bool:
    return cell.get("p_family") is not None and cell["p_family"] <= ALPHA
