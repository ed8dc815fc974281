"""`opcircuits attribute`: attribution patching over every component of the loop, checked
against exact patching of the top components (`codi.interventions.attribution`).

Output folder, written together and atomically (a crash leaves the earlier folder as it was):

    OUT/
      attribution.parquet   one row per component (kind, segment, step, layer, head, token): the
                            AtP estimate (normalized and raw), its rank, and for the verified
                            components the exact effect, the sign-flip p and Holm's p
      attribution.json      the manifest: options, model, pairs used and dropped, the clean
                            metrics, Spearman ρ, timings, sentences, the figure
      attribution.png       layers × (heads, MLP) per segment (`report.figures.attribution`)

The AtP* query/key fix (Kramár et al. 2024) does not apply to these components: it recomputes
the softmax for patches of a head's queries or keys, whereas a head's output is patched after its
softmax (the partner's attention-weighted values), and an MLP or residual patch reaches later
softmaxes only downstream, where AtP* too stays first-order. The check against exact patching
is what says where the linearization fails. AtP*'s GradDrop is `--graddrop` (one backward per
block with that block's gradient dropped, `codi.interventions.attribution._Drop`; combined by
`analysis.attribution.graddrop_estimate`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from opcircuits.analysis.attribution import graddrop_estimate, normalized, spearman, verified
from opcircuits.errors import OpcircuitsError
from opcircuits.files import atomic_dir, check_replaceable, write_json_atomic
from opcircuits.intervene.partners import _problems, default_pairs, patch_sources, read_records
from opcircuits.jsonable import jsonable
from opcircuits.options import AttributeOptions

log = logging.getLogger(__name__)
FILES = ("attribution.parquet", "attribution.json", "attribution.png")


def _ours(name: str) -> bool:
    return name in FILES


def _pairs(options: AttributeOptions, pairs_path: Path) -> list[tuple[Any, Any]]:
    records, partners = read_records(options.data), read_records(pairs_path)
    sources = patch_sources(records, partners, None, pairs_path)
    problems = _problems(records, options.data) + _problems(partners, pairs_path)
    out = [(problems[i], problems[s]) for i, s in enumerate(sources) if s is not None]
    if not out:
        raise OpcircuitsError("no problem has a partner (pair_id)", path=pairs_path)
    return out[: options.max_pairs] if options.max_pairs else out


def _step(segment: str) -> int | None:
    return 0 if segment == "bot" else (int(segment[7:]) if segment.startswith("latent_") else None)


def attribute(options: AttributeOptions) -> Path:
    """Run attribution patching as `options` say; returns the path of attribution.json."""
    from opcircuits.codi.interventions import attribution as at
    from opcircuits.codi.resolve import local_folders
    from opcircuits.intervene.parts import refuse_inputs
    from opcircuits.intervene.sweep import load_model

    out = Path(options.out)
    pairs_path = options.pairs if options.pairs is not None else default_pairs(options.data)
    if pairs_path is None:
        raise OpcircuitsError("no partners: give --pairs (or a <data>.pairs.jsonl beside it)",
                              path=options.data, field="pairs")  # fmt: skip
    for field, path in (("data", options.data), ("pairs", pairs_path)):
        if not Path(path).is_file():
            raise OpcircuitsError("no such file", path=path, field=field)
    models = local_folders(options.model, options.checkpoint)
    refuse_inputs(out, {"--data": options.data, "--pairs": pairs_path}, models)
    check_replaceable(out, _ours, field="out")
    candidates = _pairs(options, pairs_path)
    if options.threads is not None:
        import torch

        torch.set_num_threads(options.threads)
    model, tokenizer = load_model(options)
    model.eval()
    pairs = [p for p in candidates if at.scoring(model, tokenizer, *p) is not None]
    dropped = len(candidates) - len(pairs)
    if not pairs:
        raise OpcircuitsError("every pair has the same gold answer: nothing to attribute",
                              path=pairs_path)  # fmt: skip
    _check_fit(model, tokenizer, pairs)
    # Batches of similar prompt widths: a batch is left-padded to its widest prompt, so sorted
    # pairs pad the 600 demo-arith pairs to a mean of 60 tokens instead of 86 (every result is
    # a mean or a test over pairs, so their order does not matter)
    pairs = sorted(pairs, key=lambda p: _width(model, tokenizer, p))
    batches = [pairs[a : a + options.batch_size] for a in range(0, len(pairs), options.batch_size)]

    t0 = time.perf_counter()
    components, raw, blocks_raw, base_m, partner_m = _estimates(
        model, tokenizer, batches, options.graddrop
    )
    atp_s = time.perf_counter() - t0
    plain = normalized(raw, base_m, partner_m)
    estimate = plain
    if blocks_raw is not None:  # the ranking and the check use the GradDrop estimate
        own = np.array([c.kind != "resid" for c in components])
        per_block = np.stack([normalized(d, base_m, partner_m) for d in blocks_raw])
        estimate = graddrop_estimate(plain, per_block, own)
    order = np.argsort(-np.abs(np.nan_to_num(estimate)), kind="stable")
    top = [int(i) for i in order[: options.verify]]
    t1 = time.perf_counter()
    exact_raw = _exact(model, tokenizer, batches, [components[i] for i in top], base_m)
    exact_s = time.perf_counter() - t1
    exact = normalized(exact_raw, base_m, partner_m)
    tests = verified(exact_raw, options.flips, options.seed, options.alpha)

    frame = _frame(components, raw, estimate, order, top, exact, exact_raw, tests)
    if blocks_raw is not None:
        frame["estimate_atp"] = plain
    seconds = {"atp": round(atp_s, 2), "exact": round(exact_s, 2)}
    result = _summary(options, pairs_path, len(pairs), dropped, components, estimate, top,
                      exact, tests, (base_m, partner_m), seconds)  # fmt: skip
    from opcircuits.report.figures.attribution import draw_attribution
    from opcircuits.report.findings.attribution import attribution_sentences

    result["sentences"] = attribution_sentences(result)
    with atomic_dir(out, _ours, field="out") as scratch:
        frame.to_parquet(scratch / "attribution.parquet", index=False)
        figure = draw_attribution(frame, scratch)
        result["figures"] = [figure] if figure else []
        write_json_atomic(scratch / "attribution.json", jsonable(result))
    for s in result["sentences"]:
        log.info("%s", s)
    return out / "attribution.json"


def _width(model, tokenizer, pair) -> int:
    from opcircuits.codi.prompt import prompt_ids

    return max(len(prompt_ids(model, tokenizer, x.question)) for x in pair)


def _check_fit(model, tokenizer, pairs) -> None:
    """Each pair's prompts, thoughts and scored answer prefix fit in the model's positions (an
    error naming the problems, before any work; never positions past what the model knows)."""
    from opcircuits.codi.interventions.attribution import scoring
    from opcircuits.codi.latent import max_positions
    from opcircuits.codi.prompt import prompt_ids

    limit = max_positions(model)
    if limit is None:
        return
    K = model.config.num_latent
    bad = [
        p.id
        for p, q in pairs
        if max(len(prompt_ids(model, tokenizer, x.question)) for x in (p, q))
        + K + len(scoring(model, tokenizer, p, q)[0]) > limit
    ]  # fmt: skip
    if bad:
        shown = ", ".join(bad[:20]) + (f" … ({len(bad)} in all)" if len(bad) > 20 else "")
        raise OpcircuitsError(
            f"{len(bad)} pairs do not fit in this model's {limit} positions with their answer "
            f"prefix: {shown}; shorten or leave out those problems",
            field="question",
        )


def _summary(options, pairs_path, n_pairs, dropped, components, estimate, top, exact, tests,
             metrics, seconds) -> dict[str, Any]:  # fmt: skip
    """attribution.json's content (the sentences and figures are added by the caller)."""
    base_m, partner_m = metrics
    check = {
        "n_verified": len(top),
        "spearman": spearman(estimate[top], exact) if top else None,
        "components": [
            {
                **dataclasses.asdict(components[i]),
                "estimate": float(estimate[i]),
                "exact": float(exact[j]),
                **tests[j],
            }
            for j, i in enumerate(top)
        ],  # fmt: skip
    }
    result = {
        "stage": "attribute",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(options).items()
        },  # fmt: skip
        "pairs_file": str(pairs_path),
        "n_pairs": n_pairs,
        "n_dropped_same_answer": dropped,
        "n_components": len(components),
        "metric": "logit(partner's first differing answer token) − logit(base's), teacher-forced",
        "normalization": "mean change / (mean partner metric − mean base metric)",
        "metric_base_mean": float(base_m.mean()),
        "metric_partner_mean": float(partner_m.mean()),
        "alpha": options.alpha,
        "seconds": seconds,
        "qk_fix": "not applicable: head outputs are patched after their softmax (module doc)",
        "graddrop": options.graddrop,
        "check": check,
    }
    return result


