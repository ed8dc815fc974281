"""A file of synthetic problems: balanced, step-matched generation, the partners' files (the
operation partners `<name>.pairs.jsonl`, the value partners `<name>.value_pairs.jsonl`) and the
manifest (`synth`, the `data synth` command)."""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from opcircuits.data.annotations import CATEGORIES
from opcircuits.data.synth.language import FRAMES, heldout_frame
from opcircuits.data.synth.plans import (
    TEST_COMPUTATION_PERCENT,
    check_feasible,
    draw_plan,
    partner,
    value_partner,
)
from opcircuits.data.synth.records import record, value_partner_record
from opcircuits.data.synth.rules import RULE_SETS, RULES_TEST_PERCENT, Pool
from opcircuits.data.synth.rules_records import PHRASINGS, generate_rules, heldout_phrasing
from opcircuits.files import (
    check_own_outputs,
    manifest_path,
    sha256_file,
    write_json_atomic,
    write_jsonl_atomic,
)
from opcircuits.options import SynthOptions
from opcircuits.versions import __version__

log = logging.getLogger(__package__)  # the command's logger, as before the package split


def allocate_steps(per_category: int, counts: list[int]) -> dict[int, int]:
    """Split a category's problems over step counts as evenly as possible (extra → fewer steps);
    the same for every category, so the step histograms match by construction."""
    q, r = divmod(per_category, len(counts))
    return {c: q + (i < r) for i, c in enumerate(counts)}


