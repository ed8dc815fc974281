"""`opcircuits das`: distributed alignment search (`codi.interventions.das`) at chosen sites, for
the operation of chosen solution steps, with its controls, into `das.json` + `das.safetensors`.

Pairs are a problem file's bases and their `data synth` partners (`pair_id`, `changed_step`:
the partner changes only that step's operation, so swapping "the operation of step j" from it
makes the counterfactual answer the partner's). Pairs with equal gold answers are left out and
counted. The pairs are split once by pair (seeded) into trained-on and held-out ones; every IIA
is on held-out pairs. Per site, step j and dimension r:

- `das`: the trained subspace; `random`: a random subspace of the same r; `complement`: every
  coordinate but the subspace's; `wrong_step`: the subspace for step j on the held-out pairs
  that change another step (the answer should not follow their partner); `full`: the whole state
  patched (once per site and step: the most any subspace there can do);
- the exact paired test of `das` against `random`, Bonferroni-adjusted over every (site, step,
  r) of the model; the illusion diagnostics of the subspace and of the random one.

The same procedure runs on the model re-initialized (`reinit_seed`): the control that the
alignment is the trained model's. The intermediate result r_j is not a variable here: it needs
partners that change one operand and keep the operations, which `data synth` does not write.
Both files are written together at the end (`files.atomic_dir`): never half-written; a rerun
recomputes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opcircuits.analysis import das as stats
from opcircuits.errors import OpcircuitsError
from opcircuits.files import (
    atomic_dir,
    atomic_path,
    check_replaceable,
    sha256_file,
    write_json_atomic,
)
from opcircuits.intervene.partners import (
    Inputs,
    _problems,
    default_pairs,
    patch_sources,
    read_records,
)
from opcircuits.intervene.parts import refuse_inputs
from opcircuits.options import DasOptions

log = logging.getLogger(__name__)

RESULT, WEIGHTS = "das.json", "das.safetensors"
FORMAT = "opcircuits-das"


def _ours(name: str) -> bool:
    return name in (RESULT, WEIGHTS)


def _inputs(options: DasOptions, pairs: Path | None):
    """The pair set (usable pairs only), each pair's changed step, and the left-out count."""
    from opcircuits.codi.interventions.das import PairSet

    records = read_records(options.data)
    partners = read_records(pairs) if pairs is not None else []
    sources = patch_sources(records, partners, None, pairs)
    problems = _problems(records, options.data) + _problems(partners, pairs or options.data)
    base, source, step, same = [], [], [], 0
    for i, (r, s) in enumerate(zip(records, sources, strict=True)):
        if s is None or r.get("changed_step") is None:
            continue
        if problems[i].gold_value == problems[s].gold_value:
            same += 1  # the answer would "follow" the partner unchanged
            continue
        base.append(i)
        source.append(s)
        step.append(int(r["changed_step"]))
    if not base:
        raise OpcircuitsError(
            "no counterfactual pairs with changed_step and different answers", path=options.data
        )
    used = sorted(set(base) | set(source))
    row = {old: new for new, old in enumerate(used)}
    pair_set = PairSet([problems[i] for i in used], [row[i] for i in base],
                       [row[i] for i in source])  # fmt: skip
    inputs = Inputs(records, problems, sources)
    return pair_set, np.array(step), same, inputs


def _split(n: int, held_out: float, seed: int) -> np.ndarray:
    """Per pair: held out (True) or trained on; at least one of each."""
    order = np.random.default_rng(seed).permutation(n)
    k = min(max(1, round(held_out * n)), n - 1)
    mask = np.zeros(n, dtype=bool)
    mask[order[:k]] = True
    return mask


def das(options: DasOptions) -> Path:
    """Run DAS as `options` describe; returns the path of das.json."""
    from opcircuits.codi.interventions import Engine, parse_sites
    from opcircuits.codi.reinit import reinitialize
    from opcircuits.codi.resolve import local_folders
    from opcircuits.intervene.sweep import check_questions, load_model

    out = Path(options.out)
    pairs = options.pairs if options.pairs is not None else default_pairs(options.data)
    for field, path in (("data", options.data), ("pairs", pairs)):
        if path is not None and not Path(path).is_file():
            raise OpcircuitsError("no such file", path=path, field=field)
    if pairs is None:
        raise OpcircuitsError("no partners: give --pairs", path=options.data, field="pairs")
    refuse_inputs(out, {"--data": options.data, "--pairs": pairs},
                  local_folders(options.model, options.checkpoint))  # fmt: skip
    check_replaceable(out, _ours, field="out")
    pair_set, steps, same, inputs = _inputs(options, pairs)
    model, tokenizer = load_model(options)  # type: ignore[arg-type]
    check_questions(model, tokenizer, inputs)
    K, n_layers, D = model.config.num_latent, model.num_layers, model.hidden_size
    sites = [s for group in parse_sites(options.sites, K, n_layers) for s in group]
    too_big = [r for r in options.dims if r > D]  # type: ignore[union-attr]
    if too_big:
        raise OpcircuitsError(f"dimensions {too_big} exceed the hidden size {D}", field="dims")
    held = _split(len(steps), options.held_out, options.seed)
    torch.manual_seed(options.seed)
    start = time.process_time()
    results, tensors = {}, {}
    for name in ("model", "reinit"):
        if name == "reinit":
            reinitialize(model, options.reinit_seed)
        engine = Engine(model, tokenizer, max_new_tokens=options.max_new_tokens)
        results[name] = _run_model(engine, pair_set, steps, held, sites, options, tensors, name)
    cpu = time.process_time() - start
    record = _record(options, pairs, pair_set, steps, held, same, results, cpu)
    with atomic_dir(out, _ours, field="out") as scratch:
        record["weights"] = {"file": WEIGHTS, "sha256": _save(tensors, scratch / WEIGHTS)}
        write_json_atomic(scratch / RESULT, record)
    return out / RESULT