def _estimates(model, tokenizer, batches, graddrop: bool = False):
    """(components, raw estimates [pairs, C], with `graddrop` those with each block's gradient
    dropped [L, pairs, C] (else None), base and partner metrics) over all batches."""
    from opcircuits.codi.interventions import attribution as at

    index: dict[Any, int] = {}
    parts, base, partner = [], [], []
    for chunk in batches:
        comps, r = at.attribute(model, at.make_pairs(model, tokenizer, chunk), graddrop)
        for c in comps:
            index.setdefault(c, len(index))
        est = r["estimate"].numpy()
        drops = r["dropped"].numpy() if graddrop else est[None, :0]
        parts.append((np.array([index[c] for c in comps]), est, drops))
        base.append(r["base"].numpy())
        partner.append(r["partner"].numpy())
    rows = sum(len(e) for _, e, _ in parts)
    raw = np.zeros((rows, len(index)))
    dropped = np.zeros((model.num_layers, rows, len(index))) if graddrop else None
    row = 0
    for cols, est, drops in parts:  # a token a batch lacks is patched nowhere: 0 there
        raw[row : row + len(est), cols] = est
        if dropped is not None:
            dropped[:, row : row + len(est), cols] = drops
        row += len(est)
    return list(index), raw, dropped, np.concatenate(base), np.concatenate(partner)


