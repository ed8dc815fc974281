"""Label every problem by operation, then sample balanced (optionally step-matched) sets.

Sampling is deterministic: each (category, n_steps stratum) draws from its own `random.Random`
seeded with a string built from the seed, so the same input, options and seed give byte-identical
output on any machine and Python version.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.progress import track

from opcircuits.data.annotations import (
    CATEGORIES,
    UNCLASSIFIED,
    UNCLASSIFIED_REASONS,
    Label,
    label_record,
)
from opcircuits.data.io import PAIR_FIELDS, RECORD_FIELDS, read_problems
from opcircuits.errors import OpcircuitsError
from opcircuits.files import (
    check_own_outputs,
    manifest_path,
    refuse_same_files,
    sha256_file,
    write_json_atomic,
    write_jsonl_atomic,
)
from opcircuits.options import ClassifyOptions, PrototypeOptions
from opcircuits.versions import __version__

log = logging.getLogger(__name__)


def classify_out(options: ClassifyOptions) -> Path:
    return Path(options.out or f"data/operation_samples_{options.per_category}.jsonl")


def prototype_out(options: PrototypeOptions) -> Path:
    n = len(CATEGORIES) * options.per_category
    return Path(options.out or f"data/operation_samples_prototype_{n}.jsonl")


def label(
    record: Mapping[str, Any], category: str | None = None, lab: Label | None = None
) -> dict[str, Any]:
    """The record with `category`, `n_steps`, `operators` set from its annotations.

    `category`, when given, is kept instead of the derived one (a file's own labels); `lab` is
    the record's label when already computed.
    """
    lab = lab or label_record(record)
    out = {k: record[k] for k in RECORD_FIELDS[:7]}
    out["category"] = category or lab.category
    out["n_steps"] = len(record["steps"])
    out["operators"] = lab.operators
    # A synthetic problem's link to its counterfactual partner (data/synth/) survives sampling,
    # so the sampled file can still be patched from its partners (`opcircuits intervene`).
    out.update({k: record[k] for k in PAIR_FIELDS if record.get(k) is not None})
    return out


def label_all(records: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict]:
    """Label every record; also return the distribution (counts per category and reason)."""
    labelled, reasons, others = [], Counter(), Counter()
    for rec in track(records, description="labelling", transient=True):
        lab = label_record(rec)
        labelled.append(label(rec, lab=lab))
        if lab.reason:
            reasons[lab.reason] += 1
            others.update(lab.other_operators)
    by_category = Counter(r["category"] for r in labelled)
    distribution = {
        "total": len(labelled),
        "categories": {c: by_category[c] for c in (*CATEGORIES, UNCLASSIFIED)},
        "unclassified_reasons": {r: reasons[r] for r in UNCLASSIFIED_REASONS},
        "other_operators": dict(sorted(others.items())),
    }
    return labelled, distribution


def allocate(n: int, capacity: Mapping[int, int]) -> dict[int, int]:
    """Split `n` over strata in proportion to `capacity` (largest remainder, ties → lower key).

    Requires n ≤ sum(capacity); no stratum gets more than its capacity.
    """
    total = sum(capacity.values())
    if n > total:
        raise ValueError(f"cannot allocate {n} over a capacity of {total}")
    if total == 0:
        return dict.fromkeys(capacity, 0)
    shares = {s: divmod(n * c, total) for s, c in capacity.items()}
    alloc = {s: q for s, (q, _) in shares.items()}
    left = n - sum(alloc.values())
    for s in sorted(shares, key=lambda s: (-shares[s][1], s))[:left]:
        alloc[s] += 1
    return alloc


def _draw(pool: list[int], k: int, seed: int, *key: object) -> list[int]:
    rng = random.Random(":".join(str(x) for x in ("opcircuits", seed, *key)))
    return rng.sample(pool, k)


def sample_groups(
    groups: Mapping[str, list[dict[str, Any]]],
    n: int,
    seed: int,
    *,
    match_steps: bool,
    allow_fewer: bool,
    source: Path | None = None,
    hint: str = "lower it or pass --allow-fewer",
) -> dict[str, list[dict[str, Any]]]:
    """Draw `n` records per group, in input order within a group.

    `match_steps`: every group gets the same `n_steps` histogram: per stratum, the capacity is
    the fewest any group has; `n` is split over strata in proportion to it.
    """
    if n < 1:
        raise OpcircuitsError(f"--per-category must be at least 1, got {n}", field="per_category")
    chosen: dict[str, list[int]] = {}
    if match_steps:
        hist = {g: Counter(r["n_steps"] for r in recs) for g, recs in groups.items()}
        strata = sorted(set().union(*hist.values()))
        capacity = {s: min(h[s] for h in hist.values()) for s in strata}
        total = sum(capacity.values())
        if total < n:
            if not allow_fewer:
                raise OpcircuitsError(
                    f"only {total} problems per category can share one n_steps distribution, "
                    f"fewer than --per-category {n}; {hint}",
                    path=source,
                    field="per_category",
                )
            log.warning("only %d problems per category with matched n_steps (asked %d)", total, n)
        alloc = allocate(min(n, total), capacity)
        for g, recs in groups.items():
            picks: list[int] = []
            for s in strata:
                pool = [i for i, r in enumerate(recs) if r["n_steps"] == s]
                picks += _draw(pool, alloc[s], seed, g, s)
            chosen[g] = picks
    else:
        for g, recs in groups.items():
            k = n
            if len(recs) < n:
                if not allow_fewer:
                    raise OpcircuitsError(
                        f"category {g} has only {len(recs)} problems, fewer than "
                        f"--per-category {n}; {hint}",
                        path=source,
                        field="per_category",
                    )
                log.warning("category %s: only %d problems (asked %d)", g, len(recs), n)
                k = len(recs)
            chosen[g] = _draw(list(range(len(recs))), k, seed, g)
    return {g: [groups[g][i] for i in sorted(chosen[g])] for g in groups}


def step_histograms(groups: Mapping[str, list[dict[str, Any]]]) -> dict[str, dict[str, int]]:
    return {
        g: {str(s): n for s, n in sorted(Counter(r["n_steps"] for r in recs).items())}
        for g, recs in groups.items()
    }


def _options_dict(options: Any, out: Path) -> dict[str, Any]:
    d = asdict(options)
    d.update(in_path=str(options.in_path), out=str(out))
    return d


def classify(options: ClassifyOptions) -> Path:
    """Label all problems of `options.in_path`, sample per category, write output + manifest."""
    out = classify_out(options)
    refuse_same_files({"out": [out, manifest_path(out)]}, {"--data": options.in_path})
    check_own_outputs([out, manifest_path(out)], manifest_path(out))
    records = read_problems(options.in_path)
    labelled, distribution = label_all(records)
    log.info("labelled %d problems: %s", distribution["total"], distribution["categories"])
    groups = {c: [r for r in labelled if r["category"] == c] for c in CATEGORIES}
    sampled = sample_groups(
        groups,
        options.per_category,
        options.seed,
        match_steps=options.match_steps,
        allow_fewer=options.allow_fewer,
        source=Path(options.in_path),
    )
    write_jsonl_atomic(out, [r for c in CATEGORIES for r in sampled[c]])
    write_json_atomic(
        manifest_path(out),
        {
            "stage": "data classify",
            "opcircuits_version": __version__,
            "source": str(options.in_path),
            "source_sha256": sha256_file(options.in_path),
            "options": _options_dict(options, out),
            "seed": options.seed,
            "distribution": distribution,
            "counts": {c: len(sampled[c]) for c in CATEGORIES},
            "n_steps": step_histograms(sampled),
            "output_sha256": sha256_file(out),
        },
    )
    log.info("wrote %s", out)
    return out


def prototype(options: PrototypeOptions) -> Path:
    """A smaller set nested in a sampled one: `per_category` problems per category.

    If every category of the input has the same n_steps histogram (a `--match-steps` sample),
    the prototype is drawn step-matched too, so the matching survives.
    """
    out = prototype_out(options)
    refuse_same_files({"out": [out, manifest_path(out)]}, {"--data": options.in_path})
    check_own_outputs([out, manifest_path(out)], manifest_path(out))
    records = read_problems(options.in_path)
    groups: dict[str, list[dict[str, Any]]] = {c: [] for c in CATEGORIES}
    for rec in records:
        category = rec.get("category")
        if category not in groups:
            raise OpcircuitsError(
                f"problem {rec['id']} has category {category!r}; the input must be a sampled "
                "set (run `opcircuits data classify` first)",
                path=options.in_path,
                field="category",
            )
        groups[category].append(label(rec, category))
    groups = {c: g for c, g in groups.items() if g}
    disagree = sum(label_record(r).category != c for c, g in groups.items() for r in g)
    if disagree:
        log.warning(
            "%d problems carry a category their annotations do not give (kept as is)", disagree
        )
    hists = step_histograms(groups)
    matched = len({tuple(h.items()) for h in hists.values()}) == 1
    sampled = sample_groups(
        groups,
        options.per_category,
        options.seed,
        match_steps=matched,
        allow_fewer=False,
        source=Path(options.in_path),
        hint="lower it",
    )
    write_jsonl_atomic(out, [r for c in groups for r in sampled[c]])
    write_json_atomic(
        manifest_path(out),
        {
            "stage": "data prototype",
            "opcircuits_version": __version__,
            "source": str(options.in_path),
            "source_sha256": sha256_file(options.in_path),
            "options": _options_dict(options, out),
            "seed": options.seed,
            "step_matched": matched,
            "input_counts": {c: len(g) for c, g in groups.items()},
            "counts": {c: len(sampled[c]) for c in groups},
            "n_steps": step_histograms(sampled),
            "output_sha256": sha256_file(out),
        },
    )
    log.info("wrote %s", out)
    return out
