"""Control tasks in Hewitt & Liang's sense (2019): how much of a probe's accuracy is its own
capacity to memorize, rather than structure in the thoughts?

The control labels are a fixed random function of an input property a probe could memorize
from the states (the question's first word): every problem with the same first word gets the same
label, and words are assigned so that the control classes have the real classes' sizes. A
probe's *selectivity* is its accuracy on the real task minus its accuracy on this control task,
on the same folds.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"[^\W_]+")


def first_word(question: str) -> str:
    match = _WORD.search(question)
    return match.group(0).lower() if match else ""


def control_labels(keys: Sequence[str], y: np.ndarray, seed: int) -> np.ndarray:
    """Labels that depend only on `keys` (one label per distinct key, chosen at random), with
    class sizes as close to `y`'s as whole keys allow."""
    rng = np.random.default_rng([seed, 13])
    counts = Counter(keys)
    types = sorted(counts)
    tiebreak = rng.permutation(len(types))
    # Largest groups first, each to the class furthest below its real size (random ties).
    order = sorted(range(len(types)), key=lambda i: (-counts[types[i]], tiebreak[i]))
    target = np.bincount(y).astype(np.float64)
    filled = np.zeros_like(target)
    label: dict[str, int] = {}
    for i in order:
        deficit = target - filled
        best = np.flatnonzero(deficit == deficit.max())
        c = int(best[rng.integers(len(best))])
        label[types[i]] = c
        filled[c] += counts[types[i]]
    return np.array([label[k] for k in keys], dtype=np.int64)
