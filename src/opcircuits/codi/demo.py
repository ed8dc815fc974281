"""The shipped demo model's base: a byte-level BPE tokenizer trained on GSM8K train text (digits
split one per token, so numbers are spelled digit by digit) and a small LLaMA-architecture config.

`build_demo_base(out_dir, ...)` writes `config.json` + tokenizer files (no weights): a base that
`opcircuits train --base DIR --from-scratch` initialises randomly and trains fully (lora_r = 0).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from opcircuits.codi.train_data import read_train_problems
from opcircuits.options import DemoBaseOptions, EvaluateOptions

log = logging.getLogger(__name__)

BOS, EOS = "<s>", "</s>"


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE (GPT-2 style, no unknown tokens) with digits split individually and BOS
    added in front of every text (as LLaMA's tokenizer does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, model_max_length=1 << 30
    )


def build_demo_base(options: DemoBaseOptions) -> Path:
    """Write the demo base (tokenizer + LLaMA config, no weights) into `options.out`."""
    from transformers import LlamaConfig

    examples = read_train_problems(options.data)
    texts = [t for ex in examples for t in (ex.question, ex.cot, ex.answer) if t]
    tokenizer = train_tokenizer(texts, options.vocab_size)
    vocab = len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=options.hidden_size,
        intermediate_size=options.intermediate_size,
        num_hidden_layers=options.num_layers,
        num_attention_heads=options.num_heads,
        num_key_value_heads=options.num_heads,
        max_position_embeddings=options.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
    )
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    log.info(
        "demo base: vocab %d, %d layers × %d, written to %s",
        vocab,
        options.num_layers,
        options.hidden_size,
        out,
    )
    return out


# --- measuring a CODI model for its card ---------------------------------------------------


def read_test_problems(path: str | Path) -> list[dict[str, Any]]:
    """GSM8K test problems (original release or problem records): id, question, gold value."""
    import json

    from opcircuits.errors import OpcircuitsError

    path = Path(path)
    if path.is_dir():
        path = path / "test.jsonl"
    if not path.is_file():
        raise OpcircuitsError("problem file not found", path=path)
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "final_value" in row:
                gold = float(row["final_value"])
            elif isinstance(row.get("answer"), str) and "####" in row["answer"]:
                gold = float(row["answer"].split("####")[-1].strip().replace(",", ""))
            else:
                raise OpcircuitsError("no final answer", path=path, line=lineno, field="answer")
            out.append(
                {"id": row.get("id", f"test_{len(out)}"), "question": row["question"], "gold": gold}
            )
    return out


def _greedy(
    model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int
) -> list[list[int]]:
    """Greedy continuation of left-padded token prompts (eot never chosen), up to EOS."""
    import torch

    device = model.prj[1].weight.device
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), model.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    with torch.inference_mode():
        gen = model.lm.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=model.pad_id,
            eos_token_id=tokenizer.eos_token_id,
            suppress_tokens=[model.eot_id],
        )
    outs = []
    for row in gen[:, width:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        outs.append(row)
    return outs


def teacher_answers(
    model: Any, tokenizer: Any, questions: list[str], max_new_tokens: int
) -> list[str]:
    """The teacher task: question → explicit chain of thought and answer, greedy."""
    from opcircuits.codi.latent import decode_answer, prompt_ids

    prompts = [prompt_ids(model, tokenizer, q)[:-1] for q in questions]  # no bot
    return [
        decode_answer(model, tokenizer, a)
        for a in _greedy(model, tokenizer, prompts, max_new_tokens)
    ]


def student_answers(
    model: Any, tokenizer: Any, questions: list[str], num_latent: int, max_new_tokens: int
) -> list[str]:
    """The student task: question, bot, K continuous thoughts, eot → answer, greedy.
    K = 0 is question, bot, eot → answer (no thoughts). Both go through the one latent loop, so
    the answer starts as training taught (`[eot]`, or `[eot, eos]` when EOS was kept)."""
    from opcircuits.codi.latent import decode_answer, run_batch

    answers = run_batch(
        model,
        tokenizer,
        questions,
        layers=[0],
        max_new_tokens=max_new_tokens,
        num_latent=num_latent,
    ).answer_ids
    return [decode_answer(model, tokenizer, a) for a in answers]


def evaluate(options: EvaluateOptions) -> dict[str, Any]:
    """Accuracy of a CODI model on GSM8K-style problems: the teacher (explicit CoT) and the
    student with each K in `num_latent`. Writes the result JSON (with every answer) to `out`."""
    import math
    import time

    import torch

    from opcircuits.codi.checkpoint import load_codi
    from opcircuits.codi.latent import extract_number
    from opcircuits.files import write_json_atomic

    if options.threads:
        torch.set_num_threads(options.threads)
    model, tokenizer = load_codi(options.model, device=options.device, dtype=options.dtype)
    problems = read_test_problems(options.data)
    if options.limit:
        problems = problems[: options.limit]
    settings: list[tuple[str, int | None]] = [("teacher", None)] if options.teacher else []
    settings += [(f"student_k{k}", k) for k in options.num_latent]
    result: dict[str, Any] = {
        "model": options.model,
        "data": str(options.data),
        "n_problems": len(problems),
        "accuracy": {},
        "seconds": {},
        "answers": {},
    }
    for name, k in settings:
        t0 = time.time()
        texts: list[str] = []
        for i in range(0, len(problems), options.batch_size):
            qs = [p["question"] for p in problems[i : i + options.batch_size]]
            if k is None:
                texts += teacher_answers(model, tokenizer, qs, options.max_cot_tokens)
            else:
                texts += student_answers(model, tokenizer, qs, k, options.max_new_tokens)
        correct = 0
        for p, text in zip(problems, texts, strict=True):
            pred = extract_number(text)
            correct += pred is not None and math.isclose(pred, p["gold"], abs_tol=1e-6)
        result["accuracy"][name] = correct / len(problems)
        result["seconds"][name] = round(time.time() - t0, 1)
        result["answers"][name] = texts
        log.info(
            "%s: %d/%d correct (%.1f%%) in %.0fs",
            name,
            correct,
            len(problems),
            100 * correct / len(problems),
            time.time() - t0,
        )
    result["ids"] = [p["id"] for p in problems]
    if options.out is not None:
        write_json_atomic(options.out, result)
    return result


REFERENCE_NAME = "reference_answers.json"


def record_reference(
    model_dir: str | Path, data: str | Path, n: int = 8, max_new_tokens: int = 24
) -> Path:
    """Record the student's (K from the model's config) decoded answers on the first `n` test
    problems into `model_dir/reference_answers.json`, so a test can check that the shipped
    weights load strictly and reproduce them."""
    from opcircuits.codi.checkpoint import load_codi
    from opcircuits.codi.latent import extract_number
    from opcircuits.files import write_json_atomic

    model, tokenizer = load_codi(str(model_dir), device="cpu")
    problems = read_test_problems(data)[:n]
    k = model.config.num_latent
    texts = student_answers(model, tokenizer, [p["question"] for p in problems], k, max_new_tokens)
    out = Path(model_dir) / REFERENCE_NAME
    write_json_atomic(
        out,
        {
            "num_latent": k,
            "max_new_tokens": max_new_tokens,
            "dtype": "float32",
            "problems": [
                {
                    "id": p["id"],
                    "question": p["question"],
                    "gold": p["gold"],
                    "answer_text": t,
                    "predicted": extract_number(t),
                }
                for p, t in zip(problems, texts, strict=True)
            ],
        },
    )
    return out
