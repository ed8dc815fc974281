"""The synthetic problem generator: determinism, balance, exact arithmetic, pairs, held-out
frames."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections import Counter
from fractions import Fraction

import pytest

from opcircuits.data.annotations import CATEGORIES, extract_steps, label_record, parse_expr
from opcircuits.data.io import read_problems
from opcircuits.data.sampling import ClassifyOptions, PrototypeOptions, classify, prototype
from opcircuits.data.synth import SynthOptions, generate, heldout_frame, pairs_path, synth
from opcircuits.errors import OpcircuitsError
from opcircuits.files import manifest_path

# The run test's analysis: small and single-process (two shared cores).
RUN_ANALYSIS = ["--folds", "2", "--repeats", "1", "--permutations", "4", "--jobs", "1"]
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def _value(node: ast.expr) -> Fraction:
    """Exact value of a parsed annotation (the data stage's AST, evaluated with fractions)."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    assert isinstance(node, ast.BinOp), ast.dump(node)
    left, right = _value(node.left), _value(node.right)
    op = _OPS[type(node.op)]
    return {"+": left + right, "-": left - right, "*": left * right, "/": left / right}[op]


def _ops(record: dict) -> list[str]:
    """The one operator of each annotation, read off the parse tree."""
    out = []
    for step in extract_steps(record["answer"]):
        tree = parse_expr(step["expr"])
        assert isinstance(tree, ast.BinOp)
        out.append(_OPS[type(tree.op)])
    return out


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "synth_test.jsonl"
    synth(SynthOptions(out=out, n=600, seed=3, split="test"))
    return out


@pytest.fixture(scope="module")
def train_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "synth_train.jsonl"
    synth(SynthOptions(out=out, n=900, seed=3, split="train", steps="2,3,4"))
    return out


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_same_seed_and_options_give_identical_bytes(tmp_path, test_split):
    again = tmp_path / "again.jsonl"
    synth(SynthOptions(out=again, n=600, seed=3, split="test"))
    assert again.read_bytes() == test_split.read_bytes()
    assert pairs_path(again).read_bytes() == pairs_path(test_split).read_bytes()
    other = tmp_path / "other.jsonl"
    synth(SynthOptions(out=other, n=600, seed=4, split="test"))
    assert other.read_bytes() != test_split.read_bytes()


def test_manifest_describes_the_output(test_split):
    from opcircuits.files import sha256_file

    manifest = json.loads(manifest_path(test_split).read_text(encoding="utf-8"))
    assert manifest["stage"] == "data synth"
    assert manifest["seed"] == 3
    assert manifest["output_sha256"] == sha256_file(test_split)
    assert manifest["pairs_sha256"] == sha256_file(pairs_path(test_split))
    assert manifest["counts"] == dict.fromkeys(CATEGORIES, 200)


@pytest.mark.parametrize("fixture", ["test_split", "train_split"])
def test_categories_balanced_with_identical_step_histograms(request, fixture):
    records = _read(request.getfixturevalue(fixture))
    counts = Counter(r["category"] for r in records)
    assert set(counts) == set(CATEGORIES)
    assert len(set(counts.values())) == 1
    hists = {c: Counter(r["n_steps"] for r in records if r["category"] == c) for c in CATEGORIES}
    assert len({tuple(sorted(h.items())) for h in hists.values()}) == 1
    steps = {2, 3} if fixture == "test_split" else {2, 3, 4}
    assert set(hists["mixed"]) == steps
    # the labels are what the data stage's own classifier reads off the annotations
    for r in records:
        assert label_record(r).category == r["category"]
        assert r["n_steps"] == len(extract_steps(r["answer"]))


@pytest.mark.parametrize("fixture", ["test_split", "train_split"])
def test_every_annotation_is_exact_integer_arithmetic_within_the_bounds(request, fixture):
    path = request.getfixturevalue(fixture)
    options = SynthOptions()  # the fixtures use the default ranges
    for r in _read(path) + _read(pairs_path(path)):
        steps = extract_steps(r["answer"])
        previous = None
        for step in steps:
            tree = parse_expr(step["expr"])
            value = _value(tree)
            assert value == Fraction(step["result"]), (r["id"], step)
            assert value.denominator == 1 and 1 <= value <= options.max_result, (r["id"], step)
            # a chain: each step starts from the previous result
            if previous is not None:
                assert _value(tree.left) == previous, (r["id"], step)
            previous = value
        assert Fraction(r["final_answer"]) == previous == r["final_value"]
        numbers = [int(x) for x in re.findall(r"\d+", r["question"])]
        assert len(numbers) == len(steps) + 1
        assert all(options.min_operand <= x <= options.max_operand for x in numbers), r["id"]


def test_partners_differ_in_exactly_one_operation(test_split):
    problems = {r["pair_id"]: r for r in _read(test_split)}
    partners = _read(pairs_path(test_split))
    assert len(partners) == len(problems)
    changed_category = 0
    for cf in partners:
        orig = problems[cf["pair_id"]]
        assert cf["partner_of"] == orig["id"] and cf["changed_step"] == orig["changed_step"]
        a, b = _ops(orig), _ops(cf)
        differ = [i for i in range(len(a)) if a[i] != b[i]]
        assert differ == [orig["changed_step"] - 1], (orig["id"], a, b)
        # same frame, numbers and wording except the changed step's sentence
        assert cf["frame_id"] == orig["frame_id"]
        assert re.findall(r"\d+", cf["question"]) == re.findall(r"\d+", orig["question"])
        sa, sb = orig["question"].split(". "), cf["question"].split(". ")
        assert len(sa) == len(sb) and sum(x != y for x, y in zip(sa, sb, strict=True)) == 1
        assert cf["final_value"] != orig["final_value"]
        changed_category += cf["category"] != orig["category"]
    assert changed_category > len(partners) / 2


def test_heldout_frames_only_in_the_test_split(test_split, train_split):
    train, test = _read(train_split), _read(test_split)
    assert not any(r["heldout_frame"] or heldout_frame(r["frame_id"]) for r in train)
    held = [r for r in test if r["heldout_frame"]]
    assert 0.4 < len(held) / len(test) < 0.6  # heldout_share 0.5
    assert all(r["split"] == "test" for r in test) and all(r["split"] == "train" for r in train)
    # no computation (start, operations, operands) of a test problem occurs in a train problem
    chains = [{"".join(s["expr"] for s in r["steps"]) for r in rs} for rs in (train, test)]
    assert not chains[0] & chains[1]


def test_data_stage_reads_classifies_and_samples_the_file(tmp_path, test_split):
    records = read_problems(test_split)
    assert len(records) == 600 and records[0]["id"] == "synth_0"
    sampled = classify(
        ClassifyOptions(
            in_path=test_split, out=tmp_path / "s.jsonl", per_category=150, match_steps=True
        )
    )
    counts = Counter(r["category"] for r in read_problems(sampled))
    assert counts == dict.fromkeys(CATEGORIES, 150)
    proto = prototype(PrototypeOptions(in_path=sampled, out=tmp_path / "p.jsonl", per_category=10))
    assert len(read_problems(proto)) == 30


def test_train_data_reader_takes_the_file(train_split):
    from opcircuits.codi.training.examples import read_train_problems

    examples = read_train_problems(train_split)
    assert len(examples) == 900
    assert examples[0].cot.startswith("<<") and examples[0].answer.startswith("The answer is: ")


def test_generation_is_independent_of_pairs_option():
    a, _ = generate(SynthOptions(n=30, seed=1, pairs=True))
    b, _ = generate(SynthOptions(n=30, seed=1, pairs=False))
    assert a == b


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n": 10}, "n"),
        ({"steps": "1,2"}, "steps"),
        ({"steps": "two"}, "steps"),
        ({"split": "dev"}, "split"),
        ({"min_operand": 9, "max_operand": 3}, "min_operand"),
        ({"max_result": 15}, "max_result"),
        ({"heldout_share": 1.5}, "heldout_share"),
    ],
)
def test_bad_options_name_the_field(kwargs, field):
    with pytest.raises(OpcircuitsError) as err:
        SynthOptions(**kwargs)
    assert err.value.field == field


