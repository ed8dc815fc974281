"""Hostile values for `intervene` and `analyze` (issue 25): counts beyond what a machine holds,
steering strengths beyond a float's range, texts no tokenizer should see, partners and patch
maps that would silently drop or fake a result. Each is one error naming the field, before any
file is read further or anything is allocated."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from cli_runner import run_cli

from opcircuits.data.io import MAX_CHARS, read_problems
from opcircuits.errors import OpcircuitsError
from opcircuits.intervene.partners import read_inputs
from opcircuits.options import AnalyzeOptions, InterveneOptions


def intervene_options(tmp_path: Path, **kw) -> InterveneOptions:
    return InterveneOptions(**{"data": tmp_path / "d.jsonl", "out": tmp_path / "o", **kw})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("bootstrap", 1_000_000_000, "at most"),
        ("batch_size", 10**9, "at most"),
        ("shard_size", 10**9, "at most"),
        ("max_new_tokens", 10**9, "at most"),
        ("seed", -1, "at least 0"),
        ("seed", 2**64, "at most"),
        ("alphas", "1e308", "at most"),
        ("alphas", "-1,-1e308", "at least"),
        ("steer_categories", "pure_addition,pure_addition", "two different categories"),
    ],
)
def test_intervene_refuses_values_beyond_its_limits(tmp_path, field, value, message):
    with pytest.raises(OpcircuitsError, match=message) as err:
        intervene_options(tmp_path, **{field: value})
    assert err.value.field == field


@pytest.mark.parametrize(
    ("field", "value"),
    [("permutations", 1_000_000_000), ("folds", 10**6), ("repeats", 10**6), ("jobs", 10**6),
     ("seed", 2**40)],
)  # fmt: skip
def test_analyze_refuses_counts_beyond_its_limits(field, value):
    with pytest.raises(OpcircuitsError, match="at most") as err:
        AnalyzeOptions(**{field: value})
    assert err.value.field == field
    with pytest.raises(OpcircuitsError, match="at least 0"):
        AnalyzeOptions(seed=-1)


def test_the_cli_says_so_in_one_line_before_reading_anything(tmp_path):
    code, _, err = run_cli(
        "analyze", "--store", str(tmp_path / "none"), "--out", str(tmp_path / "a"),
        "--permutations", "1000000000",
    )  # fmt: skip
    assert code == 2 and err.strip().splitlines() == [
        "error: field 'permutations': must be at most 10000, got 1000000000"
    ]
    code, _, err = run_cli("intervene", "--data", "x.jsonl", "--out", str(tmp_path / "o"),
                           "--bootstrap", "1000000000")  # fmt: skip
    assert code == 2 and "field 'bootstrap': must be at most" in err
    assert not (tmp_path / "o").exists()


def _record(i: int, **kw) -> dict:
    rec = {"id": f"p{i}", "split": "test", "question": f"Tom has {i} apples. He gets 2 more. How "
           "many?", "answer": f"{i}+2=<<{i}+2={i + 2}>>{i + 2}\n#### {i + 2}"}  # fmt: skip
    return {**rec, **kw}


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_huge_question_is_refused_as_it_is_read_before_any_tokenizer(tmp_path):
    # 200 KB: within a line's byte limit, so the field's own limit refuses it (a 30 MB line is
    # refused before it is read whole: tests/e2e/test_limits.py)
    huge = "How many? " * (200_000 // 10)
    data = _write(tmp_path / "d.jsonl", [_record(1), _record(2, question=huge)])
    with pytest.raises(OpcircuitsError) as err:
        read_problems(data)
    assert (err.value.line, err.value.field) == (2, "question")
    assert f"more than the {MAX_CHARS['question']:,}" in str(err.value)
    # The partners go through the same reader.
    _write(tmp_path / "d.jsonl", [_record(1, pair_id="a"), _record(2)])
    pairs = _write(tmp_path / "d.pairs.jsonl", [_record(3, pair_id="a", question=huge)])
    with pytest.raises(OpcircuitsError, match="question") as err:
        read_inputs(intervene_options(tmp_path, kinds="patch"), pairs)
    assert err.value.path == str(pairs)
    final = _write(tmp_path / "f.jsonl", [_record(1, final_answer="9" * 10_000, final_value=9)])
    with pytest.raises(OpcircuitsError, match="final_answer"):
        read_problems(final)


def test_a_partner_reusing_a_problem_id_is_an_error_not_dropped(tmp_path):
    _write(tmp_path / "d.jsonl", [_record(1, pair_id="a"), _record(2, pair_id="b")])
    pairs = _write(tmp_path / "d.pairs.jsonl", [_record(5, pair_id="a"), _record(2, pair_id="b",
                   question="Another question with 7 pears?")])  # fmt: skip
    with pytest.raises(OpcircuitsError, match=r"reuse ids of problems in --data \('p2'\)") as err:
        read_inputs(intervene_options(tmp_path, kinds="patch"), pairs)
    assert err.value.path == str(pairs)


def test_patch_map_keys_naming_no_problem_and_self_patches_are_errors(tmp_path):
    _write(tmp_path / "d.jsonl", [_record(1), _record(2), _record(3)])
    patch_map = tmp_path / "map.json"
    patch_map.write_text(json.dumps({"p1": "p2", "p9": "p1", "x": "p1"}))
    opts = intervene_options(tmp_path, kinds="patch", patch_map=patch_map)
    with pytest.raises(OpcircuitsError, match=r"2 key\(s\) name no problem of --data: 'p9', 'x'"):
        read_inputs(opts, None)
    patch_map.write_text(json.dumps({"p1": "p2", "p3": "p3"}))
    with pytest.raises(OpcircuitsError, match="'p3' is patched from itself") as err:
        read_inputs(opts, None)
    assert err.value.field == "p3"
    patch_map.write_text(json.dumps({"p1": "p2", "p3": "p1"}))
    assert read_inputs(opts, None).source_rows == [1, None, 0]


def test_a_source_with_the_problems_own_answer_is_left_out_of_follows_source():
    from opcircuits.analysis.causal import effects
    from opcircuits.intervene.outputs import _follows_defined, _same_answer_note

    rows = []
    for i in range(6):
        gold = float(i)
        same = i < 3  # problems 0-2 are patched from a source with their own answer
        base = {"id": f"p{i}", "category": "pure_addition" if i % 2 else "mixed", "gold": gold,
                "logp_gold": -1.0, "changed": False}  # fmt: skip
        rows.append({**base, "intervention": "none", "kind": "none", "correct": True})
        source = gold if same else gold + 1
        rows.append({**base, "intervention": "patch bot@0", "kind": "patch", "correct": True,
                     "source_gold": source, "follows_source": same})  # fmt: skip
    frame = pd.DataFrame(rows)
    note = _same_answer_note(frame)
    assert len(note) == 1 and note[0].startswith("3 problem(s) (p0, p1, p2)")
    pooled = {
        e["intervention"]: e
        for e in effects(_follows_defined(frame), n_boot=100, seed=0)[0]
        if e["category"] == "all"
    }
    # Before: the three "self-patches" made it look as if half the answers followed the source.
    assert pooled["patch bot@0"]["follows_source"] == 0.0


def test_a_missing_pairs_file_or_patch_map_is_one_line_not_a_traceback(tmp_path):
    data = _write(tmp_path / "d.jsonl", [_record(1), _record(2)])
    for flag, name in (("--pairs", "none.jsonl"), ("--patch-map", "none.json")):
        code, _, err = run_cli("intervene", "--data", str(data), "--out", str(tmp_path / "o"),
                               "--kinds", "zero", flag, str(tmp_path / name))  # fmt: skip
        assert code == 2 and err.strip().splitlines() == [
            f"error: {tmp_path / name}: field '{flag[2:].replace('-', '_')}': no such file"
        ]
    assert not (tmp_path / "o").exists()


def test_numbers_of_thousands_of_digits_are_errors_naming_the_line(tmp_path):
    """Python converts no integer of over 4,300 digits: JSON reading and the final answer's
    value raised ValueError (a traceback in every command reading problems)."""
    big = "9" * 5000
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "test_1", "question": "q?", "answer": "#### 1", "final_answer": '
                    f'"1", "final_value": {big}}}\n')  # fmt: skip
    with pytest.raises(OpcircuitsError, match="too many digits") as err:
        read_problems(data)
    assert err.value.line == 1
    _write(data, [_record(1, answer=f"1+1=2\n#### {big}")])
    with pytest.raises(OpcircuitsError, match="is not a number") as err:
        read_problems(data)
    assert (err.value.line, err.value.field) == (1, "answer") and len(str(err.value)) < 200


def test_a_sweep_inside_the_checkpoint_folder_is_refused_before_anything_is_written(tmp_path):
    # A sweep written into the model's folder would join the files the next load reads (and,
    # with a preset, the installed package): every folder a command reads is an input.
    import shutil

    from opcircuits.codi.resolve import local_folders
    from opcircuits.intervene import intervene

    checkpoint = tmp_path / "ck"
    shutil.copytree(local_folders("demo-arith")[0], checkpoint)
    before = sorted(p.name for p in checkpoint.iterdir())
    data = _write(tmp_path / "d.jsonl", [_record(1), _record(2)])
    for out in (checkpoint / "sweep", checkpoint):
        options = intervene_options(tmp_path, model=str(checkpoint), data=data, out=out)
        with pytest.raises(OpcircuitsError, match="input --model") as err:
            intervene(options)
        assert err.value.field == "--out"
    assert sorted(p.name for p in checkpoint.iterdir()) == before
