"""What an analysis reads from a store: the chosen hidden states, labels, folds, views and the
records' optional columns, checked once (finite states, enough problems per category).

Everything downstream (the task planner and the report sections) works from an `AnalysisInput`.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from opcircuits.analysis.features import View, build_views
from opcircuits.analysis.scoring import Fold, make_folds
from opcircuits.data.annotations import CATEGORIES
from opcircuits.errors import OpcircuitsError
from opcircuits.markdown import name

log = logging.getLogger(__name__)

# How many offending problems and sites an error message names before "…".
_NAMED = 5


@dataclass
class AnalysisInput:
    """The analyzed problems (after leaving out too-small categories) and their features."""

    store: Any  # opcircuits.store.Store
    records: pd.DataFrame  # the analyzed problems
    hidden: np.ndarray  # [N_all, P, L, D] for `positions` × `layers`, every problem of the store
    rows: np.ndarray  # the analyzed problems' rows in `hidden` and `all_records`
    all_records: pd.DataFrame  # every problem of the store (for the binary operation probes)
    positions: list[str]
    layers: list[int]
    categories: list[str]  # per problem
    names: list[str]  # category names, in label order
    y: np.ndarray  # labels (index into `names`)
    folds: list[Fold]
    views: list[View]
    questions: list[str] | None  # None when the store has no question text
    confound_x: np.ndarray | None  # [N, k] confound features, None when none is available
    confound_names: list[str]
    n_steps: np.ndarray | None  # per analyzed problem, None when the store lacks it
    notes: list[str] = field(default_factory=list)  # what was skipped or left out, and why

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def n_classes(self) -> int:
        return len(self.names)

    @property
    def main_views(self) -> list[View]:
        return [v for v in self.views if v.kind == "main"]

    def column(self, name: str) -> list[Any] | None:
        return records_column(self.records, name)


def records_column(records: pd.DataFrame, name: str) -> list[Any] | None:
    """A records column as a list, or None when absent or entirely null (legacy imports)."""
    if name not in records.columns:
        return None
    values = [None if _is_null(v) else v for v in records[name].tolist()]
    return None if all(v is None for v in values) else values


def _is_null(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def encode(categories: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Category names (the known ones in their usual order, then others sorted) and labels."""
    present = sorted(set(categories))
    names = [c for c in CATEGORIES if c in present] + [c for c in present if c not in CATEGORIES]
    index = {c: i for i, c in enumerate(names)}
    return names, np.array([index[c] for c in categories], dtype=np.int64)


def check_finite(
    hidden: np.ndarray, ids: Sequence[str], positions: Sequence[str], layers: Sequence[int]
) -> None:
    """Refuse NaN/inf hidden states, naming the problems and (position, layer) sites holding them.

    scikit-learn would fail later with a message about its own arrays; this names the data."""
    bad = ~np.isfinite(hidden).all(axis=-1)  # [N, P, L]
    if not bad.any():
        return
    rows = np.flatnonzero(bad.any(axis=(1, 2)))
    sites = [
        f"{positions[p]}@{layers[layer]}"
        for p, layer in zip(*np.nonzero(bad.any(axis=0)), strict=True)
    ]
    named = ", ".join(str(ids[i]) for i in rows[:_NAMED]) + (" …" if len(rows) > _NAMED else "")
    where = ", ".join(sites[:_NAMED]) + (" …" if len(sites) > _NAMED else "")
    raise OpcircuitsError(
        f"the store holds non-finite hidden states (NaN or inf) for {len(rows)} problem(s) "
        f"({named}) at {len(sites)} site(s) ({where}); re-extract them or leave them out",
        field="hidden",
    )


def kept_categories(records: pd.DataFrame, folds: int) -> tuple[np.ndarray, list[str]]:
    """Which problems are analyzed, and a note on the rest: a stratified fold needs every
    category in every test fold, so categories with fewer problems than folds (e.g. a stray
    "unclassified" one) are left out, and the report says so."""
    cats = records["category"].astype(str)
    counts = cats.value_counts()
    small = sorted(c for c, k in counts.items() if k < folds)
    if not small or len(counts) - len(small) < 2:
        return np.ones(len(records), dtype=bool), []
    note = (
        "Left out categories with fewer problems than --folds: "
        + ", ".join(f"{name(c)} ({counts[c]})" for c in small)
        + "."
    )
    return ~cats.isin(small).to_numpy(), [note]