def test_cli_writes_the_file_and_rejects_bad_options(tmp_path):
    out = tmp_path / "cli.jsonl"
    cmd = [sys.executable, "-m", "opcircuits", "data", "synth", "--out", str(out), "--n", "30"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert len(_read(out)) == 30 and manifest_path(out).is_file()
    res = subprocess.run([*cmd[:-1], "31"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: field 'n': must be a positive multiple of 3, got 31"
    ]


def test_run_on_synthetic_data_end_to_end(tmp_path, gsm8k_dir):
    """`opcircuits run --data synthetic`: the synth stage replaces the GSM8K download, the rest
    of the run takes its problems unchanged, and a rerun skips every stage."""
    import tomllib

    import torch
    from cli_runner import run_cli
    from codi_factory import build_tiny_codi, sample_texts

    from opcircuits.store import open_store

    tiny = build_tiny_codi(tmp_path / "tiny", "llama", sample_texts(gsm8k_dir, 200), num_latent=2)
    tiny.config.save(tiny.checkpoint)
    out = tmp_path / "run"
    args = [
        "run", "--mode", "prototype", "--data", "synthetic", "--out", str(out),
        "--per-category", "12", "--prototype-per-category", "6", "--synth-steps", "2,3,4",
        "--synth-max-operand", "9", "--synth-max-result", "40",
        "--checkpoint", str(tiny.checkpoint), "--layers", "1,3", "--batch-size", "6",
        "--max-new-tokens", "8", *RUN_ANALYSIS,
    ]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, stdout, stderr = run_cli(*args)
        assert code == 0, stderr
        stages = sorted(p.stem for p in (out / "stages").glob("*.json"))
        assert stages == sorted(["synth", "classify", "prototype", "extract", "analyze"])
        problems = _read(out / "data" / "synth_36.jsonl")
        assert len(problems) == 36 and {r["n_steps"] for r in problems} == {2, 3, 4}
        assert all(r["split"] == "test" for r in problems)
        assert max(int(s["result"]) for r in problems for s in r["steps"]) <= 40
        assert pairs_path(out / "data" / "synth_36.jsonl").is_file()
        store = open_store(out / "store")
        assert len(store.records) == 18 and all(store.records["id"].str.startswith("synth_"))
        config = tomllib.loads((out / "config.resolved.toml").read_text(encoding="utf-8"))
        assert config["data"]["source"] == "synthetic"
        assert config["data"]["synth_max_result"] == 40
        manifest = json.loads(manifest_path(out / "data" / "synth_36.jsonl").read_text())
        assert manifest["options"]["steps"] == [2, 3, 4] and manifest["options"]["seed"] == 42
        code, stdout, stderr = run_cli(*args)
        assert code == 0 and "all up to date" in stdout, stderr
    finally:
        torch.set_num_threads(threads)


def test_new_base_without_digit_splitting_makes_every_result_one_token(tmp_path):
    """`new-base --no-split-digits` on synthetic problems: each number up to max_result is a
    single token (how demo-arith's base was built); the default still spells digits."""
    from transformers import AutoTokenizer

    from opcircuits.codi.training.base import build_demo_base
    from opcircuits.options import NewBaseOptions

    data = tmp_path / "train.jsonl"
    synth(SynthOptions(out=data, n=3000, seed=0, split="train", pairs=False))
    small = {"vocab_size": 1536, "hidden_size": 16, "num_layers": 1, "num_heads": 1}
    whole = build_demo_base(
        NewBaseOptions(out=tmp_path / "w", data=str(data), split_digits=False, **small)
    )
    split = build_demo_base(NewBaseOptions(out=tmp_path / "s", data=str(data), **small))
    tok_whole, tok_split = (
        AutoTokenizer.from_pretrained(whole),
        AutoTokenizer.from_pretrained(split),
    )
    for n in range(1, 51):
        for text in (f"{n}", f" {n}"):
            assert len(tok_whole(text, add_special_tokens=False)["input_ids"]) == 1, text
        assert len(tok_split(f"{n}", add_special_tokens=False)["input_ids"]) == len(str(n))


def test_evaluate_breaks_accuracy_down_by_category_steps_and_heldout_frame(test_split):
    from opcircuits.codi.evaluate import accuracy_by_group, read_eval_problems

    problems = read_eval_problems(test_split)
    assert {"category", "n_steps", "heldout_frame"} <= set(problems[0])
    right = [i % 3 == 0 for i in range(len(problems))]
    by = accuracy_by_group(problems, {"teacher": right, "student_k6": [True] * len(problems)})
    assert set(by) == {"category", "n_steps", "heldout_frame"}
    assert set(by["category"]) == set(CATEGORIES) and set(by["n_steps"]) == {"2", "3"}
    assert set(by["heldout_frame"]) == {"false", "true"}
    for groups in by.values():
        assert sum(g["n"] for g in groups.values()) == len(problems)
        assert all(g["student_k6"] == 1.0 for g in groups.values())
        # the group accuracies average back to the overall one
        total = sum(g["teacher"] * g["n"] for g in groups.values())
        assert total == pytest.approx(sum(right))
    mixed = [i for i, p in enumerate(problems) if p["category"] == "mixed"]
    assert by["category"]["mixed"]["teacher"] == pytest.approx(
        sum(right[i] for i in mixed) / len(mixed)
    )
    # GSM8K records without the synthetic fields: no breakdown for what they lack
    assert set(accuracy_by_group([{"category": "mixed"}], {"t": [True]})) == {"category"}
