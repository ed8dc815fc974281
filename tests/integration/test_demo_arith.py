"""The model organism shipped in the package (`demo-arith`; its recorded answers are checked
beside the demo's in test_train_demo.py): its continuous thoughts carry the computation (K = 6
beats K = 0 on fresh synthetic problems) — checks on the shipped weights, not on a stand-in."""

from __future__ import annotations

import json
import math

import pytest

from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.config import demo_dir
from opcircuits.codi.evaluate import student_answers, teacher_answers
from opcircuits.codi.latent import extract_number
from opcircuits.data.annotations import extract_steps
from opcircuits.data.synth import generate
from opcircuits.options import SynthOptions

MODEL = "demo-arith"
# On all 1,500 problems of the card's test file the K = 6 student scores 0.81 (0.71 on held-out
# frames); 90 fresh problems leave room for sampling noise, not for a model that stopped working.
K6_FLOOR = 0.65


@pytest.fixture(scope="module")
def organism():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model on shared cores: one thread is fastest
    yield load_codi(MODEL, device="cpu")  # strict: any key drift is an error
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fresh_problems():
    """Test-split problems no file in the repository holds (seed 7), all categories and steps."""
    problems, _ = generate(SynthOptions(n=90, seed=7, split="test"))
    return problems


def _accuracy(texts: list[str], problems: list[dict]) -> float:
    right = [
        (p := extract_number(t)) is not None and math.isclose(p, r["final_value"])
        for t, r in zip(texts, problems, strict=True)
    ]
    return sum(right) / len(right)


def test_six_thoughts_beat_none_at_natural_positions(organism, fresh_problems):
    """With six thoughts the organism answers most fresh problems; with none (eot right after
    bot) it mostly cannot. This alone does not say the answer uses the thoughts: K also moves
    eot's position (see the next test)."""
    model, tokenizer = organism
    questions = [p["question"] for p in fresh_problems]
    k6 = _accuracy(student_answers(model, tokenizer, questions, 6, 16)[0], fresh_problems)
    k0 = _accuracy(student_answers(model, tokenizer, questions, 0, 16)[0], fresh_problems)
    assert k6 >= K6_FLOOR, (k6, k0)
    assert k6 - k0 >= 0.3, (k6, k0)


def test_teacher_writes_correct_calculator_steps(organism, fresh_problems):
    """The teacher writes every step but the last (trained with the last step dropped, as the
    official CODI) and then the answer sentence; most written steps are the problem's own."""
    model, tokenizer = organism
    problems = fresh_problems[:30]
    texts, _ = teacher_answers(model, tokenizer, [p["question"] for p in problems], 64)
    well_formed = right = total = 0
    for text, p in zip(texts, problems, strict=True):
        assert "The answer is: " in text, text
        written = extract_steps(text)
        well_formed += len(written) == p["n_steps"] - 1
        total += p["n_steps"] - 1
        right += sum(w == s for w, s in zip(written, p["steps"], strict=False))
    assert well_formed / len(problems) >= 0.8, (well_formed, texts)
    assert right / total >= 0.8, (right, total)


def test_model_card_figures(tmp_path):
    """The card's two figures are drawn from its training log and evaluation result."""
    from opcircuits.report.figures import accuracy_vs_thoughts, training_curves

    folder = demo_dir(MODEL)
    rows = [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines()]
    result = json.loads((folder / "evaluation.json").read_text(encoding="utf-8"))
    assert {f"student_k{k}" for k in range(7)} <= set(result["accuracy"])
    for fig in (training_curves(rows, tmp_path), accuracy_vs_thoughts(result, tmp_path)):
        png = tmp_path / fig["file"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_one_thought_with_eots_position_kept_answers_as_well_as_six(organism, fresh_problems):
    """Position-preserved truncation: one thought, with eot and the answer at the positions they
    have after six, answers as well as six; with eot moved up to position 2 it does not. The
    accuracy-against-K curve is mostly eot's position, not the later thoughts' content."""
    model, tokenizer = organism
    questions = [p["question"] for p in fresh_problems]

    def acc(k: int, keep: bool) -> float:
        texts, _ = student_answers(model, tokenizer, questions, k, 16, keep_positions=keep)
        return _accuracy(texts, fresh_problems)

    k6, kept, natural = acc(6, False), acc(1, True), acc(1, False)
    assert abs(kept - k6) <= 0.1, (kept, k6)
    assert kept - natural >= 0.3, (kept, natural)
