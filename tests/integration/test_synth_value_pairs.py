"""`data synth`'s value partners (`<out>.value_pairs.jsonl`), both kinds: every operation kept and
every intermediate result changed (recomputed here from the records, not from the generator),
the same wording but for the start, in the manifest, the main file byte-identical with or
without partners, and removed (ours only) with --no-pairs."""

from __future__ import annotations

import json
import re

import pytest

from opcircuits.data.synth import SynthOptions, pairs_path, synth, value_pairs_path
from opcircuits.errors import OpcircuitsError
from opcircuits.files import manifest_path, sha256_file

_EXPR = re.compile(r"^(\d+)([-+*/])(\d+)$")


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _chain(record: dict) -> list[tuple[int, str, int, int]]:
    """(value, op, operand, result) per step, each recomputed from its expression, and checked
    to start from the record's start and continue from the previous result."""
    first = int(re.search(r"starts with (\d+) ", record["answer"]).group(1))
    value, out = first, []
    for step in record["steps"]:
        a, op, b = _EXPR.match(step["expr"]).groups()
        assert int(a) == value
        result = {"+": value + int(b), "-": value - int(b), "*": value * int(b)}.get(op)
        if op == "/":
            assert value % int(b) == 0
            result = value // int(b)
        assert str(result) == step["result"]
        out.append((value, op, int(b), result))
        value = result
    assert str(value) == record["final_answer"]
    return out


KINDS = {
    "rules": dict(kind="rules", n=150, seed=2, split="test"),
    "chain": dict(n=150, seed=2, split="test"),
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def synth_file(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"vp-{request.param}") / "s.jsonl"
    options = SynthOptions(out=out, **KINDS[request.param])
    synth(options)
    return out, options


def test_value_partners_keep_every_operation_and_change_every_result(synth_file):
    out, options = synth_file
    problems = {r["id"]: r for r in _read(out)}
    partners = _read(value_pairs_path(out))
    assert len(partners) > len(problems) / 2
    for p in partners:
        base = problems[p["partner_of"]]
        assert p["changed_value"] == "start" and p["id"] != base["id"]
        assert p["pair_id"] != base["pair_id"] and "changed_step" not in p
        mine, theirs = _chain(base), _chain(p)
        assert [s[1:3] for s in mine] == [s[1:3] for s in theirs]  # ops and operands kept
        assert all(a[3] != b[3] for a, b in zip(mine, theirs, strict=True))  # every r_j changed
        assert mine[0][0] != theirs[0][0]
        assert all(1 <= s[3] <= options.max_result for s in theirs)
        assert p["category"] == base["category"] and p["n_steps"] == base["n_steps"]
        # the same wording but for the start number
        start = str(theirs[0][0])
        assert p["question"] == re.sub(rf"\b{mine[0][0]}\b", start, base["question"], count=1)
        if options.kind == "rules":
            assert (p["rule_id"], p["operand"], p["phrasing_id"], p["frame_id"]) == (
                base["rule_id"], base["operand"], base["phrasing_id"], base["frame_id"],
            )  # fmt: skip
        else:
            assert options.min_operand <= theirs[0][0] <= options.max_operand


def test_the_manifest_counts_the_problems_without_one(synth_file):
    out, _ = synth_file
    manifest = json.loads(manifest_path(out).read_text())
    partners = _read(value_pairs_path(out))
    assert manifest["value_pairs"] == str(value_pairs_path(out))
    assert manifest["value_pairs_sha256"] == sha256_file(value_pairs_path(out))
    assert manifest["value_partners"] == len(partners)
    assert sum(manifest["without_value_partner"].values()) == len(_read(out)) - len(partners)


def test_the_main_file_is_the_same_without_partners_and_no_pairs_removes_ours(synth_file):
    out, options = synth_file
    again = out.with_name("again.jsonl")
    synth(SynthOptions(**{**options.__dict__, "out": again}))
    assert again.read_bytes() == out.read_bytes()
    assert value_pairs_path(again).read_bytes() == value_pairs_path(out).read_bytes()
    assert value_pairs_path(again).name == "again.value_pairs.jsonl"
    synth(SynthOptions(**{**options.__dict__, "out": again, "pairs": False}))
    assert again.read_bytes() == out.read_bytes()
    assert not value_pairs_path(again).exists() and not pairs_path(again).exists()
    assert "value_pairs" not in json.loads(manifest_path(again).read_text())


def test_a_foreign_value_pairs_file_is_not_replaced(tmp_path):
    out = tmp_path / "p.jsonl"
    value_pairs_path(out).write_text("mine\n")
    with pytest.raises(OpcircuitsError) as err:
        synth(SynthOptions(out=out, n=30, seed=1))
    assert str(value_pairs_path(out)) in str(err.value.path)
    assert value_pairs_path(out).read_text() == "mine\n" and not out.exists()
