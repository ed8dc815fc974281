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

With `--variable result` the variable is the intermediate result r_j instead: the pairs are the
problems and their value partners (`das_values`: the start changed, every operation kept, so
every r_j differs), each pair counting once for every step j it has. The wrong-step control is
not run for it: every value pair changes every r_j, so there are no pairs on which a subspace
for r_j should *not* carry the partner's answer (a subspace for r_j that also passes r_j' is
expected: r_j determines r_j' for j' > j).

The same procedure runs on the model re-initialized (`reinit_seed`): the control that the
alignment is the trained model's.
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
from opcircuits.intervene.das_values import DasPairs, value_inputs, value_pairs_of
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


def _pairs_of(options: DasOptions, pairs: Path) -> DasPairs:
    """The rows of the variable: one per operation pair, or one per value pair and step."""
    if options.variable == "result":
        return value_inputs(options.data, pairs)
    pair_set, steps, same, inputs = _inputs(options, pairs)
    return DasPairs(pair_set, steps, np.arange(len(steps)), inputs, same)


def _held(groups: np.ndarray, held_out: float, seed: int) -> np.ndarray:
    """Per row: held out or trained on, by pair (all of a pair's steps on one side); with one
    row per pair this is `_split` itself."""
    return _split(int(groups.max()) + 1, held_out, seed)[groups]


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
    pairs = _pairs_file(options)
    refuse_inputs(out, {"--data": options.data, "--pairs": pairs},
                  local_folders(options.model, options.checkpoint))  # fmt: skip
    check_replaceable(out, _ours, field="out")
    rows = _pairs_of(options, pairs)
    pair_set, steps = rows.pair_set, rows.steps
    model, tokenizer = load_model(options)  # type: ignore[arg-type]
    check_questions(model, tokenizer, rows.inputs)
    K, n_layers, D = model.config.num_latent, model.num_layers, model.hidden_size
    sites = [s for group in parse_sites(options.sites, K, n_layers) for s in group]
    too_big = [r for r in options.dims if r > D]  # type: ignore[union-attr]
    if too_big:
        raise OpcircuitsError(f"dimensions {too_big} exceed the hidden size {D}", field="dims")
    held = _held(rows.groups, options.held_out, options.seed)
    torch.manual_seed(options.seed)
    start = time.process_time()
    results, tensors = {}, {}
    for name in ("model", "reinit"):
        if name == "reinit":
            reinitialize(model, options.reinit_seed)
        engine = Engine(model, tokenizer, max_new_tokens=options.max_new_tokens)
        results[name] = _run_model(engine, pair_set, steps, held, sites, options, tensors, name)
    cpu = time.process_time() - start
    record = _record(options, pairs, rows, held, results, cpu)
    with atomic_dir(out, _ours, field="out") as scratch:
        record["weights"] = {"file": WEIGHTS, "sha256": _save(tensors, scratch / WEIGHTS)}
        write_json_atomic(scratch / RESULT, record)
    return out / RESULT


def _pairs_file(options: DasOptions) -> Path:
    """--pairs, or the variable's partners beside --data; an error naming the missing file."""
    result = options.variable == "result"
    if options.pairs is not None:
        pairs: Path | None = Path(options.pairs)
    else:
        pairs = value_pairs_of(Path(options.data)) if result else default_pairs(options.data)
    for field, path in (("data", options.data), ("pairs", pairs)):
        if path is None or Path(path).is_file():
            continue
        if field == "pairs" and result and options.pairs is None:
            raise OpcircuitsError(
                "no value partners beside the data (--variable result reads them from there: "
                "data synth writes them unless --no-pairs); give --pairs",
                path=path,
                field="pairs",
            )
        raise OpcircuitsError("no such file", path=path, field=field)
    if pairs is None:
        raise OpcircuitsError("no partners: give --pairs", path=options.data, field="pairs")
    return pairs


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
        # (result: every value pair changes every r_j, so no pair is a wrong-step control)
        wrong = np.flatnonzero(held & (steps != j)) if options.variable == "operation" else []
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
                "wrong_step": stats.iia(hits(wrong, W)) if len(wrong) else None,
                "vs_random": stats.paired_test(h_das, h_rand),
                "diagnostics": stats.pc_diagnostics(base_np, W.numpy()),
                "random_diagnostics": stats.pc_diagnostics(base_np, R.numpy()),
            }  # fmt: skip
            tensors[f"{name}/{site.name}/step{j}/r{r}"] = W
            rows.append(row)
            log.info("%s %s step %d r=%d: IIA %.3f (random %.3f)", name, site.name, j, r,
                     row["das"]["iia"], row["random"]["iia"])  # fmt: skip
    return rows


def _verdict(row: dict[str, Any], variable: str = "operation") -> str:
    """One sentence for one (site, step, r) of the trained model."""
    d, rnd, comp = row["das"], row["random"], row["complement"]
    what = f"r_{row['step']} (result of step {row['step']})"
    if variable == "operation":
        what = f"operation of step {row['step']}"
    text = (
        f"{row['site']}, {what}, r={row['r']}: IIA {d['iia']:.2f} "
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


WRONG_STEP = {
    "operation": "run: the subspace for step j on the held-out pairs that change another step's "
    "operation (the answer should not follow their partner)",
    "result": "not run: every value pair changes every r_j (the start is changed, the operations "
    "kept), so no pair changes r_j' while keeping r_j; and r_j determines every later r_j', so "
    "a subspace for r_j carrying later results is expected, not a failure",
}


def _intermediate(options, rows: DasPairs, results) -> Any:
    """das.json's `intermediate_result`: the measurement, or how to make it."""
    if options.variable != "result":
        return (
            "not measured in this run: run with --variable result (value partners, "
            "<data>.value_pairs.jsonl from data synth)"
        )
    return {
        "measured": True,
        "pairs": "value partners: start changed, every operation kept, every r_j different",
        "left_out_equal_results": rows.equal_results,
        "best": {
            str(j): max(
                (
                    {"site": r["site"], "r": r["r"], "iia": r["das"]["iia"],
                     "random": r["random"]["iia"], "full": r["full"]["iia"],
                     "p_adjusted": r["vs_random"]["p_adjusted"]}
                    for r in results["model"] if r["step"] == j
                ),
                key=lambda x: x["iia"],
            )
            for j in options.steps
        },
    }  # fmt: skip


def _record(options, pairs, rows: DasPairs, held, results, cpu) -> dict[str, Any]:
    from opcircuits.jsonable import jsonable

    steps = rows.steps
    return jsonable(
        {
            "format": FORMAT,
            "format_version": 1,
            "options": {k: getattr(options, k) for k in options.__dataclass_fields__},
            "variable": options.variable,
            "data_sha256": sha256_file(options.data),
            "pairs_sha256": sha256_file(pairs),
            "pairs": {
                "usable": len(steps),
                "held_out": int(held.sum()),
                "left_out_equal_answers": rows.equal_answers,
                "by_step": {str(s): int((steps == s).sum()) for s in sorted(set(steps))},
                "distinct_pairs": int(rows.groups.max()) + 1,
                # (rows above; with --variable result a pair is one row per step)
                "held_out_pairs": len(set(rows.groups[held].tolist())),
            },
            "iia_definition": "share of held-out pairs whose intervened greedy answer equals the "
            "partner's gold answer; pairs with equal gold answers are left out",
            "intermediate_result": _intermediate(options, rows, results),
            "wrong_step_control": WRONG_STEP[options.variable],
            "results": results,
            "findings": [_verdict(row, options.variable) for row in results["model"]],
            "cpu_seconds": cpu,
        }
    )
