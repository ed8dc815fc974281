"""Operator labels from GSM8K calculator annotations, on the real data's quirks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from opcircuits.data.annotations import (
    CATEGORIES,
    NO_ANNOTATION,
    NO_OPERATOR,
    OTHER_OPERATOR,
    UNCLASSIFIED,
    UNPARSEABLE,
    AnnotationError,
    count_operators,
    extract_steps,
    label_record,
    label_steps,
    operator_symbols,
)
from opcircuits.data.gsm8k import load_local


@pytest.fixture(scope="module")
def problems(gsm8k_dir: Path) -> dict[str, dict]:
    return {r["id"]: r for r in load_local(gsm8k_dir)}


def ops(expr: str) -> dict[str, int]:
    counts, others = count_operators(expr)
    assert not others
    return {s: n for s, n in counts.items() if n}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("16-3-4", {"-": 2}),
        ("5*.01", {"*": 1}),  # decimals without a leading zero
        ("4.95-1.2", {"-": 1}),
        ("5000*(2.5/100)", {"*": 1, "/": 1}),  # parentheses only group
        ("(200+10)/3", {"+": 1, "/": 1}),
        ("-48+21+(-3)", {"+": 2}),  # unary minus is a sign, not subtraction
        ("1.75-(-1.25)", {"-": 1}),
        ("71+-3", {"+": 1}),
        ("-18/-2", {"/": 1}),
        ("+30+46+38", {"+": 2}),  # a leading + is a sign too
        ("3*+6", {"*": 1}),
        ("-(3+4)", {"+": 1}),
        ("1,000+2,500", {"+": 1}),  # thousands separators
        ("1,250,000/5", {"/": 1}),
        ("$20*3", {"*": 1}),
        ("3 x 4", {"*": 1}),  # the notations people type for × and ÷
        ("3x4", {"*": 1}),
        ("3×4", {"*": 1}),
        ("12÷4", {"/": 1}),
        ("10\u22123", {"-": 1}),
        ("20%*50", {"*": 1}),  # percent notation is a number
        ("(12.5%)*80", {"*": 1}),
        ("50%", {}),
        ("05+3", {"+": 1}),  # a leading zero is still the number
        ("125", {}),
        ("-153", {}),
    ],
)
def test_count_operators(expr: str, expected: dict[str, int]) -> None:
    assert ops(expr) == expected


@pytest.mark.parametrize(
    ("expr", "other"),
    [("560//10", "//"), ("2**3", "**"), ("2^3", "^"), ("10%3", "%"), ("10 % 3", "%")],
)
def test_other_operators(expr: str, other: str) -> None:
    assert count_operators(expr)[1] == [other]


@pytest.mark.parametrize("expr", ["", "2x", "abc+1", "1,5+2", "3+", "(2+3", "f(2)", "2<3", "~2"])
def test_unparseable(expr: str) -> None:
    with pytest.raises(AnnotationError):
        count_operators(expr)


def test_extract_steps_splits_on_the_last_equals() -> None:
    answer = "a <<2+3=5>>5 then <<3/4=3/4>>3/4 and <<7>>7\n#### 7"
    assert extract_steps(answer) == [
        {"expr": "2+3", "result": "5"},
        {"expr": "3/4", "result": "3/4"},
        {"expr": "7", "result": ""},
    ]


def test_label_rules() -> None:
    def cat(*exprs: str) -> tuple[str, str | None]:
        lab = label_steps([{"expr": e, "result": ""} for e in exprs])
        return lab.category, lab.reason

    assert cat("2+3", "5-1") == ("pure_addition", None)
    assert cat("2*3", "6/2") == ("pure_multiplication", None)
    assert cat("2*3", "6+1") == ("mixed", None)
    assert cat("2*3", "5") == ("pure_multiplication", None)  # a no-op step adds nothing
    assert cat() == (UNCLASSIFIED, NO_ANNOTATION)
    assert cat("5", "-3") == (UNCLASSIFIED, NO_OPERATOR)
    assert cat("2*3", "560//10") == (UNCLASSIFIED, OTHER_OPERATOR)
    assert cat("2*3", "x+1") == (UNCLASSIFIED, UNPARSEABLE)
    # An unpaired << makes the step list untrustworthy.
    record = {"answer": "2+3 = <<2+3=5>>5 and <<5*2=10 so\n#### 10"}
    assert label_record(record).reason == UNPARSEABLE


def test_real_quirks(problems: dict[str, dict]) -> None:
    def exprs(pid: str) -> list[str]:
        return [s["expr"] for s in problems[pid]["steps"]]

    # Real annotations carrying each quirk, and their labels.
    assert "-48+21+(-3)" in exprs("test_489")  # unary minus inside parentheses
    assert label_record(problems["test_489"]).operators == {"+": 2, "-": 0, "*": 0, "/": 1}
    assert exprs("train_7390") == ["-18/-2"]
    assert label_record(problems["train_7390"]).category == "pure_multiplication"
    assert "71+-3" in exprs("train_2453")
    assert label_record(problems["train_2453"]).category == "pure_addition"
    assert "5*.01" in exprs("test_434") and "4.95-1.2" in exprs("test_434")
    assert label_record(problems["test_434"]).category == "mixed"
    assert "5000*(2.5/100)" in exprs("test_15") and "125" in exprs("test_15")
    assert label_record(problems["test_15"]).category == "pure_multiplication"
    assert "560//10" in exprs("train_394")
    assert label_record(problems["train_394"]).reason == OTHER_OPERATOR
    assert exprs("train_5844") == ["-153", "-47"]
    assert label_record(problems["train_5844"]).reason == NO_OPERATOR
    assert problems["test_24"]["steps"] == []
    assert label_record(problems["test_24"]).reason == NO_ANNOTATION
    # Commas in real final answers ("#### 2,125") are removed.
    assert "#### 2,125" in problems["test_146"]["answer"]
    assert problems["test_146"]["final_answer"] == "2125"
    assert problems["test_146"]["final_value"] == 2125


def test_distribution_over_all_problems(problems: dict[str, dict]) -> None:
    labels = [label_record(r) for r in problems.values()]
    assert len(labels) == 8792
    categories = Counter(lab.category for lab in labels)
    # Measured on GSM8K's original release (see README "Data").
    assert categories == {
        "pure_addition": 922,
        "pure_multiplication": 1557,
        "mixed": 6093,
        UNCLASSIFIED: 220,
    }
    reasons = Counter(lab.reason for lab in labels if lab.reason)
    assert reasons == {NO_ANNOTATION: 113, NO_OPERATOR: 105, OTHER_OPERATOR: 2}
    # Every annotation of the real data parses: nothing is unclassified for being unreadable.
    for lab in labels:
        used = {s for s, n in lab.operators.items() if n}
        if lab.category in CATEGORIES:
            assert used and lab.reason is None
            assert (lab.category == "mixed") == (
                bool(used & {"+", "-"}) and bool(used & {"*", "/"})
            )


def test_operator_symbols(problems: dict[str, dict]) -> None:
    assert operator_symbols(problems["test_0"]) == ["*", "-"]
    assert operator_symbols(problems["test_24"]) == []
    # Classified records answer from their counts.
    assert operator_symbols({"operators": {"+": 1, "-": 0, "*": 0, "/": 3}}) == ["+", "/"]
