"""Logit lens: what the model's output head reads off each thought (records' `lens_top_tokens`).

Each top-1 token is classed as an operator symbol (+ − * / and their variants, canonicalised to
"+", "-", "*", "/"), a number, or other. We report, per category and position, the share of each
class and the most frequent tokens; and how often an operator read off a thought is one that the
problem's solution uses (`ops_used`), against the rate expected if operators were read off at
random with respect to problems (the share of all problems whose solution uses that operator).

The test of the latent steps' match rate takes the problem as the unit: the problems' `ops_used`
are permuted across problems (each keeps its own reads), so the several reads of one problem are
never counted as independent trials.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

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
    permutations: int = 0,
    seed: int = 0,
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
            top_tokens.append({"category": cat, "position": pos, "tokens": _most_read(toks)})
            reads = [
                (i, op)
                for i, (kind, op) in zip(rows, kinds, strict=True)
                if kind == "operator" and ops_sets[i] is not None
            ]
            matches.append({"category": cat, "position": pos, **_match(reads, ops_sets, base)})
    return {
        "positions": names,
        "shares": shares,
        "top_tokens": top_tokens,
        "operator_match": matches if have_ops else [],
        "operator_match_latent": (
            _latent_match(top1, names, ops_sets, permutations, seed) if have_ops else None
        ),
        "operator_base_rates": base if have_ops else {},
    }


def _most_read(toks: list[str]) -> list[dict]:
    """The TOP_TOKENS most frequent tokens, most frequent first (ties alphabetically)."""
    ranked = sorted(Counter(toks).items(), key=lambda kv: (-kv[1], kv[0]))
    return [{"token": printable(t), "count": c} for t, c in ranked[:TOP_TOKENS]]


def _match(
    reads: list[tuple[int, str]], ops_sets: list[set[str] | None], base: dict[str, float]
) -> dict:
    """How often an operator read at a position is one its problem uses, against chance."""
    hits = sum(op in ops_sets[i] for i, op in reads)
    return {
        "n_operator_reads": len(reads),
        "matches": hits,
        "match_rate": hits / len(reads) if reads else None,
        "baseline_rate": float(np.mean([base[op] for _, op in reads])) if reads else None,
        "operators_read": dict(sorted(Counter(op for _, op in reads).items())),
    }


def _latent_match(
    top1: list[list[str] | None],
    names: list[str],
    ops_sets: list[set[str] | None],
    permutations: int,
    seed: int,
) -> dict | None:
    """All categories, latent positions pooled: how often an operator read off a latent step is
    one the problem's solution uses, against permutations of `ops_used` across problems."""
    latent = [j for j, p in enumerate(names) if p.startswith("latent")]
    ops = "+-*/"
    rows = [i for i, t in enumerate(top1) if t is not None and ops_sets[i] is not None]
    reads = np.zeros((len(rows), len(ops)))  # per problem: how often each operator is read
    for r, i in enumerate(rows):
        for j in latent:
            if j < len(top1[i]):
                kind, op = classify(top1[i][j])
                if kind == "operator":
                    reads[r, ops.index(op)] += 1
    total = float(reads.sum())
    if not total:
        return None
    uses = np.array([[op in ops_sets[i] for op in ops] for i in rows], dtype=np.float64)
    hits = float(np.sum(reads * uses))
    rng = np.random.default_rng([seed, 5])
    null = np.array([np.sum(reads * uses[rng.permutation(len(rows))]) for _ in range(permutations)])
    expected = float(null.mean()) if permutations else float(reads.sum(0) @ uses.mean(0))
    p = None
    if permutations:
        # Two-sided: as far from the permutation mean as observed, either way.
        far = np.abs(null - expected) >= abs(hits - expected) - 1e-9
        p = (int(far.sum()) + 1) / (permutations + 1)
    return {
        "n_operator_reads": int(total),
        "n_problems": int(np.sum(reads.sum(axis=1) > 0)),
        "matches": int(hits),
        "match_rate": hits / total,
        "baseline_rate": expected / total,
        "p_value": p,
        "test": "permutation of ops_used across problems (two-sided)",
    }
