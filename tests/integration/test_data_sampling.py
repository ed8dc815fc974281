"""`opcircuits data classify` and `prototype` on all of GSM8K: balance, determinism, nesting."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from opcircuits import __version__
from opcircuits.cli import main
from opcircuits.data.annotations import CATEGORIES, label_record
from opcircuits.data.gsm8k import download
from opcircuits.data.sampling import (
    ClassifyOptions,
    PrototypeOptions,
    allocate,
    classify,
    prototype,
)
from opcircuits.errors import OpcircuitsError
from opcircuits.files import manifest_path, sha256_file


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return list(fh)


@pytest.fixture(scope="module")
def full(gsm8k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return download(str(gsm8k_dir), tmp_path_factory.mktemp("data") / "gsm8k_full.jsonl")


@pytest.fixture(scope="module")
def sampled(full: Path) -> Path:
    return classify(ClassifyOptions(in_path=full, out=full.parent / "operation_samples_200.jsonl"))


@pytest.fixture(scope="module")
def matched(full: Path) -> Path:
    out = full.parent / "matched_200.jsonl"
    return classify(ClassifyOptions(in_path=full, out=out, match_steps=True))


def test_classify_samples_per_category(full: Path, sampled: Path) -> None:
    recs = read_jsonl(sampled)
    assert len(recs) == 600
    # Grouped by category, in the fixed category order, dataset order inside a group.
    assert [r["category"] for r in recs] == [c for c in CATEGORIES for _ in range(200)]
    order = {r["id"]: i for i, r in enumerate(read_jsonl(full))}
    for c in CATEGORIES:
        ids = [r["id"] for r in recs if r["category"] == c]
        assert ids == sorted(ids, key=order.__getitem__)
    assert len({r["id"] for r in recs}) == 600
    for r in recs:
        assert list(r)[-3:] == ["category", "n_steps", "operators"]
        assert r["n_steps"] == len(r["steps"]) >= 1
        assert list(r["operators"]) == ["+", "-", "*", "/"]
        used = {s for s, n in r["operators"].items() if n}
        assert label_record(r).category == r["category"]
        if r["category"] == "pure_addition":
            assert used and used <= {"+", "-"}
        elif r["category"] == "pure_multiplication":
            assert used and used <= {"*", "/"}
        else:
            assert used & {"+", "-"} and used & {"*", "/"}


def test_manifest(full: Path, sampled: Path) -> None:
    man = json.loads(manifest_path(sampled).read_text(encoding="utf-8"))
    assert manifest_path(sampled).name == "operation_samples_200.manifest.json"
    assert man["source_sha256"] == sha256_file(full)
    assert man["output_sha256"] == sha256_file(sampled)
    assert man["opcircuits_version"] == __version__
    assert man["seed"] == 42
    assert man["options"]["per_category"] == 200 and man["options"]["match_steps"] is False
    assert man["counts"] == dict.fromkeys(CATEGORIES, 200)
    dist = man["distribution"]
    assert dist["total"] == 8792
    assert sum(dist["categories"].values()) == 8792
    assert dist["categories"]["unclassified"] == sum(dist["unclassified_reasons"].values())
    assert dist["other_operators"] == {"//": 2}


def test_deterministic(full: Path, sampled: Path, tmp_path: Path) -> None:
    again = classify(ClassifyOptions(in_path=full, out=tmp_path / "again.jsonl"))
    assert again.read_bytes() == sampled.read_bytes()
    other = classify(ClassifyOptions(in_path=full, out=tmp_path / "seed7.jsonl", seed=7))
    assert other.read_bytes() != sampled.read_bytes()
    assert len(lines(other)) == 600


def test_match_steps_equal_histograms(matched: Path, sampled: Path) -> None:
    recs = read_jsonl(matched)
    hists = {c: Counter(r["n_steps"] for r in recs if r["category"] == c) for c in CATEGORIES}
    assert all(sum(h.values()) == 200 for h in hists.values())
    assert hists["pure_addition"] == hists["pure_multiplication"] == hists["mixed"]
    man = json.loads(manifest_path(matched).read_text(encoding="utf-8"))
    assert man["options"]["match_steps"] is True
    assert len({json.dumps(h, sort_keys=True) for h in man["n_steps"].values()}) == 1
    # Without matching, mixed problems have more steps (the confound matching removes).
    plain = read_jsonl(sampled)

    def mean(c: str) -> float:
        steps = [r["n_steps"] for r in plain if r["category"] == c]
        return sum(steps) / len(steps)

    assert mean("mixed") > mean("pure_addition") + 0.5


def test_allocate() -> None:
    capacity = {1: 7, 2: 455, 3: 215, 4: 67, 5: 26, 6: 6, 7: 4, 8: 1}
    alloc = allocate(200, capacity)
    assert sum(alloc.values()) == 200
    assert all(0 <= alloc[s] <= capacity[s] for s in capacity)
    assert alloc[2] > alloc[3] > alloc[4] > alloc[5]
    assert allocate(781, capacity) == capacity
    with pytest.raises(ValueError):
        allocate(782, capacity)


def test_too_few(full: Path, tmp_path: Path) -> None:
    out = tmp_path / "few.jsonl"
    # pure_addition has 922 problems.
    with pytest.raises(OpcircuitsError, match="pure_addition has only 922") as err:
        classify(ClassifyOptions(in_path=full, out=out, per_category=1000))
    assert err.value.field == "per_category" and "--allow-fewer" in str(err.value)
    assert list(tmp_path.iterdir()) == []
    classify(ClassifyOptions(in_path=full, out=out, per_category=1000, allow_fewer=True))
    counts = Counter(r["category"] for r in read_jsonl(out))
    assert counts == {"pure_addition": 922, "pure_multiplication": 1000, "mixed": 1000}
    # With matching, fewer problems can share one step histogram.
    with pytest.raises(OpcircuitsError, match="share one n_steps distribution"):
        classify(ClassifyOptions(in_path=full, out=out, per_category=900, match_steps=True))
    classify(
        ClassifyOptions(in_path=full, out=out, per_category=900, match_steps=True, allow_fewer=True)
    )
    counts = Counter(r["category"] for r in read_jsonl(out))
    assert len(set(counts.values())) == 1 and counts["mixed"] < 900


def test_prototype_nested(sampled: Path, tmp_path: Path) -> None:
    out = prototype(PrototypeOptions(in_path=sampled, out=tmp_path / "proto.jsonl"))
    proto = lines(out)
    assert len(proto) == 60
    assert set(proto) <= set(lines(sampled))  # byte-identical records of the sampled set
    assert [json.loads(line)["category"] for line in proto] == [
        c for c in CATEGORIES for _ in range(20)
    ]
    again = prototype(PrototypeOptions(in_path=sampled, out=tmp_path / "again.jsonl"))
    assert again.read_bytes() == out.read_bytes()
    man = json.loads(manifest_path(out).read_text(encoding="utf-8"))
    assert man["source_sha256"] == sha256_file(sampled)
    assert man["counts"] == dict.fromkeys(CATEGORIES, 20)
    with pytest.raises(OpcircuitsError, match="fewer than --per-category 201"):
        prototype(PrototypeOptions(in_path=sampled, out=tmp_path / "x.jsonl", per_category=201))


def test_prototype_keeps_step_matching(matched: Path, tmp_path: Path) -> None:
    out = prototype(PrototypeOptions(in_path=matched, out=tmp_path / "proto.jsonl"))
    recs = read_jsonl(out)
    assert set(lines(out)) <= set(lines(matched))
    hists = [Counter(r["n_steps"] for r in recs if r["category"] == c) for c in CATEGORIES]
    assert hists[0] == hists[1] == hists[2] and sum(hists[0].values()) == 20
    assert json.loads(manifest_path(out).read_text(encoding="utf-8"))["step_matched"] is True


def test_prototype_needs_categories(full: Path, tmp_path: Path) -> None:
    with pytest.raises(OpcircuitsError, match="data classify") as err:
        prototype(PrototypeOptions(in_path=full, out=tmp_path / "p.jsonl"))
    assert err.value.field == "category"


def test_cli_classify_and_prototype(
    full: Path,
    sampled: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "gsm8k_full.jsonl").write_bytes(full.read_bytes())

    def run(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["opcircuits", "data", *args])
        try:
            main()
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    assert run("classify") == 0  # defaults: data/gsm8k_full.jsonl → data/operation_samples_200
    printed = capsys.readouterr().out
    assert "8,792" in printed
    for cat, n in [
        ("pure_addition", "922"),
        ("pure_multiplication", "1,557"),
        ("mixed", "6,093"),
        ("unclassified", "220"),
        ("no_annotation", "113"),
    ]:
        assert cat in printed and n in printed
    default = tmp_path / "data" / "operation_samples_200.jsonl"
    assert default.read_bytes() == sampled.read_bytes()
    assert run("prototype") == 0
    assert len(lines(tmp_path / "data" / "operation_samples_prototype_60.jsonl")) == 60
    assert (tmp_path / "data" / "operation_samples_prototype_60.manifest.json").is_file()
    assert run("classify", "--per-category", "10", "--seed", "3", "--match-steps") == 0
    assert len(lines(tmp_path / "data" / "operation_samples_10.jsonl")) == 30
    capsys.readouterr()
    assert run("classify", "--per-category", "5000", "--out", "data/big.jsonl") == 2
    err = capsys.readouterr().err
    assert "field 'per_category'" in err and "--allow-fewer" in err
    assert not (tmp_path / "data" / "big.jsonl").exists()
