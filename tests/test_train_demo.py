"""The demo model shipped in the package: it loads strictly through the public loader and
reproduces the answers recorded when it was built."""

from __future__ import annotations

import json

from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.config import demo_dir
from opcircuits.codi.demo import REFERENCE_NAME, student_answers, teacher_answers
from opcircuits.codi.latent import extract_number


def test_shipped_demo_reproduces_recorded_answers() -> None:
    ref = json.loads((demo_dir() / REFERENCE_NAME).read_text())
    model, tokenizer = load_codi("demo", device="cpu")  # strict: any key drift is an error
    assert model.config.lora_r == 0 and model.config.num_latent == ref["num_latent"]
    problems = ref["problems"]
    assert len(problems) >= 5
    texts = student_answers(
        model,
        tokenizer,
        [p["question"] for p in problems],
        ref["num_latent"],
        ref["max_new_tokens"],
    )
    assert texts == [p["answer_text"] for p in problems]
    assert [extract_number(t) for t in texts] == [p["predicted"] for p in problems]
    # one problem at a time gives the same answers as the batch (padding is masked)
    single = student_answers(
        model, tokenizer, [problems[0]["question"]], ref["num_latent"], ref["max_new_tokens"]
    )
    assert single == texts[:1]


def test_demo_teacher_writes_a_chain_of_thought() -> None:
    model, tokenizer = load_codi("demo", device="cpu")
    ref = json.loads((demo_dir() / REFERENCE_NAME).read_text())
    texts = teacher_answers(model, tokenizer, [p["question"] for p in ref["problems"][:4]], 96)
    # trained on `<<expr=result>> ... The answer is: N`: every output starts a calculator step,
    # and most finish with the answer sentence (this small model can loop on long numbers)
    assert all(t.startswith("<<") for t in texts), texts
    assert sum("=" in t and ">> " in t and "The answer is: " in t for t in texts) >= 3, texts
