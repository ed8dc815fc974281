"""The pairs of `opcircuits das --variable result`: each problem and its value partner.

A value partner (`data synth`'s `<name>.value_pairs.jsonl`) keeps every operation of its problem
and changes the start number (`changed_value: "start"`), so every intermediate result r_j
differs. Swapping "r_j" from it must then give the partner's answer: the operations after step j
are the same in both problems, so the partner's r_j determines the partner's answer. A pair
counts once for every step j it has (j ≤ its number of steps) whose results differ; a partner
that changes an operation is refused (it would measure the operation, not the result).

Linked by `partner_of` (the problem's id), not `pair_id`: the problems' pair_id names their
operation partners.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from opcircuits.errors import OpcircuitsError
from opcircuits.intervene.partners import Inputs, _names, _problems, read_records

_EXPR = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([-+*/])\s*(-?\d+(?:\.\d+)?)\s*$")
CHANGED = "changed_value"


@dataclass
class DasPairs:
    """What `das` trains and evaluates on: one row per (pair, step j) of the variable."""

    pair_set: Any  # codi.interventions.das.PairSet (torch stays out of this module's imports)
    steps: np.ndarray  # per row: the step j it is a pair for
    groups: np.ndarray  # per row: its pair (the held-out split is by pair)
    inputs: Inputs
    equal_answers: int  # pairs left out: the same gold answer in both
    equal_results: int = 0  # (pair, step) rows left out: the same r_j in both


def value_pairs_of(data: Path) -> Path:
    """`data/x.jsonl` → `data/x.value_pairs.jsonl` (as `opcircuits data synth` writes it)."""
    return data.with_name(f"{data.stem}.value_pairs.jsonl")


def _ops(record: dict[str, Any]) -> list[str | None]:
    """The operation of each solution step (None where its expression is not `a op b`)."""
    out = []
    for step in record.get("steps") or []:
        m = _EXPR.match(str(step.get("expr", ""))) if isinstance(step, dict) else None
        out.append(m.group(2) if m else None)
    return out


def _results(record: dict[str, Any]) -> list[str]:
    return [str(s.get("result", "")).strip() for s in record.get("steps") or []]


def _links(records: list[dict[str, Any]], partners: list[dict[str, Any]], pairs: Path) -> dict:
    """problem row → partner row (among `partners`): the one value partner naming it."""
    ids = {str(r["id"]): i for i, r in enumerate(records)}
    reused = [str(p["id"]) for p in partners if str(p["id"]) in ids]
    if reused:
        raise OpcircuitsError(
            f"{len(reused)} value partner(s) reuse ids of problems in --data ({_names(reused)})",
            path=pairs,
            field="id",
        )
    links: dict[int, int] = {}
    for k, p in enumerate(partners):
        base = ids.get(str(p.get("partner_of")))
        if base is None or p.get(CHANGED) is None:
            continue
        if base in links:
            raise OpcircuitsError(
                f"problem {p['partner_of']!r} has more than one value partner; give one each",
                path=pairs,
                field="partner_of",
            )
        links[base] = k
    if not links:
        raise OpcircuitsError(
            "no value partners: --variable result needs records with partner_of (the id of a "
            f"problem in --data) and {CHANGED} (data synth writes <data>.value_pairs.jsonl; a "
            "pairs file of operation partners has no such records)",
            path=pairs,
            field=CHANGED,
        )
    return links


def value_inputs(data: Path, pairs: Path) -> DasPairs:
    """One row per value pair and step j whose r_j differs; pairs with equal answers and
    (pair, step) rows with equal r_j are left out and counted."""
    from opcircuits.codi.interventions.das import PairSet

    records, partners = read_records(data), read_records(pairs)
    links = _links(records, partners, pairs)
    problems = _problems(records, data) + _problems(partners, pairs)
    base, source, step, group = [], [], [], []
    equal_answers = equal_results = n_pairs = 0
    for b, k in sorted(links.items()):
        mine, theirs = records[b], partners[k]
        if _ops(mine) != _ops(theirs):
            raise OpcircuitsError(
                f"value partner {theirs['id']!r} of {mine['id']!r} changes an operation "
                f"({_ops(mine)} → {_ops(theirs)}); a value partner keeps every operation",
                path=pairs,
                field="steps",
            )
        s = len(records) + k
        if problems[b].gold_value == problems[s].gold_value:
            equal_answers += 1  # the answer would "follow" the partner unchanged
            continue
        for j, (x, y) in enumerate(zip(_results(mine), _results(theirs), strict=True), start=1):
            if x == y:
                equal_results += 1  # r_j the same in both: no counterfactual of r_j
                continue
            base.append(b)
            source.append(s)
            step.append(j)
            group.append(n_pairs)
        n_pairs += 1
    if not base:
        raise OpcircuitsError("no value pairs with different results and answers", path=pairs)
    used = sorted(set(base) | set(source))
    row = {old: new for new, old in enumerate(used)}
    pair_set = PairSet([problems[i] for i in used], [row[i] for i in base],
                       [row[i] for i in source])  # fmt: skip
    sources: list[int | None] = [None] * len(records)
    for b, k in links.items():
        sources[b] = len(records) + k
    inputs = Inputs(records, problems, sources)
    return DasPairs(pair_set, np.array(step), np.array(group), inputs, equal_answers,
                    equal_results)  # fmt: skip
