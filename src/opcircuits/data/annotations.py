"""GSM8K calculator annotations `<<expr=result>>`: extraction, parsing with `ast`, operator labels.

A problem's label is the set of binary arithmetic operators its annotations use, read from the
parse tree (never `eval`, never a regex over the prose). The decisions, documented in the README:

- Unary minus and plus are signs of a number (`-5`, `71+-3`, `(-17)+43`), never subtraction or
  addition, whatever they apply to.
- Parentheses only group; they are not operators.
- `x`, `X`, `×` between operands mean `*`; `÷` means `/`; the Unicode minus and dashes mean `-`.
- Thousands separators (`1,000`) are removed; `$` signs and spaces are ignored; leading zeros
  (`05`) are read as the number.
- `%` right after a number and not followed by an operand (`20%*50`, `(12.5%)`) is percent
  notation: the number N% is read as the literal N×10⁻², so it adds no operator. `%` between two
  operands (`10%3`) is modulo: an "other" operator.
- Powers (`**`, `^`), floor division (`//`), modulo and anything that does not parse as plain
  arithmetic on numbers make the whole problem `unclassified`, as do no annotation at all and
  annotations without any binary operator (`<<5=5>>`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opcircuits.data.numbers import read_number

# The four operators a label is built from, in the order used everywhere (records, reports).
OPERATOR_SYMBOLS: tuple[str, ...] = ("+", "-", "*", "/")
ADDITIVE = frozenset({"+", "-"})
MULTIPLICATIVE = frozenset({"*", "/"})

CATEGORIES: tuple[str, ...] = ("pure_addition", "pure_multiplication", "mixed")
UNCLASSIFIED = "unclassified"

# Why a problem is unclassified (keys of the counts reported by `classify`).
NO_ANNOTATION = "no_annotation"
NO_OPERATOR = "no_operator"
OTHER_OPERATOR = "other_operator"
UNPARSEABLE = "unparseable_annotation"
UNCLASSIFIED_REASONS: tuple[str, ...] = (NO_ANNOTATION, NO_OPERATOR, OTHER_OPERATOR, UNPARSEABLE)

_BINOP_SYMBOL: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
}
_OTHER_BINOP_SYMBOL: dict[type[ast.operator], str] = {
    ast.Pow: "**",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.BitXor: "^",
    ast.MatMult: "@",
}

# `<<...>>` blocks in an answer. Only finds where annotations are; labels come from `ast`.
_ANNOTATION = re.compile(r"<<(.*?)>>", re.DOTALL)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TIMES = re.compile(r"(?<=[\d.)\s])[xX×](?=[\s\d.(])")
_LEADING_ZEROS = re.compile(r"(?<![\d.])0+(?=\d)")
# A percent sign is notation (not modulo) when no operand follows it.
_PERCENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*%(?!\s*[\d.(])")


class AnnotationError(ValueError):
    """An annotation expression that is not plain arithmetic on numbers."""


@dataclass(frozen=True)
class Label:
    """The operation label of one problem, derived from its annotations."""

    category: str
    operators: dict[str, int] = field(default_factory=dict)
    # Why the problem is unclassified (one of UNCLASSIFIED_REASONS), else None.
    reason: str | None = None
    # Operators outside + - * / that were seen (e.g. "//"), for reporting.
    other_operators: tuple[str, ...] = ()


def extract_steps(answer: str) -> list[dict[str, str]]:
    """The calculator annotations of a solution, in order, as `{"expr", "result"}`.

    The expression is the text before the last `=`, the result the text after it; an annotation
    without `=` keeps all its text as the expression and an empty result.
    """
    steps = []
    for body in _ANNOTATION.findall(answer):
        expr, sep, result = body.rpartition("=")
        if not sep:
            expr, result = body, ""
        steps.append({"expr": expr.strip(), "result": result.strip()})
    return steps


def has_unclosed_annotation(answer: str) -> bool:
    """True when a `<<` or `>>` is left unpaired, so the step list cannot be trusted."""
    rest = _ANNOTATION.sub("", answer)
    return "<<" in rest or ">>" in rest


def normalize_expr(expr: str) -> str:
    """Rewrite the notations people use in annotations into Python arithmetic syntax."""
    text = expr.replace("$", "").replace("÷", "/")
    for dash in ("\u2212", "\u2013", "\u2014"):
        text = text.replace(dash, "-")
    text = _THOUSANDS.sub("", text)
    text = _TIMES.sub("*", text)
    text = _PERCENT.sub(lambda m: f"{m.group(1)}e-2", text)
    text = _LEADING_ZEROS.sub("", text)
    return text.strip()


def parse_expr(expr: str) -> ast.expr:
    """Parse one annotation expression; AnnotationError unless it is arithmetic on numbers."""
    text = normalize_expr(expr)
    if not text:
        raise AnnotationError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise AnnotationError(f"not an arithmetic expression: {expr!r}") from exc
    for node in ast.walk(tree.body):
        if isinstance(node, ast.BinOp | ast.UnaryOp | ast.operator | ast.unaryop):
            if isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.UAdd | ast.USub):
                raise AnnotationError(f"unsupported unary operator in {expr!r}")
            continue
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            continue
        raise AnnotationError(f"not plain arithmetic on numbers: {expr!r}")
    return tree.body


def count_operators(expr: str) -> tuple[dict[str, int], list[str]]:
    """Binary operators of one expression: (counts of + - * /, other operator symbols seen).

    Unary signs and parentheses are not counted (see the module docstring).
    """
    counts = dict.fromkeys(OPERATOR_SYMBOLS, 0)
    others: list[str] = []
    for node in ast.walk(parse_expr(expr)):
        if isinstance(node, ast.BinOp):
            symbol = _BINOP_SYMBOL.get(type(node.op))
            if symbol is not None:
                counts[symbol] += 1
            else:
                others.append(_OTHER_BINOP_SYMBOL.get(type(node.op), type(node.op).__name__))
    return counts, others


def category_of(symbols: set[str] | frozenset[str]) -> str:
    """The category of a set of operator symbols (only + - * / ; empty → unclassified)."""
    additive = bool(symbols & ADDITIVE)
    multiplicative = bool(symbols & MULTIPLICATIVE)
    if additive and multiplicative:
        return "mixed"
    if additive:
        return "pure_addition"
    if multiplicative:
        return "pure_multiplication"
    return UNCLASSIFIED


def label_steps(steps: Sequence[Mapping[str, Any]]) -> Label:
    """Label a problem from its annotation steps."""
    if not steps:
        return Label(UNCLASSIFIED, dict.fromkeys(OPERATOR_SYMBOLS, 0), NO_ANNOTATION)
    total = dict.fromkeys(OPERATOR_SYMBOLS, 0)
    others: list[str] = []
    try:
        for step in steps:
            counts, step_others = count_operators(str(step["expr"]))
            for symbol, n in counts.items():
                total[symbol] += n
            others.extend(step_others)
    except AnnotationError:
        return Label(UNCLASSIFIED, dict.fromkeys(OPERATOR_SYMBOLS, 0), UNPARSEABLE)
    if others:
        return Label(UNCLASSIFIED, total, OTHER_OPERATOR, tuple(sorted(set(others))))
    category = category_of({s for s, n in total.items() if n})
    if category == UNCLASSIFIED:
        return Label(UNCLASSIFIED, total, NO_OPERATOR)
    return Label(category, total)


def label_record(record: Mapping[str, Any]) -> Label:
    """Label a problem record: from its `steps`, else from the annotations in its `answer`.

    An answer whose `<<`/`>>` do not pair up is unparseable: its steps cannot be trusted.
    """
    answer = record.get("answer")
    if isinstance(answer, str) and has_unclosed_annotation(answer):
        return Label(UNCLASSIFIED, dict.fromkeys(OPERATOR_SYMBOLS, 0), UNPARSEABLE)
    steps = record.get("steps")
    if steps is None:
        steps = extract_steps(answer) if isinstance(answer, str) else []
    return label_steps(steps)


def _record_steps(record: Mapping[str, Any]) -> list:
    """A record's solution steps: its `steps`, else those of its `answer`'s annotations."""
    steps = record.get("steps")
    if steps is None:
        answer = record.get("answer")
        steps = extract_steps(answer) if isinstance(answer, str) else []
    return steps


def step_operators(record: Mapping[str, Any]) -> list[str] | None:
    """The operator of each solution step in order, or None unless every step has exactly one
    (+ - * /): a step-resolved label exists only where each step is one operation."""
    steps = _record_steps(record)
    if not steps:
        return None
    out = []
    try:
        for step in steps:
            counts, others = count_operators(str(step["expr"]))
            used = [sym for sym, n in counts.items() for _ in range(n)]
            if others or len(used) != 1:
                return None
            out.append(used[0])
    except AnnotationError:
        return None
    return out


def operator_symbols(record: Mapping[str, Any]) -> list[str]:
    """The operator symbols (subset of + - * /) a problem's solution uses, sorted.

    Uses the record's `operators` counts when present (classified records), else its annotations.
    """
    operators = record.get("operators")
    if not isinstance(operators, Mapping):
        operators = label_record(record).operators
    return sorted(s for s in OPERATOR_SYMBOLS if operators.get(s, 0))


def step_results(record: Mapping[str, Any]) -> list[float | None] | None:
    """Each solution step's result r_1…r_n in order, as floats (None where the text after a
    step's `=` is not one number, e.g. `3/4`); None when the problem has no steps."""
    steps = _record_steps(record)
    if not steps:
        return None
    out: list[float | None] = []
    for step in steps:
        value = read_number(str(step.get("result", "")).replace("$", "").strip())
        out.append(None if value is None else float(value))
    return out
