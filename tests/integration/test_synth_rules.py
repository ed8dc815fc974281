"""`data synth --kind rules`: every step recomputed from the stated rule, categories from the
applied operations, balance, partners, held-out phrasings, the split hash, determinism, the
question-text control near chance, option checks; and the chain kind's bytes unchanged."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from opcircuits.analysis.controls import question_text_scores
from opcircuits.data.annotations import CATEGORIES, extract_steps, label_record, parse_expr
from opcircuits.data.synth import (
    RULE_SETS,
    RulePlan,
    SynthOptions,
    heldout_frame,
    heldout_phrasing,
    pairs_path,
    rule_split,
    synth,
)
from opcircuits.errors import OpcircuitsError
from opcircuits.files import manifest_path

_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("rules") / "rules_test.jsonl"
    synth(SynthOptions(kind="rules", out=out, n=600, seed=5, split="test"))
    return out


@pytest.fixture(scope="module")
def train_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("rules") / "rules_train.jsonl"
    synth(SynthOptions(kind="rules", out=out, n=600, seed=5, split="train"))
    return out


def _applied(value: int, rule_id: int, operand: int) -> tuple[str, int]:
    """The rule's step on `value`, computed here from the rule set's fields."""
    rs = RULE_SETS[rule_id]
    if (value % rs.k == 0) == rs.mult_when_multiple:
        return rs.mult_op, rs.mult_operand
    return rs.add_op, operand


def _check_record(r: dict, max_result: int = 60) -> None:
    steps = extract_steps(r["answer"])
    assert len(steps) == r["n_steps"] and 3 <= r["n_steps"] <= 5
    value = r["start"]
    assert 1 <= value <= max_result and re.search(rf"\b{value}\b", r["question"])
    assert re.search(rf"\bby {r['operand']}\b", r["question"]), r["question"]
    ops = []
    for step in steps:
        tree = parse_expr(step["expr"])
        assert isinstance(tree, ast.BinOp)
        op = _OPS[type(tree.op)]
        left, right = Fraction(tree.left.value), Fraction(tree.right.value)
        assert left == value, (r["id"], step)  # each step starts from the previous result
        assert (op, right) == _applied(value, r["rule_id"], r["operand"]), (r["id"], step)
        exact = {"+": left + right, "-": left - right, "*": left * right, "/": left / right}[op]
        assert exact == Fraction(step["result"]) and exact.denominator == 1, (r["id"], step)
        assert 1 <= exact <= max_result, (r["id"], step)
        value = int(exact)
        ops.append(op)
    assert r["final_value"] == value and r["answer"].endswith(f"#### {value}")
    assert r["step_ops"] == ops
    # the label is what the data stage's own classifier reads off the applied steps
    assert label_record(r).category == r["category"]


@pytest.mark.parametrize("fixture", ["test_split", "train_split"])
def test_every_step_is_the_rule_applied_to_the_current_value(request, fixture):
    path = request.getfixturevalue(fixture)
    records = _read(path) + (_read(pairs_path(path)) if fixture == "test_split" else [])
    for r in records:
        _check_record(r)


@pytest.mark.parametrize("fixture", ["test_split", "train_split"])
def test_categories_balanced_and_step_matched(request, fixture):
    records = _read(request.getfixturevalue(fixture))
    assert Counter(r["category"] for r in records) == dict.fromkeys(CATEGORIES, 200)
    hists = {c: Counter(r["n_steps"] for r in records if r["category"] == c) for c in CATEGORIES}
    assert all(h == {3: 67, 4: 67, 5: 66} for h in hists.values()), hists
    # the rule sets really mix: every rule set yields every category somewhere
    assert len({r["rule_id"] for r in records}) >= 10


def test_partners_change_exactly_one_operation_at_changed_step(test_split):
    problems = {r["id"]: r for r in _read(test_split)}
    partners = _read(pairs_path(test_split))
    manifest = json.loads(manifest_path(test_split).read_text(encoding="utf-8"))
    without = [r for r in problems.values() if r["pair_id"] is None]
    assert len(partners) + len(without) == len(problems) == 600
    assert manifest["partners"] == len(partners) > 300
    assert sum(manifest["without_partner"].values()) == len(without)
    for cf in partners:
        p = problems[cf["partner_of"]]
        assert (cf["pair_id"], cf["changed_step"]) == (p["pair_id"], p["changed_step"])
        for key in ("rule_id", "n_steps", "phrasing_id", "frame_id"):
            assert cf[key] == p[key]
        # one number changed: the start or the operand
        assert (cf["start"] != p["start"]) + (cf["operand"] != p["operand"]) == 1
        pairs = zip(p["step_ops"], cf["step_ops"], strict=True)
        diff = [i + 1 for i, (a, b) in enumerate(pairs) if a != b]
        assert diff == [cf["changed_step"]], (p["id"], p["step_ops"], cf["step_ops"])
        words_p, words_cf = p["question"].split(), cf["question"].split()
        assert sum(a != b for a, b in zip(words_p, words_cf, strict=True)) == 1


def test_heldout_frames_and_phrasings_only_in_the_test_split(test_split, train_split, tmp_path):
    test, train = _read(test_split), _read(train_split)
    assert not any(r["heldout_phrasing"] or r["heldout_frame"] for r in train)
    assert all(heldout_phrasing(r["phrasing_id"]) == r["heldout_phrasing"] for r in test)
    assert all(heldout_frame(r["frame_id"]) == r["heldout_frame"] for r in test)
    share = np.mean([r["heldout_phrasing"] for r in test])
    assert 0.4 < share < 0.6 and 0.4 < np.mean([r["heldout_frame"] for r in test]) < 0.6
    seen = tmp_path / "seen.jsonl"
    synth(SynthOptions(kind="rules", out=seen, n=300, seed=2, split="test", heldout_share=0.0))
    assert not any(r["heldout_phrasing"] or r["heldout_frame"] for r in _read(seen))


def test_every_computation_belongs_to_its_split(test_split, train_split):
    def key(r: dict) -> RulePlan:
        return RulePlan(r["rule_id"], r["start"], r["operand"], r["n_steps"])

    test, train = _read(test_split), _read(train_split)
    assert all(rule_split(key(r)) == "test" for r in test)
    assert all(rule_split(key(r)) == "train" for r in train)
    assert not {key(r) for r in test} & {key(r) for r in train}


def test_same_seed_gives_identical_bytes_and_pairs_do_not_change_the_problems(tmp_path, test_split):
    again = tmp_path / "again.jsonl"
    synth(SynthOptions(kind="rules", out=again, n=600, seed=5, split="test"))
    assert again.read_bytes() == test_split.read_bytes()
    assert pairs_path(again).read_bytes() == pairs_path(test_split).read_bytes()
    nopairs = tmp_path / "nopairs.jsonl"
    synth(SynthOptions(kind="rules", out=nopairs, n=600, seed=5, split="test", pairs=False))
    assert nopairs.read_bytes() == test_split.read_bytes() and not pairs_path(nopairs).exists()
    other = tmp_path / "other.jsonl"
    synth(SynthOptions(kind="rules", out=other, n=600, seed=6, split="test"))
    assert other.read_bytes() != test_split.read_bytes()


def test_question_text_control_reads_the_category_near_chance(tmp_path):
    """The analysis's own question-text control (TF-IDF + logistic regression, 5 folds) on 1,200
    problems: within 0.10 of chance (1/3)."""
    out = tmp_path / "control.jsonl"
    synth(SynthOptions(kind="rules", out=out, n=1200, seed=11, split="test", pairs=False))
    records = _read(out)
    y = np.array([CATEGORIES.index(r["category"]) for r in records])
    scores = question_text_scores([r["question"] for r in records], y, folds=5, seed=0)
    assert abs(scores.interval.mean - 1 / 3) <= 0.10, scores.summary()


def test_category_balance_covers_the_pool_the_raked_weights_skip(tmp_path, train_split):
    """--balance category (for training files): balanced categories and steps, every problem a
    valid computation of the split, and far more distinct computations than the raked draw of
    the same size reaches, including ones whose raked weight is 0."""
    from opcircuits.data.synth.rules import build_pool

    out = tmp_path / "wide.jsonl"
    synth(SynthOptions(kind="rules", out=out, n=600, seed=5, split="train", balance="category"))
    wide, raked = _read(out), _read(train_split)
    assert Counter(r["category"] for r in wide) == {c: 200 for c in CATEGORIES}
    assert Counter((r["category"], r["n_steps"]) for r in wide) == Counter(
        (r["category"], r["n_steps"]) for r in raked
    )

    def key(r: dict) -> RulePlan:
        return RulePlan(r["rule_id"], r["start"], r["operand"], r["n_steps"])

    assert all(rule_split(key(r)) == "train" for r in wide)
    assert len({key(r) for r in wide}) > 1.3 * len({key(r) for r in raked})  # 545 vs 382
    pool = build_pool(SynthOptions(kind="rules", split="train"))
    zero = {p for p, w in zip(pool.plans, pool.weight, strict=True) if w == 0}
    assert {key(r) for r in wide} & zero and not {key(r) for r in raked} & zero
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["options"]["balance"] == "category"
    assert manifest["pool"]["drawn_from"] == manifest["pool"]["computations"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "collatz"}, "kind"),
        ({"balance": "category"}, "balance"),
        ({"kind": "rules", "max_result": 500}, "max_result"),
        ({"kind": "rules", "steps": "1,3"}, "steps"),
    ],
)
def test_bad_options_name_the_field(kwargs, field):
    with pytest.raises(OpcircuitsError) as err:
        SynthOptions(**kwargs)
    assert err.value.field == field


def test_options_no_balanced_weights_exist_for_are_refused(tmp_path):
    # 6 multiplicative steps never stay within 1..60: no pure-multiplication problem exists
    with pytest.raises(OpcircuitsError) as err:
        synth(SynthOptions(kind="rules", out=tmp_path / "x.jsonl", n=30, steps="6"))
    assert err.value.field in ("max_result", "steps")
    assert not (tmp_path / "x.jsonl").exists()


def test_kind_defaults_and_the_cli(tmp_path):
    rules = SynthOptions(kind="rules")
    assert (rules.steps, rules.max_result) == ([3, 4, 5], 60)
    assert (SynthOptions().steps, SynthOptions().max_result) == ([2, 3], 50)
    out = tmp_path / "cli.jsonl"
    cmd = [sys.executable, "-m", "opcircuits", "data", "synth", "--kind", "rules", "--n", "30"]
    res = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert len(_read(out)) == 30 and json.loads(manifest_path(out).read_text())["kind"] == "rules"
    bad = [*cmd[:5], "--kind", "loops", "--out", str(tmp_path / "bad.jsonl")]
    res = subprocess.run(bad, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "'kind'" in res.stderr, res.stderr
    assert not (tmp_path / "bad.jsonl").exists()


def test_the_chain_kind_writes_the_bytes_it_wrote_before_kinds_existed(tmp_path):
    # sha256 of the files written by the commit before --kind (f3b67e1) with these options
    out = tmp_path / "a.jsonl"
    synth(SynthOptions(out=out, n=600, seed=3, split="test"))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == (
        "3694cadaac60c8e982141dd5d684e524e30f8fb695db75b6b209c03be70257ea"
    )
    assert hashlib.sha256(pairs_path(out).read_bytes()).hexdigest() == (
        "9008d07f96cf371ae4b9205127002b6b92bab83acf8f820ef5e27f74a31e6e1f"
    )
    manifest = json.loads(manifest_path(out).read_text(encoding="utf-8"))
    assert "kind" not in manifest and "kind" not in manifest["options"]
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["output_sha256"])
