"""Measuring a CODI model on GSM8K-style problems (`opcircuits evaluate`; the model card's numbers):
the teacher (explicit chain of thought, greedy) and the student with K continuous thoughts, and the
reference answers the shipped demo is tested against.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError
from opcircuits.options import DEFAULT_MAX_NEW_TOKENS, EvaluateOptions

log = logging.getLogger(__name__)

REFERENCE_NAME = "reference_answers.json"
# Record fields accuracy is also broken down by, when every problem has them (the data stage's
# labels; synthetic problems add whether the question's frame was held out of training).
GROUP_FIELDS = ("category", "n_steps", "heldout_frame", "heldout_phrasing")


def read_eval_problems(source: str | Path) -> list[dict[str, Any]]:
    """Test problems as `{id, question, final_value}`, through the one problem-source reader
    (`train_data.read_problem_rows`: a folder holding GSM8K's `test.jsonl`, GSM8K's original
    `test.jsonl` (ids `test_0`, `test_1`, … by position), a problem file the data stage writes
    (its `split = test` rows), parquet, or "hf"). Bad input names file, line and field."""
    from opcircuits.data.gsm8k import parse_final_answer
    from opcircuits.data.io import read_problem_rows

    rows, _ = read_problem_rows(source, "test")
    out = []
    for i, (where, line, row) in enumerate(rows):
        for name in ("question", "answer"):
            if not isinstance(row.get(name), str):
                raise OpcircuitsError("missing or not a string", path=where, line=line, field=name)
        value = row.get("final_value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            value = parse_final_answer(row["answer"], path=where, line=line)[1]
        problem = {
            "id": str(row.get("id", f"test_{i}")),
            "question": row["question"],
            "final_value": value,
        }
        problem.update({f: row[f] for f in GROUP_FIELDS if f in row})
        out.append(problem)
    return out


def accuracy_by_group(
    problems: list[dict[str, Any]], correct: dict[str, list[bool]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Accuracy of every setting within each value of each GROUP_FIELDS field that all problems
    carry: `{field: {value: {"n": count, setting: accuracy, …}}}` (values as text, sorted)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in GROUP_FIELDS:
        if not problems or any(name not in p for p in problems):
            continue
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(problems):
            groups.setdefault(str(p[name]).lower(), []).append(i)
        out[name] = {
            value: {
                "n": len(idx),
                **{s: sum(ok[i] for i in idx) / len(idx) for s, ok in correct.items()},
            }
            for value, idx in sorted(groups.items())
        }
    return out


def _greedy(
    model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int
) -> tuple[list[list[int]], list[bool]]:
    """Greedy continuation of left-padded token prompts (eot never chosen) until every prompt
    has produced EOS, or the limit (capped where the model's positions end). Returns the tokens
    (up to and including EOS) and whether each hit the limit first."""
    import torch

    from opcircuits.codi.latent import max_positions

    device = model.prj[1].weight.device
    width = max(map(len, prompts))
    limit = max_positions(model)
    if limit is not None:
        if width >= limit:
            raise OpcircuitsError(
                f"a prompt of {width} tokens leaves no room in the model's {limit} positions",
                field="question",
            )
        max_new_tokens = min(max_new_tokens, limit - width)
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
    outs, truncated = [], []
    for row in gen[:, width:].tolist():
        done = tokenizer.eos_token_id in row
        if done:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        outs.append(row)
        truncated.append(not done)
    return outs, truncated


def teacher_answers(
    model: Any, tokenizer: Any, questions: list[str], max_new_tokens: int
) -> tuple[list[str], list[bool]]:
    """The teacher task: question → explicit chain of thought and answer, greedy. Returns the
    texts and, per question, whether decoding hit the limit before EOS."""
    from opcircuits.codi.latent import decode_answer, prompt_ids

    prompts = [prompt_ids(model, tokenizer, q)[:-1] for q in questions]  # no bot
    ids, truncated = _greedy(model, tokenizer, prompts, max_new_tokens)
    return [decode_answer(model, tokenizer, a) for a in ids], truncated


def student_answers(
    model: Any,
    tokenizer: Any,
    questions: list[str],
    num_latent: int,
    max_new_tokens: int,
    keep_positions: bool = False,
) -> tuple[list[str], list[bool]]:
    """The student task: question, bot, K continuous thoughts, eot → answer, greedy.
    K = 0 is question, bot, eot → answer (no thoughts). Both go through the one latent loop, so
    the answer starts as training taught (`[eot]`, or `[eot, eos]` when EOS was kept). Returns the
    texts and, per question, whether decoding hit the limit before EOS."""
    from opcircuits.codi.latent import decode_answer, run_batch

    out = run_batch(
        model,
        tokenizer,
        questions,
        layers=[0],
        max_new_tokens=max_new_tokens,
        num_latent=num_latent,
        keep_positions=keep_positions,
    )
    return [decode_answer(model, tokenizer, a) for a in out.answer_ids], out.truncated


def _settings(
    options: EvaluateOptions, ks: list[int], model_k: int
) -> list[tuple[str, int | None, bool]]:
    """(name, K or None for the teacher, position-preserved) of every setting measured."""
    out: list[tuple[str, int | None, bool]] = [("teacher", None, False)] if options.teacher else []
    out += [(f"student_k{k}", k, False) for k in ks]
    if options.keep_positions:
        out += [(f"student_k{k}_kept", k, True) for k in ks if k < model_k]
    return out


# What every result `evaluate` writes holds: an existing --out without them is someone's file.
RESULT_KEYS = ("accuracy", "answers", "n_problems")


def check_out(out: Path, model: str, data: str | Path) -> None:
    """Before anything is read or computed: the result file may not be one of the inputs nor lie
    inside a folder the command reads (the checkpoint, its base, a problem folder), and an
    existing file there must be an earlier result (never a folder, nor anyone's other file)."""
    from opcircuits.codi.resolve import local_folders
    from opcircuits.files import (
        read_json_object,
        refuse_blocked_parent,
        refuse_inside_inputs,
        refuse_same_files,
    )

    out = Path(out)
    models = local_folders(model)
    data_path = Path(str(data)).expanduser()
    refuse_same_files({"--out": out}, {"--data": data_path, "--model": models})
    refuse_inside_inputs({"--out": out}, {"--model": models, "--data": data_path})
    if out.is_dir():
        raise OpcircuitsError("exists and is a folder; choose a file path", path=out, field="out")
    refuse_blocked_parent(out, field="out")
    if out.exists():
        try:
            previous = read_json_object(out)
        except OpcircuitsError:
            previous = {}
        if not all(k in previous for k in RESULT_KEYS):
            raise OpcircuitsError(
                "exists and is not an `opcircuits evaluate` result: nothing was changed; move it "
                "away or choose another output path",
                path=out,
                field="out",
            )


def evaluate(options: EvaluateOptions) -> dict[str, Any]:
    """Accuracy of a CODI model on GSM8K-style problems: the teacher (explicit CoT) and the
    student with each K in `num_latent`, each with its Wilson 95% CI (`ci95`), and for a
    released checkpoint the paper's figure (`paper`). Writes the result JSON (with every answer,
    and per setting how many answers hit the decoding limit) to `out`."""
    import torch

    from opcircuits.codi.checkpoint import load_codi
    from opcircuits.codi.latent import check_lengths, extract_number
    from opcircuits.codi.reproduce import add_intervals
    from opcircuits.files import write_json_atomic

    if options.out is not None:
        check_out(options.out, options.model, options.data)
    if options.threads:
        torch.set_num_threads(options.threads)
    problems = read_eval_problems(options.data)
    if options.limit:
        problems = problems[: options.limit]
    model, tokenizer = load_codi(options.model, device=options.device, dtype=options.dtype)
    ks = [int(k) for k in options.num_latent]
    questions = [p["question"] for p in problems]
    ids = [p["id"] for p in problems]
    settings = _settings(options, ks, model.config.num_latent)
    # the largest K (or the model's, for position-preserved ones) needs the most positions
    widest = max(
        [k if not keep else model.config.num_latent for _, k, keep in settings if k is not None],
        default=0,
    )
    check_lengths(model, tokenizer, questions, ids, num_latent=widest)
    result: dict[str, Any] = {
        "model": options.model,
        "dtype": str(model.prj[1].weight.dtype).removeprefix("torch."),
        "device": str(model.prj[1].weight.device),
        "data": str(options.data),
        "n_problems": len(problems),
        "accuracy": {},
        "truncated": {},
        "seconds": {},
        "answers": {},
    }
    marks: dict[str, list[bool]] = {}
    for name, k, keep in settings:
        t0 = time.time()
        texts: list[str] = []
        cut: list[bool] = []
        for i in range(0, len(problems), options.batch_size):
            qs = questions[i : i + options.batch_size]
            if k is None:
                t, c = teacher_answers(model, tokenizer, qs, options.max_cot_tokens)
            else:
                t, c = student_answers(model, tokenizer, qs, k, options.max_new_tokens, keep)
            texts += t
            cut += c
        marks[name] = [
            (pred := extract_number(text)) is not None
            and math.isclose(pred, p["final_value"], abs_tol=1e-6)
            for p, text in zip(problems, texts, strict=True)
        ]
        correct = sum(marks[name])
        result["accuracy"][name] = correct / len(problems)
        result["truncated"][name] = sum(cut)
        result["seconds"][name] = round(time.time() - t0, 1)
        result["answers"][name] = texts
        log.info(
            "%s: %d/%d correct (%.1f%%), %d hit the decoding limit, in %.0fs",
            name,
            correct,
            len(problems),
            100 * correct / len(problems),
            sum(cut),
            time.time() - t0,
        )
    result["ids"] = ids
    result["by"] = accuracy_by_group(problems, marks)
    add_intervals(result, options.model, model.config.num_latent, marks)
    if options.out is not None:
        write_json_atomic(options.out, result)
    return result


def record_reference(
    model_dir: str | Path,
    data: str | Path,
    n: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> Path:
    """Record the student's (K from the model's config) decoded answers on the first `n` test
    problems into `model_dir/reference_answers.json`, so a test can check that the shipped
    weights load strictly and reproduce them."""
    from opcircuits.codi.checkpoint import load_codi
    from opcircuits.codi.latent import extract_number
    from opcircuits.files import write_json_atomic

    model, tokenizer = load_codi(str(model_dir), device="cpu")
    problems = read_eval_problems(data)[:n]
    k = model.config.num_latent
    texts, _ = student_answers(
        model, tokenizer, [p["question"] for p in problems], k, max_new_tokens
    )
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
                    "gold": float(p["final_value"]),
                    "answer_text": t,
                    "predicted": extract_number(t),
                }
                for p, t in zip(problems, texts, strict=True)
            ],
        },
    )
    return out
