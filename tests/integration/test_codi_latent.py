"""The batched latent loop: prompt format, batch invariance, and agreement with a naive loop."""

from __future__ import annotations

import json

import pytest
import torch

from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.latent import (
    check_lengths,
    decode_answer,
    extract_number,
    format_question,
    max_positions,
    prompt_ids,
    run_batch,
)
from opcircuits.errors import OpcircuitsError

torch.set_num_threads(1)

LAYERS = [0, 1, 3, 4]


@pytest.fixture(scope="module")
def questions(gsm8k_dir) -> list[str]:
    """Twelve GSM8K test questions of clearly different lengths (so batches are padded)."""
    with open(gsm8k_dir / "test.jsonl", encoding="utf-8") as fh:
        qs = [json.loads(line)["question"] for _, line in zip(range(12), fh, strict=False)]
    assert len({len(q) for q in qs}) > 8
    return qs


def naive_loop(model, tokenizer, question: str, *, max_new_tokens: int):
    """One problem, no padding, no KV cache: the whole sequence of input embeddings is re-run
    at every step. Independent of the batched loop's masks, positions and cache."""
    ids = torch.tensor([prompt_ids(model, tokenizer, question)])
    seq = model.embed(ids)  # [1, T, D]
    hiddens, inputs = [], []
    for k in range(model.config.num_latent + 1):
        out = model.lm(inputs_embeds=seq, output_hidden_states=True)
        hiddens.append(torch.stack([h[0, -1] for h in out.hidden_states]))
        if k == model.config.num_latent:
            break
        x = model.project(out.hidden_states[-1][:, -1:])
        inputs.append(x[0, 0])
        seq = torch.cat([seq, x], dim=1)
    # eot, then EOS for models trained with EOS kept (official test.py)
    start = [model.eot_id] + ([] if model.config.remove_eos else [tokenizer.eos_token_id])
    seq = torch.cat([seq, model.embed(torch.tensor([start]))], dim=1)
    answer = []
    for _ in range(max_new_tokens):
        logits = model.lm(inputs_embeds=seq).logits[0, -1]
        logits[model.eot_id] = float("-inf")
        token = int(logits.argmax())
        answer.append(token)
        if token == tokenizer.eos_token_id:
            break
        seq = torch.cat([seq, model.embed(torch.tensor([[token]]))], dim=1)
    return torch.stack(hiddens), torch.stack(inputs), answer


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_batch_of_one_and_batch_of_all_agree(name, request, questions):
    tiny = request.getfixturevalue(name)
    model, tok = load_codi(tiny.checkpoint, base=tiny.base, device="cpu")
    together = run_batch(model, tok, questions, layers=LAYERS, max_new_tokens=12)
    alone = [run_batch(model, tok, [q], layers=LAYERS, max_new_tokens=12) for q in questions]
    hidden = torch.cat([a.hidden for a in alone])
    assert together.hidden.shape == (len(questions), 7, len(LAYERS), 64)
    assert (together.hidden - hidden).abs().max() <= 1e-4
    inputs = torch.cat([a.latent_inputs for a in alone])
    assert (together.latent_inputs - inputs).abs().max() <= 1e-4
    assert together.answer_ids == [a.answer_ids[0] for a in alone]
    assert torch.equal(together.lens_ids, torch.cat([a.lens_ids for a in alone]))
    # Not trivially equal: the problems' thoughts differ from one another.
    assert (together.hidden[0, -1] - together.hidden[1, -1]).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_prompts_prefilled_in_length_groups_equal_one_padded_group(name, request, questions):
    tiny = request.getfixturevalue(name)
    model, tok = load_codi(tiny.checkpoint, base=tiny.base, device="cpu")
    one = run_batch(model, tok, questions, layers=LAYERS, max_new_tokens=6, prefill_tokens=10**9)
    lengths = sorted(len(prompt_ids(model, tok, q)) for q in questions)
    budget = 3 * lengths[len(lengths) // 2]  # several groups of different padded lengths
    grouped = run_batch(
        model, tok, questions, layers=LAYERS, max_new_tokens=6, prefill_tokens=budget
    )
    assert (one.hidden - grouped.hidden).abs().max() <= 1e-4
    assert (one.latent_inputs - grouped.latent_inputs).abs().max() <= 1e-4
    assert one.answer_ids == grouped.answer_ids


@pytest.mark.parametrize(
    ("name", "remove_eos"), [("tiny_llama", True), ("tiny_gpt2", True), ("tiny_llama", False)]
)
def test_left_padded_batch_matches_a_naive_uncached_loop(name, remove_eos, request, questions):
    tiny = request.getfixturevalue(name)
    model, tok = load_codi(tiny.checkpoint, base=tiny.base, device="cpu", remove_eos=remove_eos)
    n_layers = model.num_layers
    batch = run_batch(model, tok, questions[:5], layers=list(range(n_layers + 1)), max_new_tokens=8)
    for i, q in enumerate(questions[:5]):
        hidden, inputs, answer = naive_loop(model, tok, q, max_new_tokens=8)
        assert (batch.hidden[i] - hidden).abs().max() <= 1e-4, i
        assert (batch.latent_inputs[i] - inputs).abs().max() <= 1e-4, i
        assert batch.answer_ids[i] == answer, i


def test_prompt_format(tiny_llama, tiny_gpt2):
    q = "  Tom  has   3 apples.  How many?  "
    assert format_question(q) == "Tom has  3 apples. How many?"  # one pass of '  ' → ' '
    for tiny, bos in ((tiny_llama, True), (tiny_gpt2, False)):
        model, tok = load_codi(tiny.checkpoint, base=tiny.base, device="cpu")
        ids = prompt_ids(model, tok, q)
        assert ids[-1] == model.bot_id
        assert (ids[0] == tok.bos_token_id) is bos
        assert tok.eos_token_id not in ids  # released checkpoints: no EOS before bot
        assert tok.decode(ids[:-1], skip_special_tokens=True) == format_question(q)
        model.config.remove_eos = False
        assert prompt_ids(model, tok, q)[-2:] == [tok.eos_token_id, model.bot_id]


def test_eot_is_never_decoded_but_the_lens_can_see_it(tiny_llama, questions):
    model, tok = load_codi(tiny_llama.checkpoint, base=tiny_llama.base, device="cpu")
    with torch.no_grad():  # make eot the most likely next token everywhere
        model.lm.get_output_embeddings().weight[model.eot_id] *= 50
    out = run_batch(model, tok, questions[:3], layers=[4], max_new_tokens=5)
    assert all(model.eot_id not in ids for ids in out.answer_ids)
    assert (out.lens_ids[:, :, 0] == model.eot_id).any()
    assert torch.all(out.lens_probs[:, :, :-1] >= out.lens_probs[:, :, 1:])


def test_answer_number_and_text():
    assert extract_number("The answer is 1,234.5 then 18") == 18.0
    assert extract_number("costs -3 dollars") == -3.0
    assert extract_number("total 2,000") == 2000.0
    assert extract_number("no digits") is None


def test_decoded_answer_drops_codi_ids(tiny_gpt2):
    model, tok = load_codi(tiny_gpt2.checkpoint, base=tiny_gpt2.base, device="cpu")
    ids = tok("The answer is 7")["input_ids"]
    assert decode_answer(model, tok, ids + [model.pad_id, tok.eos_token_id]) == "The answer is 7"


def _embedding_spy(model):
    """Record every batch of token ids the input embedding is called with."""
    calls: list[list[list[int]]] = []
    handle = model.lm.get_input_embeddings().register_forward_hook(
        lambda _mod, args, _out: calls.append(args[0].tolist())
    )
    return calls, handle


def _answer_starts(calls, eot_id):
    """For each embedding call that feeds eot: the ids fed from eot on, per row."""
    return [row[row.index(eot_id) :] for ids in calls for row in ids if eot_id in row]


def test_a_model_trained_with_eos_kept_answers(gsm8k_dir, tiny_texts, tmp_path, questions):
    """Trained with `remove_eos = false`, a CODI model's decoder input is `[eot, eos, answer…]`:
    inference must feed `[eot, eos]` after the thoughts (and after bot for K = 0), or the model
    predicts EOS first and answers nothing."""
    from codi_factory import write_tiny_base

    from opcircuits.codi.evaluate import student_answers
    from opcircuits.codi.training.loop import TrainOptions, train

    base = write_tiny_base(tmp_path / "base", "llama", tiny_texts)
    options = TrainOptions(
        out=tmp_path / "run",
        base=str(base),
        data=str(gsm8k_dir / "train.jsonl"),
        from_scratch=True,
        remove_eos=False,  # `opcircuits train --no-remove-eos`
        lora_r=0,
        prj_dim=32,
        num_latent=1,
        limit=4,
        batch_size=4,
        max_steps=30,
        lr=1e-2,
        warmup_ratio=0.0,
        max_tokens=200,
        seed=0,
        threads=1,
    )
    model, tok = load_codi(train(options), device="cpu")
    assert model.config.remove_eos is False
    eos = tok.eos_token_id
    calls, handle = _embedding_spy(model)
    try:
        latent = run_batch(model, tok, questions[:4], layers=[0], max_new_tokens=12)
        starts_latent = _answer_starts(calls, model.eot_id)
        calls.clear()
        no_thoughts, _ = student_answers(model, tok, questions[:4], 0, 12)
        starts_k0 = _answer_starts(calls, model.eot_id)
    finally:
        handle.remove()
    # run_batch and the K = 0 path feed eot and EOS together, for every problem
    assert len(starts_latent) == 4 and all(s[:2] == [model.eot_id, eos] for s in starts_latent)
    assert len(starts_k0) == 4 and all(s[:2] == [model.eot_id, eos] for s in starts_k0)
    texts = [decode_answer(model, tok, a) for a in latent.answer_ids]
    assert all(t.strip() for t in texts), texts
    assert all(t.strip() for t in no_thoughts), no_thoughts


def _question_of(model, tok, n_tokens: int) -> str:
    """A question whose prompt (with bot) is exactly `n_tokens` long."""
    for m in range(n_tokens):
        q = "How many?" + " 1" * m
        if len(prompt_ids(model, tok, q)) == n_tokens:
            return q
    raise AssertionError(n_tokens)


def test_questions_beyond_the_model_positions(tiny_gpt2):
    """GPT-2 knows 1,024 positions: a question with no room for its thoughts is an error naming
    it; one that leaves room for a few answer tokens stops there, marked truncated (never a
    position past the table)."""
    model, tok = load_codi(tiny_gpt2.checkpoint, base=tiny_gpt2.base, device="cpu")
    K, limit = model.config.num_latent, 1024
    assert max_positions(model) == limit
    short = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    fits = _question_of(model, tok, limit - K - 1 - 2)  # room for three answer tokens
    out = run_batch(model, tok, [short, fits], layers=[0], max_new_tokens=8)
    assert len(out.answer_ids[1]) <= 3
    assert out.truncated[1] == (tok.eos_token_id not in out.answer_ids[1])
    alone = run_batch(model, tok, [short], layers=[0], max_new_tokens=8)
    assert out.answer_ids[0] == alone.answer_ids[0] and out.truncated[0] == alone.truncated[0]
    assert out.truncated[0] == (tok.eos_token_id not in out.answer_ids[0])

    too_long = _question_of(model, tok, limit - K)  # no position left for eot
    with pytest.raises(OpcircuitsError, match="too long") as err:
        run_batch(model, tok, [short, too_long, fits], layers=[0], max_new_tokens=8)
    assert "#1" in str(err.value) and "#2" not in str(err.value)
    with pytest.raises(OpcircuitsError, match="test_9"):
        check_lengths(model, tok, [short, too_long], ["test_3", "test_9"])
