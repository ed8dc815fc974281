"""The demo model shipped in the package: it loads strictly through the public loader and
reproduces the answers recorded when it was built."""

from __future__ import annotations

import json
import re

import pytest

from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.config import demo_dir
from opcircuits.codi.evaluate import REFERENCE_NAME, student_answers, teacher_answers
from opcircuits.codi.latent import extract_number


@pytest.mark.parametrize("name", ["demo", "demo-arith", "demo-rules", "demo-rules-twin"])
def test_shipped_model_reproduces_recorded_answers(name: str) -> None:
    """Every shipped model (the GSM8K demo, the demo-arith organism, the rules organism and its
    negative twin, whose routing options come from their codi_config.json)."""
    ref = json.loads((demo_dir(name) / REFERENCE_NAME).read_text(encoding="utf-8"))
    model, tokenizer = load_codi(name, device="cpu")  # strict: any key drift is an error
    assert model.config.lora_r == 0 and model.config.num_latent == ref["num_latent"] == 6
    problems = ref["problems"]
    assert len(problems) >= 8
    texts, _ = student_answers(
        model,
        tokenizer,
        [p["question"] for p in problems],
        ref["num_latent"],
        ref["max_new_tokens"],
    )
    assert texts == [p["answer_text"] for p in problems]
    assert [extract_number(t) for t in texts] == [p["predicted"] for p in problems]
    # one problem at a time gives the same answers as the batch (padding is masked)
    single, _ = student_answers(
        model, tokenizer, [problems[0]["question"]], ref["num_latent"], ref["max_new_tokens"]
    )
    assert single == texts[:1]


# The demo teacher's greedy outputs (fp32, CPU, 96 new tokens) for the 8 reference problems, as
# recorded from the shipped weights: the exact text is the test, so any change to decoding, the
# prompt or the weights shows here. (The pieces are tokenized separately in training, so no space
# separates the last `>>` from "The answer is".) Problem 3 loops on a long number.
DEMO_TEACHER_TEXTS = [
    "<<12*2=12>> <<12+12=12>> <<12+12=12>>The answer is: 12",
    "<<2*2=12>> <<12+12=12>>The answer is: 12",
    "<<4" + "0" * 94,
    "<<3*3=12>> <<12+12=12>>The answer is: 12",
    "<<10*2=10>> <<10*2=10>> <<10+10=10>> <<10+10=10>> <<10+10=10>>The answer is: 10",
    "<<60*6=160>> <<160-160=12>>The answer is: 12",
    "<<40*4=10>> <<10*2=10>> <<10+10=10>>The answer is: 10",
    "<<20*2=10>> <<10*2=10>> <<10+10=10>> <<10+10=10>>The answer is: 10",
]
_STEP = r"<<\d+[-+*/]\d+=\d+>>"
_FINISHED = re.compile(rf"(?:{_STEP} )*{_STEP}The answer is: (\d+)")


def test_demo_teacher_writes_a_chain_of_thought() -> None:
    """The teacher writes calculator steps, then the answer sentence, in the trained format."""
    model, tokenizer = load_codi("demo", device="cpu")
    ref = json.loads((demo_dir() / REFERENCE_NAME).read_text())
    texts, truncated = teacher_answers(
        model, tokenizer, [p["question"] for p in ref["problems"]], 96
    )
    assert texts == DEMO_TEACHER_TEXTS
    assert truncated == [t == DEMO_TEACHER_TEXTS[2] for t in texts]  # the looping one hit 96
    finished = [m for t in texts if (m := _FINISHED.fullmatch(t))]
    assert len(finished) == 7  # all but the looping one: steps, then "The answer is: N"
    assert all(extract_number(m.group(0)) == float(m.group(1)) for m in finished)
