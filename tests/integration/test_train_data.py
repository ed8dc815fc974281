"""Training data: GSM8K and GSM8k-Aug sources, split filtering, and records left out with a
counted reason (never silently)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opcircuits.codi.training.examples import (
    NO_ANSWER_TOKEN,
    NO_FINAL_ANSWER,
    TOO_LONG,
    build_examples,
    read_train_data,
    teacher_cot,
)
from opcircuits.data.gsm8k import load_local
from opcircuits.data.io import read_problem_rows
from opcircuits.errors import OpcircuitsError

# GSM8k-Aug rows (zen-E/GSM8k-Aug's columns: question, cot = calculator steps separated by
# spaces, answer = the value). The third has a negative answer, the fourth no number.
AUG_ROWS = [
    {
        "question": "Out of 600 employees, 30% got a raise and 10% got a bonus. How many got one?",
        "cot": "<<600*30/100=180>> <<600*10/100=60>> <<180+60=240>>",
        "answer": "240",
    },
    {"question": "Tom has 3 apples and buys 4. How many?", "cot": "<<3+4=7>>", "answer": "7"},
    {"question": "It is 2 degrees and drops 6. Now?", "cot": "<<2-6=-4>>", "answer": "-4"},
    {"question": "What is the colour of the sky?", "cot": "", "answer": "blue"},
]


def _write(path: Path, rows: list[dict], kind: str) -> Path:
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet"])
def test_gsm8k_aug_rows_become_examples(tmp_path: Path, kind: str) -> None:
    data = read_train_data(_write(tmp_path / f"aug.{kind}", AUG_ROWS, kind))
    assert data.rows == 4 and data.dropped[NO_FINAL_ANSWER] == 1  # "blue"
    first, one_step, negative = data.examples
    assert first.steps == ("<<600*30/100=180>>", "<<600*10/100=60>>", "<<180+60=240>>")
    assert first.answer == "The answer is: 240"
    assert teacher_cot(first) == "<<600*30/100=180>> <<600*10/100=60>>"  # last step dropped
    assert teacher_cot(one_step) == "" and one_step.answer == "The answer is: 7"
    assert negative.answer == "The answer is: -4"
    assert [e.id for e in data.examples] == ["train_0", "train_1", "train_2"]


def test_problem_records_keep_their_split(gsm8k_dir: Path, tmp_path: Path) -> None:
    """A file of problem records holding test and train (as `opcircuits data download` writes):
    training reads only the train rows, evaluation only the test rows."""
    path = tmp_path / "gsm8k_full.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in load_local(gsm8k_dir)))
    data = read_train_data(path)
    assert (data.rows, data.other_splits, len(data.examples)) == (7473, 1319, 7473)
    assert data.examples[0].id == "train_0" and data.examples[0].steps[0] == "<<48/2=24>>"
    test_rows, other = read_problem_rows(path, "test")
    assert len(test_rows) == 1319 and other == 7473
    assert {r["split"] for _, _, r in test_rows} == {"test"}
    # the original release's folder: one file per split
    rows, other = read_problem_rows(gsm8k_dir, "test")
    assert len(rows) == 1319 and other == 0
    assert rows[0][2]["question"] == test_rows[0][2]["question"]


def test_bad_sources_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(OpcircuitsError, match="not found"):
        read_train_data(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": 3, "answer": "#### 4"}) + "\n")
    with pytest.raises(OpcircuitsError) as err:
        read_train_data(bad)
    assert (err.value.line, err.value.field) == (1, "question")
    only_test = _write(tmp_path / "t.jsonl", [{**AUG_ROWS[0], "split": "test"}], "jsonl")
    with pytest.raises(OpcircuitsError, match="no rows of split 'train'"):
        read_train_data(only_test)
    none_usable = _write(tmp_path / "n.jsonl", [{"question": "q", "answer": "no hashes"}], "jsonl")
    with pytest.raises(OpcircuitsError, match="no usable training problems"):
        read_train_data(none_usable)


def _tokenizer_without(digits: str):
    """A real BPE tokenizer (no unknown token) whose alphabet lacks `digits`: those characters
    produce no token at all, as in a base whose vocabulary cannot spell some answers."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    keep = "".join(c for c in "0123456789" if c not in digits)
    texts = [row["question"] for row in AUG_ROWS] + [f"The answer is: {keep} <<>>=*/+-"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.BpeTrainer(special_tokens=["<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def test_missing_answer_token_and_too_long_are_counted(tmp_path: Path) -> None:
    """A record whose answer value has no token is an error for that record (counted, not
    trained on the last token instead); over-long records are counted too."""
    examples = read_train_data(_write(tmp_path / "aug.jsonl", AUG_ROWS, "jsonl")).examples
    tok = _tokenizer_without("2")  # 240 has a token ("4"), 7 too, -4 too; nothing lacks one yet
    kept, dropped = build_examples(examples, tok, 1000, 1001, max_tokens=1000)
    assert len(kept) == 3 and dropped == {NO_ANSWER_TOKEN: 0, TOO_LONG: 0}
    tok = _tokenizer_without("7")  # "The answer is: 7" has no token for its value
    kept, dropped = build_examples(examples, tok, 1000, 1001, max_tokens=1000)
    assert [k.id for k in kept] == ["train_0", "train_2"]
    assert dropped == {NO_ANSWER_TOKEN: 1, TOO_LONG: 0}
    # the distillation position of a kept one still predicts its value's first token
    t = kept[0]
    assert tok.decode(t.teacher_ids[t.teacher_pos + 1]).strip().startswith("2")
    longest = max(len(k.teacher_ids) for k in kept)
    kept, dropped = build_examples(examples, tok, 1000, 1001, max_tokens=longest - 1)
    assert len(kept) == 1 and dropped == {NO_ANSWER_TOKEN: 1, TOO_LONG: 1}
    with pytest.raises(OpcircuitsError, match="1 without an answer-value token, 2 longer"):
        build_examples(examples, tok, 1000, 1001, max_tokens=3)
