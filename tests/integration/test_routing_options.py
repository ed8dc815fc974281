"""The routing options of a CODI config (an organism's bottleneck, a twin's content-free
thoughts) and position-preserved truncation, checked against a loop that builds the same
attention pattern independently: one full-sequence forward per step with a 4-D mask."""

from __future__ import annotations

import json

import pytest
import torch

from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.config import CodiConfig
from opcircuits.codi.latent import prompt_ids, run_batch

torch.set_num_threads(1)

BOTTLENECK = {"answer_reads_prompt": False}
TWIN = {"thoughts_read_prompt": False, "thought_input": "constant"}


@pytest.fixture(scope="module")
def questions(gsm8k_dir) -> list[str]:
    with open(gsm8k_dir / "test.jsonl", encoding="utf-8") as fh:
        return [json.loads(line)["question"] for _, line in zip(range(6), fh, strict=False)]


@pytest.fixture(scope="module")
def organisms(tmp_path_factory, tiny_texts):
    from codi_factory import build_tiny_codi

    def build(name: str, routing: dict):
        root = tmp_path_factory.mktemp(f"routing-{name}")
        return build_tiny_codi(root, "llama", tiny_texts, num_latent=4, routing=routing)

    return {"bottleneck": build("bottleneck", BOTTLENECK), "twin": build("twin", TWIN)}


def masked_loop(model, tokenizer, question, *, num_latent, keep_positions, max_new_tokens=6):
    """Whole sequence re-run at every step with an explicit [1, 1, L, L] additive mask (query
    → key allowed iff causal and the routing rules allow it) and explicit position ids."""
    cfg = model.config
    prompt = torch.tensor([prompt_ids(model, tokenizer, question)])
    T = prompt.shape[1]
    seq = model.embed(prompt)
    pos = list(range(T))
    kinds = ["prompt"] * T

    def run(seq):
        L = seq.shape[1]
        allowed = torch.tril(torch.ones(L, L, dtype=torch.bool))
        for q, kind in enumerate(kinds):
            blind = (kind == "thought" and not cfg.thoughts_read_prompt) or (
                kind == "answer" and not cfg.answer_reads_prompt
            )
            if blind:
                allowed[q, :T] = False
        bias = torch.zeros(L, L).masked_fill(~allowed, torch.finfo(torch.float32).min)
        return model.lm(
            inputs_embeds=seq,
            attention_mask=bias[None, None],
            position_ids=torch.tensor([pos]),
            output_hidden_states=True,
        )

    finals = []
    for k in range(num_latent + 1):
        out = run(seq)
        finals.append(out.hidden_states[-1][0, -1])
        if k == num_latent:
            break
        seq = torch.cat([seq, model.project(out.hidden_states[-1][:, -1:])], dim=1)
        pos.append(pos[-1] + 1)
        kinds.append("thought")
    skip = cfg.num_latent - num_latent if keep_positions else 0
    seq = torch.cat([seq, model.embed(torch.tensor([[model.eot_id]]))], dim=1)
    pos.append(pos[-1] + 1 + skip)
    kinds.append("answer")
    answer = []
    for _ in range(max_new_tokens):
        logits = model.lm_head(run(seq).hidden_states[-1][0, -1])
        logits[model.eot_id] = float("-inf")
        token = int(logits.argmax())
        answer.append(token)
        if token == tokenizer.eos_token_id:
            break
        seq = torch.cat([seq, model.embed(torch.tensor([[token]]))], dim=1)
        pos.append(pos[-1] + 1)
        kinds.append("answer")
    return torch.stack(finals), answer


@pytest.mark.parametrize("name", ["bottleneck", "twin"])
@pytest.mark.parametrize(("k", "keep"), [(4, False), (2, False), (2, True), (0, True)])
def test_batched_loop_matches_the_masked_reference(organisms, questions, name, k, keep):
    tiny = organisms[name]
    model, tok = load_codi(tiny.checkpoint, base=tiny.base, device="cpu")
    batch = run_batch(
        model,
        tok,
        questions,
        layers=[model.num_layers],
        max_new_tokens=6,
        num_latent=k,
        keep_positions=keep,
    )
    for i, q in enumerate(questions):
        finals, answer = masked_loop(model, tok, q, num_latent=k, keep_positions=keep)
        # hidden_states[-1] of HF is after the final norm: compare the recorded last layer
        assert (batch.hidden[i, :, 0] - finals).abs().max() <= 1e-4, (name, k, keep, i)
        assert batch.answer_ids[i] == answer, (name, k, keep, i)


def test_position_preserved_truncation_moves_only_the_answer(organisms, questions):
    tiny = organisms["bottleneck"]
    model, tok = load_codi(tiny.checkpoint, base=tiny.base, device="cpu")
    kept = run_batch(model, tok, questions, layers=[1], num_latent=2, keep_positions=True)
    natural = run_batch(model, tok, questions, layers=[1], num_latent=2)
    full = run_batch(model, tok, questions, layers=[1], keep_positions=True)
    # the thoughts themselves are the same; the answers can differ only through eot's position
    assert torch.equal(kept.hidden, natural.hidden)
    assert full.answer_ids == run_batch(model, tok, questions, layers=[1]).answer_ids
    assert kept.answer_ids != natural.answer_ids


def test_bottleneck_answer_sees_the_question_only_through_the_thoughts(organisms, questions):
    tiny = organisms["bottleneck"]
    model, tok = load_codi(tiny.checkpoint, base=tiny.base, device="cpu")
    none = run_batch(model, tok, questions, layers=[1], num_latent=0, keep_positions=True)
    assert len({tuple(a) for a in none.answer_ids}) == 1  # without thoughts: one answer for all
    model.config.answer_reads_prompt = True  # the control: the same weights reading the prompt
    direct = run_batch(model, tok, questions, layers=[1], num_latent=0, keep_positions=True)
    assert len({tuple(a) for a in direct.answer_ids}) > 1


def test_twin_thoughts_carry_no_content(organisms, questions):
    tiny = organisms["twin"]
    model, tok = load_codi(tiny.checkpoint, base=tiny.base, device="cpu")
    out = run_batch(model, tok, questions, layers=[1, model.num_layers])
    thoughts = out.hidden[:, 1:]  # latent_1..K: identical for every question
    assert (thoughts - thoughts[:1]).abs().max() <= 1e-5
    assert (out.latent_inputs - model.thought_constant.detach()).abs().max() == 0
    assert (out.hidden[0, 0] - out.hidden[1, 0]).abs().max() > 1e-2  # bot reads the question


def test_routing_options_round_trip_through_the_checkpoint(organisms, tmp_path):
    tiny = organisms["twin"]
    model, tok = load_codi(tiny.checkpoint, base=tiny.base, device="cpu", merge=False)
    assert model.config.thought_input == "constant" and not model.config.thoughts_read_prompt
    saved = json.loads((model.save_pretrained(tmp_path) / "codi_config.json").read_text())
    assert saved["thought_input"] == "constant" and saved["thoughts_read_prompt"] is False
    assert "answer_reads_prompt" not in saved  # defaults are not written (old configs unchanged)
    again, _ = load_codi(tmp_path, base=tiny.base, device="cpu")  # strict: the constant is there
    assert torch.equal(again.thought_constant, model.thought_constant)
    with pytest.raises(Exception, match="thought_input"):
        CodiConfig(base=".", thought_input="zero")