def check_text_folds(y: np.ndarray, names: list[str], folds: list[Fold], k: int, where) -> None:
    """Refuse, before any work, folds on which the question-text control's inner split cannot
    run (scikit-learn would fail after most of the analysis)."""
    from opcircuits.analysis.controls import INNER_FOLDS, text_control_fits

    if text_control_fits(y, folds):
        return
    counts = ", ".join(f"{name(c)} {int(n)}" for c, n in zip(names, np.bincount(y), strict=True))
    # The fewest problems per category whose training folds always hold INNER_FOLDS of them.
    enough = next(n for n in itertools.count(INNER_FOLDS) if n - math.ceil(n / k) >= INNER_FOLDS)
    raise OpcircuitsError(
        f"too few problems per category for --folds {k} ({counts}): the question-text "
        f"control's inner {INNER_FOLDS}-fold search needs, in every training fold, "
        f"{INNER_FOLDS} problems of some category and 2 of two; {enough} problems per category "
        f"always suffice{' (or use fewer --folds)' if k > 2 else ''}",
        path=where,
        field="folds",
    )


def check_folds(store: Any, options: Any) -> None:
    """The category and fold checks of `load_input` on a store's records alone (no states read):
    run on the companion stores before the main analysis starts."""
    records = store.records
    keep, _ = kept_categories(records, options.folds)
    records = records[keep]
    names, y = encode([str(c) for c in records["category"].tolist()])
    if len(names) < 2:
        raise OpcircuitsError(
            f"need at least 2 categories to probe, found {names}", path=store.path,
            field="category",
        )  # fmt: skip
    questions = records_column(records, "question")
    if questions is not None and all(isinstance(q, str) for q in questions):
        folds = make_folds(y, options.folds, options.repeats, options.seed)
        check_text_folds(y, names, folds, options.folds, store.path)


def load_input(store: Any, options: Any) -> AnalysisInput:
    """Select positions and layers, check the states, encode labels, make folds and views."""
    where = store.path
    if not store.complete:
        raise OpcircuitsError("store is incomplete; finish extraction first", path=where)
    pos_idx = store.position_indices(options.positions)
    lay_idx = store.layer_indices(options.layers)
    positions = [store.positions[i] for i in pos_idx]
    layers = [store.layers[i] for i in lay_idx]
    records = all_records = store.records
    hidden = store.hidden(positions, layers)
    check_finite(hidden, [str(i) for i in records["id"].tolist()], positions, layers)
    keep, notes = kept_categories(records, options.folds)
    records, rows = records[keep].reset_index(drop=True), np.flatnonzero(keep)
    categories = [str(c) for c in records["category"].tolist()]
    names, y = encode(categories)
    if len(names) < 2:
        raise OpcircuitsError(
            f"need at least 2 categories to probe, found {names}", path=where, field="category"
        )
    folds = make_folds(y, options.folds, options.repeats, options.seed)
    questions = records_column(records, "question")
    if questions is not None and all(isinstance(q, str) for q in questions):
        check_text_folds(y, names, folds, options.folds, where)
    n_steps = records_column(records, "n_steps")
    confound_cols, confound_names = [], []
    steps = None
    if n_steps is not None and all(v is not None for v in n_steps):
        steps = np.asarray(n_steps, dtype=np.int64)
        confound_cols.append(steps.astype(np.float64))
        confound_names.append("n_steps")
    if questions is not None and all(isinstance(q, str) for q in questions):
        confound_cols.append(np.array([len(q.split()) for q in questions], dtype=np.float64))
        confound_names.append("question_words")
    else:
        questions = None
        notes.append("The store has no question text: the question-text control is skipped.")
    confound_x = np.column_stack(confound_cols) if confound_cols else None
    if confound_x is None:
        notes.append("The store has neither n_steps nor question text: no confound control.")
    elif len(confound_names) < 2:
        notes.append(f"The confound control uses {confound_names[0]} only (the other is missing).")
    return AnalysisInput(
        store=store,
        records=records,
        hidden=hidden,
        rows=rows,
        all_records=all_records,
        positions=positions,
        layers=layers,
        categories=categories,
        names=names,
        y=y,
        folds=folds,
        views=build_views(positions, layers),
        questions=questions,
        confound_x=confound_x,
        confound_names=confound_names,
        n_steps=steps,
        notes=notes,
    )