def _exact(model, tokenizer, batches, chosen, base_m) -> np.ndarray:
    """Exact metric changes [pairs, len(chosen)] of patching each chosen component alone."""
    from opcircuits.codi.interventions import attribution as at

    exact_raw = np.zeros((len(base_m), len(chosen)))
    row = 0
    for chunk in batches if chosen else []:
        P = at.make_pairs(model, tokenizer, chunk)
        metric = at.exact_effects(model, P, chosen).numpy()
        exact_raw[row : row + len(chunk)] = metric - base_m[row : row + len(chunk), None]
        row += len(chunk)
    return exact_raw


def _frame(components, raw, estimate, order, top, exact, exact_raw, tests) -> pd.DataFrame:
    rank = np.empty(len(components), dtype=np.int64)
    rank[order] = np.arange(1, len(components) + 1)
    rows = []
    for i, c in enumerate(components):
        rows.append({
            "kind": c.kind, "segment": c.segment, "step": _step(c.segment), "layer": c.layer,
            "head": c.head if c.kind == "head" else None, "token": c.token,
            "estimate": float(estimate[i]), "estimate_raw": float(raw[:, i].mean()),
            "rank": int(rank[i]),
        })  # fmt: skip
    frame = pd.DataFrame(rows)
    for name in ("step", "head", "token"):
        frame[name] = frame[name].astype("Int64")
    for name in ("exact", "exact_raw", "p", "p_holm"):
        frame[name] = np.nan
    frame["confirmed"] = pd.array([pd.NA] * len(frame), dtype="boolean")
    for j, i in enumerate(top):
        frame.loc[i, ["exact", "exact_raw", "p", "p_holm"]] = [
            exact[j],
            exact_raw[:, j].mean(),
            tests[j]["p"],
            tests[j]["p_holm"],
        ]
        frame.loc[i, "confirmed"] = tests[j]["confirmed"]
    return frame