def _save(tensors: dict[str, torch.Tensor], path: Path) -> str:
    from safetensors.torch import save_file

    for key, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise OpcircuitsError(f"subspace {key} holds NaN or inf", path=path)
    with atomic_path(path) as tmp:
        save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp))
    return sha256_file(path)


def _run_model(engine, pair_set, steps, held, sites, options, tensors, name) -> list[dict]:
    """Every (site, step, r) of one model: the subspace, its controls and diagnostics."""
    rows = []
    for site in sites:
        rows += _run_site(engine, pair_set, steps, held, site, options, tensors, name)
    for row in rows:  # Bonferroni over every (site, step, r) of this model
        row["vs_random"]["p_adjusted"] = min(1.0, row["vs_random"]["p"] * len(rows))
    return rows


def _run_site(engine, pair_set, steps, held, site, options, tensors, name) -> list[dict]:
    from opcircuits.codi.interventions import das as core

    D = engine.model.hidden_size
    targets = [pair_set.problems[s].gold_value for s in pair_set.source]
    states = core.site_states(engine, pair_set.problems, site, options.batch_size)
    src = states[pair_set.source]
    base_np = states[pair_set.base].numpy()

    def hits(idx, basis, complement=False):
        got = core.evaluate_codi(
            engine,
            pair_set,
            list(idx),
            site,
            basis,
            src,
            complement=complement,
            batch_size=options.batch_size,
        )
        return stats.follows(got, [targets[i] for i in idx])  # fmt: skip

    rows = []
    for j in options.steps:
        train = np.flatnonzero(~held & (steps == j))
        test = np.flatnonzero(held & (steps == j))
        wrong = np.flatnonzero(held & (steps != j))
        if train.size == 0 or test.size == 0:
            raise OpcircuitsError(
                f"step {j}: {train.size} training and {test.size} held-out pairs; each "
                "needs at least one", field="steps",
            )  # fmt: skip
        full = stats.iia(hits(test, None))
        for r in options.dims:
            W, losses = core.train_codi(
                engine, pair_set, list(train), site, r, src, epochs=options.epochs,
                lr=options.lr, batch_size=options.batch_size, seed=options.seed,
            )  # fmt: skip
            R = core.random_basis(D, r, torch.Generator().manual_seed(options.seed + 7919 * r))
            h_das, h_rand = hits(test, W), hits(test, R)
            row = {
                "site": site.name, "step": j, "r": r, "losses": losses,
                "n_train": int(train.size), "full": full,
                "das": stats.iia(h_das), "random": stats.iia(h_rand),
                "complement": stats.iia(hits(test, W, True)),
                "wrong_step": stats.iia(hits(wrong, W)) if wrong.size else None,
                "vs_random": stats.paired_test(h_das, h_rand),
                "diagnostics": stats.pc_diagnostics(base_np, W.numpy()),
                "random_diagnostics": stats.pc_diagnostics(base_np, R.numpy()),
            }  # fmt: skip
            tensors[f"{name}/{site.name}/step{j}/r{r}"] = W
            rows.append(row)
            log.info("%s %s step %d r=%d: IIA %.3f (random %.3f)", name, site.name, j, r,
                     row["das"]["iia"], row["random"]["iia"])  # fmt: skip
    return rows


def _verdict(row: dict[str, Any]) -> str:
    """One sentence for one (site, step, r) of the trained model."""
    d, rnd, comp = row["das"], row["random"], row["complement"]
    text = (
        f"{row['site']}, operation of step {row['step']}, r={row['r']}: IIA {d['iia']:.2f} "
        f"[{d['low']:.2f}, {d['high']:.2f}] on {d['n']} held-out pairs, random subspace "
        f"{rnd['iia']:.2f}, complement {comp['iia']:.2f}, whole state {row['full']['iia']:.2f}"
    )
    if row["wrong_step"] is not None:
        text += f", wrong step {row['wrong_step']['iia']:.2f}"
    p = row["vs_random"]["p_adjusted"]
    if p >= 0.05:
        return text + f"; not above the random subspace (adjusted p = {p:.2g})."
    if row["diagnostics"]["dormant"]:
        return text + "; above random, but the subspace lies partly outside the states' span "
        "(a possible dormant-direction illusion)."
    return text + f"; above the random subspace (adjusted p = {p:.2g})."


def _record(options, pairs, pair_set, steps, held, same, results, cpu) -> dict[str, Any]:
    from opcircuits.jsonable import jsonable

    return jsonable(
        {
            "format": FORMAT,
            "format_version": 1,
            "options": {k: getattr(options, k) for k in options.__dataclass_fields__},
            "data_sha256": sha256_file(options.data),
            "pairs_sha256": sha256_file(pairs),
            "pairs": {
                "usable": len(steps),
                "held_out": int(held.sum()),
                "left_out_equal_answers": same,
                "by_step": {str(s): int((steps == s).sum()) for s in sorted(set(steps))},
            },
            "iia_definition": "share of held-out pairs whose intervened greedy answer equals the "
            "partner's gold answer; pairs with equal gold answers are left out",
            "intermediate_result": "not measured: needs partners that change one operand and "
            "keep the operations; data synth's partners change one operation",
            "results": results,
            "findings": [_verdict(row) for row in results["model"]],
            "cpu_seconds": cpu,
        }
    )
