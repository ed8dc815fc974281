"""The checks of an `interventions.json` that `analyze --interventions` makes before any work:
every field the report's Causal tests section, its sentences and its figures read must have the
type `intervene` writes, so a damaged or hand-edited file is one error naming the file and the
field, not a traceback after the whole analysis.

Rows (effects, interactions, the thoughts curve, the routing controls) are checked by their keys'
names: the names below are strings or integers, `*_ci` / `ci` an interval of two numbers (or
nulls), `*_claimed` / `*_no_effect` / `*_dispensable` booleans, `*_crossover` lists of names, and
every other key a finite number or null.
"""

from __future__ import annotations

import math
from typing import Any

from opcircuits.errors import OpcircuitsError

_STRINGS = frozenset({"intervention", "category", "kind", "sites", "position", "direction",
                      "a", "b", "by", "measure", "positions", "site"})  # fmt: skip
_INTEGERS = frozenset({"n", "layer", "thoughts"})
_BOOLEANS = ("_claimed", "_no_effect", "_dispensable")
# Keys every row of a list must have (those the report reads without a default).
_REQUIRED = {
    "effects": ("intervention", "category", "kind", "n", "drop", "drop_ci", "logp_drop",
                "logp_drop_ci", "changed", "follows_source", "position", "layer", "alpha",
                "thoughts", "sites"),
    "interactions": ("intervention", "a", "b"),
    "thoughts": ("thoughts", "category", "n", "accuracy", "ci"),
    "routing.recovery": ("intervention", "by", "group", "measure", "n", "recovery",
                         "recovery_ci"),
    "routing.position_effect": ("thoughts", "n", "difference", "difference_ci"),
    "erasure": ("site", "position", "layer", "n", "beyond", "beyond_ci", "logp_beyond",
                "logp_beyond_ci", "used_claimed"),
}  # fmt: skip


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _value_ok(key: str, v: Any) -> bool:
    if key in _STRINGS:
        return v is None or isinstance(v, str)
    if key in _INTEGERS:
        return v is None or _is_int(v)
    if key == "group":  # a category, or a changed step
        return v is None or isinstance(v, str) or _is_int(v)
    if key == "ci" or key.endswith("_ci"):
        return isinstance(v, list) and len(v) == 2 and all(x is None or _is_number(x) for x in v)
    if key.endswith(_BOOLEANS):
        return v is None or isinstance(v, bool)
    if key.endswith("_crossover"):
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    return v is None or _is_number(v)


class _Checker:
    def __init__(self, file: Any) -> None:
        self.file = file

    def fail(self, where: str, expected: str) -> OpcircuitsError:
        return OpcircuitsError(
            f"not an interventions.json as `opcircuits intervene` writes it: {where} must be "
            f"{expected}",
            path=self.file,
            field="interventions",
        )

    def rows(self, value: Any, name: str) -> None:
        if not isinstance(value, list):
            raise self.fail(name, "a list")
        for i, row in enumerate(value):
            where = f"{name}[{i}]"
            if not isinstance(row, dict):
                raise self.fail(where, "an object")
            missing = [k for k in _REQUIRED.get(name, ()) if k not in row]
            if missing:
                raise self.fail(where, f"an object with {', '.join(missing)}")
            for key, v in row.items():
                if not _value_ok(key, v):
                    raise self.fail(f"{where}.{key}", _describe(key))


def _describe(key: str) -> str:
    if key in _STRINGS:
        return "a string or null"
    if key in _INTEGERS:
        return "an integer or null"
    if key == "ci" or key.endswith("_ci"):
        return "a list of two numbers or nulls"
    if key.endswith(_BOOLEANS):
        return "true, false or null"
    if key.endswith("_crossover"):
        return "a list of names"
    return "a finite number or null"


def check_result(result: dict[str, Any], file: Any) -> None:
    """Refuse an interventions.json whose fields the report could not read (see the module)."""
    c = _Checker(file)
    for key in ("provenance", "options", "methods"):
        if not isinstance(result[key], dict):
            raise c.fail(key, "an object")
    for key in ("num_latent", "num_layers"):
        if not _is_int(result[key]) or result[key] < 0:
            raise c.fail(key, "a non-negative integer")
    for key in ("positions", "categories", "notes"):
        if not isinstance(result[key], list) or not all(isinstance(x, str) for x in result[key]):
            raise c.fail(key, "a list of strings")
    clean = result["clean"]
    if not isinstance(clean, dict) or "all" not in clean:
        raise c.fail("clean", "an object with the pooled category 'all'")
    for cat in ["all", *result["categories"]]:
        row = clean.get(cat)
        ok = isinstance(row, dict) and _is_int(row.get("n")) and _value_ok("ci", row.get("ci"))
        if not ok or not _value_ok("accuracy", row.get("accuracy")):
            raise c.fail(f"clean.{cat}", "an object with n, accuracy and ci")
    for key in ("effects", "interactions", "thoughts"):
        c.rows(result[key], key)
    routing = result.get("routing")
    if routing is not None:
        if not isinstance(routing, dict):
            raise c.fail("routing", "an object")
        for key in ("recovery", "position_effect"):
            c.rows(routing.get(key, []), f"routing.{key}")
        if not _value_ok("dispensable_delta", routing.get("dispensable_delta")):
            raise c.fail("routing.dispensable_delta", "a finite number or null")
    if result.get("erasure") is not None:
        c.rows(result["erasure"], "erasure")
