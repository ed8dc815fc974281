"""Logit lens: what the model's output head reads off each thought (records' `lens_top_tokens`).

Each top-1 token is classed as an operator symbol (+ − * / and their variants, canonicalised to
"+", "-", "*", "/"), a number, or other. We report, per category and position, the share of each
class and the most frequent tokens; and how often an operator read off a thought is one that the
problem's solution uses (`ops_used`), against the rate expected if operators were read off at
random with respect to problems (the share of all problems whose solution uses that operator).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy import stats

OPERATORS = {
    "+": "+",
    "plus": "+",
    "-": "-",
    "−": "-",
    "–": "-",
    "minus": "-",
    "*": "*",
    "×": "*",
    "·": "*",
    "times": "*",
    "/": "/",
    "÷": "/",
    "∕": "/",
}
# Tokenizer word-boundary markers (GPT-2 byte-level "Ġ", SentencePiece "▁") and whitespace.
_MARKERS = re.compile(r"^[\sĠ▁Ċ]+|[\sĠ▁Ċ]+$")
_NUMBER = re.compile(r"^[$]?[\d][\d.,]*%?$|^[.,]\d+$")
CLASSES = ("operator", "number", "other")
TOP_TOKENS = 8


def printable(token: str) -> str:
    """Token text safe to show: control and other unprintable characters as \\xNN escapes."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(token))


def normalize(token: str) -> str:
    return _MARKERS.sub("", str(token))


def classify(token: str) -> tuple[str, str | None]:
    """("operator", canonical symbol) | ("number", None) | ("other", None)."""
    t = normalize(token)
    # A bare "x" is more often a variable than a multiplication sign, so it is not an operator.
    op = OPERATORS.get(t.lower())
    if op is not None:
        return "operator", op
    if _NUMBER.match(t):
        return "number", None
    return "other", None


def lens_positions(n_lens: int, store_positions: Sequence[str]) -> list[str]:
    """Names for the lens entries: the store's positions, or its latent positions, or indices."""
    if n_lens == len(store_positions):
        return list(store_positions)
    lat = [p for p in store_positions if p.startswith("latent")]
    if n_lens == len(lat):
        return lat
    return [f"lens_{i}" for i in range(n_lens)]


def _top1(entry: object) -> list[str] | None:
    """Top-1 token per position from one record's lens_top_tokens (list over positions of top-k)."""
    if entry is None:
        return None
    out = []
    for topk in list(entry):
        topk = list(topk) if topk is not None else []
        out.append(str(topk[0]) if topk else "")
    return out


def analyze(
    tokens: Sequence[object],
    categories: Sequence[str],
    category_names: Sequence[str],
    ops_used: Sequence[object] | None,
    store_positions: Sequence[str],
) -> dict:
    top1 = [_top1(t) for t in tokens]
    n_lens = max((len(t) for t in top1 if t is not None), default=0)
    names = lens_positions(n_lens, store_positions)
    ops_sets: list[set[str] | None] = []
    for o in ops_used if ops_used is not None else [None] * len(top1):
        ops_sets.append(None if o is None else {str(s) for s in list(o)})
    have_ops = [s for s in ops_sets if s is not None]
    # Chance that an operator read at random is used by a problem: share of problems using it.
    base = {
        op: float(np.mean([op in s for s in have_ops])) if have_ops else float("nan")
        for op in "+-*/"
    }
    shares, top_tokens, matches = [], [], []
    groups = [*category_names, "all"]
    for cat in groups:
        rows = [
            i
            for i, c in enumerate(categories)
            if (cat == "all" or c == cat) and top1[i] is not None
        ]
        for j, pos in enumerate(names):
            toks = [top1[i][j] for i in rows if j < len(top1[i])]
            kinds = [classify(t) for t in toks]
            n = len(toks)
            counts = Counter(k for k, _ in kinds)
            shares.append(
                {
                    "category": cat,
                    "position": pos,
                    "n": n,
                    **{k: (counts[k] / n if n else None) for k in CLASSES},
                }
            )
            top_tokens.append(
                {
                    "category": cat,
                    "position": pos,
                    "tokens": [
                        {"token": printable(t), "count": c}
                        for t, c in sorted(Counter(toks).items(), key=lambda kv: (-kv[1], kv[0]))[
                            :TOP_TOKENS
                        ]
                    ],
                }
            )
            reads = [
                (i, op)
                for i, (kind, op) in zip(rows, kinds, strict=True)
                if kind == "operator" and ops_sets[i] is not None
            ]
            hits = sum(op in ops_sets[i] for i, op in reads)
            matches.append(
                {
                    "category": cat,
                    "position": pos,
                    "n_operator_reads": len(reads),
                    "matches": hits,
                    "match_rate": hits / len(reads) if reads else None,
                    "baseline_rate": float(np.mean([base[op] for _, op in reads]))
                    if reads
                    else None,
                    "operators_read": dict(sorted(Counter(op for _, op in reads).items())),
                }
            )
    return {
        "positions": names,
        "shares": shares,
        "top_tokens": top_tokens,
        "operator_match": matches if have_ops else [],
        "operator_match_latent": _latent_match(matches) if have_ops else None,
        "operator_base_rates": base if have_ops else {},
    }


def _latent_match(matches: list[dict]) -> dict | None:
    """All categories, latent positions pooled: match rate vs baseline with an exact binomial
    test (two-sided; reads treated as independent trials at the mean baseline rate)."""
    rows = [
        m
        for m in matches
        if m["category"] == "all" and m["position"].startswith("latent") and m["n_operator_reads"]
    ]
    if not rows:
        return None
    reads = sum(m["n_operator_reads"] for m in rows)
    hits = sum(m["matches"] for m in rows)
    base = sum(m["baseline_rate"] * m["n_operator_reads"] for m in rows) / reads
    p = float(stats.binomtest(hits, reads, min(max(base, 0.0), 1.0)).pvalue)
    return {
        "n_operator_reads": reads,
        "matches": hits,
        "match_rate": hits / reads,
        "baseline_rate": base,
        "p_value": p,
    }