def _slots(options: SynthOptions) -> list[tuple[str, int]]:
    per_step = allocate_steps(options.n // len(CATEGORIES), options.step_counts())
    return [(c, k) for c in CATEGORIES for k, m in per_step.items() for _ in range(m)]


Records = list[dict[str, Any]]


def generate(options: SynthOptions) -> tuple[Records, Records]:
    """The problems (balanced, step-matched, shuffled) and their counterfactual partners."""
    if options.kind == "rules":
        problems, partners, _, _ = generate_rules(options, _slots(options))
        return problems, partners
    problems, partners, _ = _generate_chain(options)
    return problems, partners


def _generate_chain(options: SynthOptions) -> tuple[Records, Records, Records]:
    """The chain kind's problems, partners and value partners (where a problem has one)."""
    rng = random.Random(f"opcircuits-synth:{options.seed}:{options.split}")
    slots = _slots(options)
    rng.shuffle(slots)
    seen_frames = [f for f in range(len(FRAMES)) if not heldout_frame(f)]
    held = [f for f in range(len(FRAMES)) if heldout_frame(f)]
    problems, partners, value_partners = [], [], []
    for i, (category, n_steps) in enumerate(slots):
        use_held = options.split == "test" and rng.random() < options.heldout_share
        frame = rng.choice(held if use_held else seen_frames)
        plan = draw_plan(rng, category, n_steps, frame, options)
        found = partner(plan, options)
        assert found is not None  # draw_plan only returns plans that have one
        other, changed = found
        pid = f"synth_{i}"
        rec = record(pid, plan, options.split)
        problems.append({**rec, "pair_id": f"pair_{i}", "changed_step": changed + 1})
        partners.append(
            {**record(f"synth_cf_{i}", other, options.split), "pair_id": f"pair_{i}",
             "changed_step": changed + 1, "partner_of": pid}
        )  # fmt: skip
        # a fixed per-plan order, drawn from no stream: the main file is the same without it
        same_ops = value_partner(plan, options)
        if same_ops is not None:
            theirs = record(f"synth_vp_{i}", same_ops, options.split)
            value_partners.append(value_partner_record(i, pid, theirs))
    return problems, partners, value_partners


def pairs_path(out: Path) -> Path:
    """`data/x.jsonl` → `data/x.pairs.jsonl`."""
    return out.with_name(f"{out.stem}.pairs.jsonl")


def value_pairs_path(out: Path) -> Path:
    """`data/x.jsonl` → `data/x.value_pairs.jsonl`."""
    return out.with_name(f"{out.stem}.value_pairs.jsonl")


def _value_manifest(problems: Records, value_partners: Records) -> dict[str, Any]:
    """How many problems have a value partner, and which categories lack one (counted: a
    problem has none when no other start keeps its operations with every result valid)."""
    linked = {r["partner_of"] for r in value_partners}
    return {
        "value_partners": len(value_partners),
        "without_value_partner": dict(
            Counter(r["category"] for r in problems if r["id"] not in linked)
        ),
    }


def _histograms(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    return {
        c: {
            str(k): n
            for k, n in sorted(Counter(r["n_steps"] for r in records if r["category"] == c).items())
        }
        for c in CATEGORIES
    }


def _rules_manifest(
    problems: list[dict[str, Any]], partners: list[dict[str, Any]], pool: Pool, balance: str
) -> dict[str, Any]:
    """What the rules kind adds to the manifest: rule sets, phrasings, partners, the pool."""
    return {
        "kind": "rules",
        "rule_sets": len(RULE_SETS),
        "phrasings": len(PHRASINGS),
        "heldout_phrasing_ids": [p for p in range(len(PHRASINGS)) if heldout_phrasing(p)],
        "heldout_phrasings": sum(r["heldout_phrasing"] for r in problems),
        "test_computation_percent": RULES_TEST_PERCENT,
        "pool": {
            "computations": len(pool.plans),
            "drawn_from": int((pool.weight > 0).sum()) if balance == "raked" else len(pool.plans),
            "largest_marginal_difference": pool.deviation,
        },
        "partners": len(partners),
        "without_partner": dict(Counter(r["category"] for r in problems if r["pair_id"] is None)),
        "changed_step": dict(sorted(Counter(str(r["changed_step"]) for r in partners).items())),
    }


def synth(options: SynthOptions) -> Path:
    """Write the problems (and partners) with a manifest beside them; returns the output path."""
    out = Path(options.out)
    # Before anything is drawn: replace only files an earlier manifest here says are ours.
    siblings = [pairs_path(out), value_pairs_path(out)]
    check_own_outputs([out, *siblings, manifest_path(out)], manifest_path(out))
    if options.kind == "chain":
        check_feasible(options, _slots(options))
    pool = None
    if options.kind == "rules":
        problems, partners, value_partners, pool = generate_rules(options, _slots(options))
    else:
        problems, partners, value_partners = _generate_chain(options)
    write_jsonl_atomic(out, problems)
    outputs: dict[str, Any] = {"output_sha256": sha256_file(out)}
    if options.pairs:
        files = [("pairs", partners), ("value_pairs", value_partners)]
        for (key, rows), path in zip(files, siblings, strict=True):
            write_jsonl_atomic(path, rows)
            outputs[key] = str(path)
            outputs[f"{key}_sha256"] = sha256_file(path)
        outputs.update(_value_manifest(problems, value_partners))
    for path in siblings:
        if not options.pairs and path.is_file():
            # ours (checked above) and of the earlier problems: left beside the new ones, it
            # would be taken for their partners (`intervene` and `das` read them by default)
            path.unlink()
    opts = asdict(options)
    opts["out"] = str(out)
    if options.kind == "chain":
        # the chain kind's manifest stays as it was before kinds existed
        del opts["kind"], opts["balance"]
    extra = (
        {"test_computation_percent": TEST_COMPUTATION_PERCENT}
        if pool is None
        else _rules_manifest(problems, partners, pool, options.balance)
    )
    write_json_atomic(
        manifest_path(out),
        {
            "stage": "data synth",
            "opcircuits_version": __version__,
            "options": opts,
            "seed": options.seed,
            "counts": dict(Counter(r["category"] for r in problems)),
            "n_steps": _histograms(problems),
            "heldout_frames": sum(r["heldout_frame"] for r in problems),
            "frames": len(FRAMES),
            "heldout_frame_ids": [f for f in range(len(FRAMES)) if heldout_frame(f)],
            **extra,
            "partner_categories": dict(Counter(r["category"] for r in partners)),
            **outputs,
        },
    )
    log.info("wrote %d problems to %s", len(problems), out)
    return out
