"""A finished sweep's outputs: interventions.parquet (the parts merged), interventions.json
(provenance, effects with CIs, the accuracy-by-thoughts curve, findings) and its figures."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from opcircuits.files import write_json_atomic
from opcircuits.intervene.parts import MANIFEST, RESULT, TABLE, merge_parts, shards
from opcircuits.options import InterveneOptions

log = logging.getLogger(__package__)  # the command's logger, as before the package split


def finalize(
    out: Path,
    options: InterveneOptions,
    manifest: dict[str, Any],
    notes: list[str],
    stats,
    ids: list[str],
) -> Path:
    """Merge the parts (of the problems `ids`, in data order) into interventions.parquet,
    aggregate, draw, mark complete."""
    from opcircuits.report.figures import draw_causal

    table = merge_parts(out, manifest, shards(len(ids), options.shard_size), ids)
    frame = table.to_pandas()
    result = summarize(frame, manifest, options, notes)
    result["figures"] = draw_causal(result, out)
    write_json_atomic(out / RESULT, result)
    if not manifest.get("complete"):
        write_json_atomic(out / MANIFEST, {**manifest, "complete": True})
    log.info("%s: %d rows (answers found: %s)", out / TABLE, len(frame), dict(stats))
    return out / RESULT


def summarize(
    frame: pd.DataFrame, manifest: dict[str, Any], options: InterveneOptions, notes: list[str]
) -> dict[str, Any]:
    """interventions.json: provenance, clean accuracy, effects with CIs, interactions, the
    accuracy-by-thoughts curve and the findings (sentences computed from the numbers)."""
    from opcircuits.analysis import causal
    from opcircuits.analysis.stats import wilson_interval
    from opcircuits.report.findings import causal as causal_findings

    frame, notes = _follows_defined(frame), [*notes, *_same_answer_note(frame)]
    effects, interactions = causal.effects(frame, n_boot=options.bootstrap, seed=options.seed)
    clean = frame[frame["kind"] == "none"]
    cats = sorted(clean["category"].astype(str).unique())
    clean_acc = {}
    for cat in [*cats, causal.ALL]:
        sub = clean if cat == causal.ALL else clean[clean["category"] == cat]
        w = wilson_interval(float(sub["correct"].sum()), len(sub))
        clean_acc[cat] = {"n": len(sub), "accuracy": w.mean, "ci": [w.low, w.high]}
    K = manifest["num_latent"]
    # Accuracy against the number of thoughts kept (K = the clean run), Wilson CIs: eot and the
    # answer right after the kept thoughts (natural positions) or at their K-thought position
    # ids (position-preserved).
    thoughts = []
    for positions, kind in (("natural", "truncate"), ("preserved", "truncate_pos")):
        trunc = frame[frame["kind"].isin([kind, "none"])]
        if not (trunc["kind"] == kind).any():
            continue
        for cat in [*cats, causal.ALL]:
            in_cat = trunc if cat == causal.ALL else trunc[trunc["category"] == cat]
            for k, sub in in_cat.groupby("thoughts"):
                w = wilson_interval(float(sub["correct"].sum()), len(sub))
                thoughts.append(
                    {"thoughts": int(k), "category": cat, "positions": positions, "n": len(sub),
                     "accuracy": w.mean, "ci": [w.low, w.high]}
                )  # fmt: skip
    result = {
        "provenance": {
            k: v for k, v in manifest.items() if k not in ("options", "complete", "parts")
        },
        "options": manifest["options"],
        "num_latent": K,
        "num_layers": manifest["num_layers"],
        "positions": ["bot"] + [f"latent_{k}" for k in range(1, K + 1)],
        "categories": cats,
        "clean": clean_acc,
        "thoughts": _round(thoughts),
        "effects": _round(effects),
        "interactions": _round(interactions),
        "routing": _routing(frame, options),
        "erasure": _round(causal.erasure(frame, n_boot=options.bootstrap, seed=options.seed)),
        "notes": notes,
        "methods": causal.METHODS,
    }
    result["findings"] = causal_findings.sentences(result)
    return result


def _same_source(frame: pd.DataFrame) -> pd.Series:
    """Rows patched from a source whose gold answer is the problem's own: "follows the
    partner" cannot be told apart from "answers correctly" there."""
    if "source_gold" not in frame.columns:
        return pd.Series(False, index=frame.index)
    return frame["source_gold"].notna() & (frame["source_gold"] == frame["gold"])


def _follows_defined(frame: pd.DataFrame) -> pd.DataFrame:
    same = _same_source(frame)
    if not same.any():
        return frame
    frame = frame.copy()
    frame["follows_source"] = frame["follows_source"].astype(object).where(~same, None)
    return frame


def _same_answer_note(frame: pd.DataFrame) -> list[str]:
    ids = sorted(set(frame.loc[_same_source(frame), "id"].astype(str)))
    if not ids:
        return []
    shown = ", ".join(ids[:5]) + (" …" if len(ids) > 5 else "")
    return [
        f"{len(ids)} problem(s) ({shown}) are patched from a source with the same gold answer: "
        "whether they follow the source is undefined, so they are left out of follows_source."
    ]


def _routing(frame: pd.DataFrame, options: InterveneOptions) -> dict[str, Any]:
    from opcircuits.analysis import causal

    got = causal.routing(frame, n_boot=options.bootstrap, seed=options.seed)
    return {k: _round(v) if isinstance(v, list) else v for k, v in got.items()}


def _round(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Floats to 6 decimals (stable JSON); NaN never reaches the file."""

    def r(v: Any) -> Any:
        if isinstance(v, float):
            return None if not math.isfinite(v) else round(v, 6)
        if isinstance(v, list):
            return [r(x) for x in v]
        return v

    return [{k: r(v) for k, v in row.items()} for row in rows]
