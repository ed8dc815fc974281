"""GSM8K train problems → CODI teacher/student training examples (the format CODI was trained on).

Teacher sequence: question, chain of thought (the calculator annotations `<<16-3-4=9>> <<9*2=18>>`)
without its last step, answer (`The answer is: 18`), EOS — cross-entropy on everything after the
question. Dropping the last step is what the official training does (`include_last_cot=False` in
every released script): the last step usually states the final result, so with it the teacher
would copy a number it has just written instead of computing it at the distillation token; a
one-step problem then has an empty chain of thought.
Student sequences: question + bot (encoder), then after the K latent steps: eot, answer, EOS
(decoder) — cross-entropy on the answer. Each piece is tokenized on its own and the ids are
concatenated, so the question tokens are identical in both tasks and at inference.

The distillation position is the token whose next-token prediction is the answer value's first
token (the space/colon after "The answer is:"), found from the tokenizer's character offsets so
it works for any base tokenizer.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opcircuits.data.gsm8k import read_jsonl_objects
from opcircuits.errors import OpcircuitsError

log = logging.getLogger(__name__)

IGNORE = -100
ANSWER_PREFIX = "The answer is: "
_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")


@dataclass(frozen=True)
class TextExample:
    """One training problem as text: question, every chain-of-thought step, answer."""

    id: str
    question: str
    steps: tuple[str, ...]  # calculator steps in order, e.g. ("<<48/2=24>>", "<<48+24=72>>")
    answer: str  # "The answer is: 18"

    @property
    def cot(self) -> str:
        """The whole chain of thought as written (every step)."""
        return " ".join(self.steps)


def teacher_cot(ex: TextExample, include_last_cot: bool = False) -> str:
    """The chain of thought the teacher is trained on: every step but the last (official CODI),
    or all of them with `include_last_cot`."""
    steps = ex.steps if include_last_cot else ex.steps[:-1]
    return " ".join(steps)


@dataclass(frozen=True)
class TokenExample:
    """One training problem as token ids (no padding yet)."""

    id: str
    encoder_ids: list[int]  # [BOS] question bot
    decoder_ids: list[int]  # eot answer EOS
    teacher_ids: list[int]  # [BOS] question cot answer EOS
    teacher_labels: list[int]  # IGNORE on the question
    teacher_pos: int  # index in teacher_ids whose logits predict the answer value's first token
    student_pos: int  # the same position in decoder_ids


def clean_question(question: str) -> str:
    """The prompt normalisation used at inference (contract): strip, then '  ' → ' '."""
    return question.strip().replace("  ", " ")


def format_problem(pid: str, question: str, solution: str) -> TextExample | None:
    """Turn one GSM8K record (original `answer` field with `#### N`) into a CODI example.

    Returns None for records without a final answer.
    """
    if "####" not in solution:
        return None
    final = solution.split("####")[-1].strip().replace(",", "")
    if not final:
        return None
    steps = tuple(f"<<{e.strip()}={r.strip()}>>" for e, r in _ANNOTATION.findall(solution))
    return TextExample(
        id=pid, question=clean_question(question), steps=steps, answer=ANSWER_PREFIX + final
    )


def read_train_problems(source: str | Path) -> list[TextExample]:
    """GSM8K train as CODI examples: a local JSONL (original release or problem records with
    `question` and `answer` fields), or "hf" for the hub's `openai/gsm8k` train split."""
    rows: list[dict[str, Any]]
    if str(source) == "hf":
        import datasets  # only on the hub path; local files need no network

        rows = [dict(r) for r in datasets.load_dataset("openai/gsm8k", "main", split="train")]
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "train.jsonl"
        if not path.is_file():
            raise OpcircuitsError(
                "training data not found (a GSM8K train.jsonl or 'hf')", path=path
            )
        rows = []
        for lineno, row in read_jsonl_objects(path):
            for field in ("question", "answer"):
                if not isinstance(row.get(field), str):
                    raise OpcircuitsError(
                        "missing or not a string", path=path, line=lineno, field=field
                    )
            rows.append(row)
    out = []
    for i, row in enumerate(rows):
        ex = format_problem(str(row.get("id", f"train_{i}")), row["question"], row["answer"])
        if ex is not None:
            out.append(ex)
    if not out:
        raise OpcircuitsError("no usable training problems", path=str(source))
    return out


def _ids(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of `text`, without special tokens."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _value_token_index(tokenizer: Any, answer: str) -> tuple[list[int], int]:
    """Answer ids and the index of the first token that covers the answer value."""
    ids, offsets = _ids(tokenizer, answer)
    start = len(ANSWER_PREFIX.rstrip()) if answer.startswith(ANSWER_PREFIX) else 0
    # first character of the value itself (skip the space after the colon)
    while start < len(answer) and answer[start] == " ":
        start += 1
    for i, (a, b) in enumerate(offsets):
        if b > start and answer[max(a, start) : b].strip():
            return ids, i
    return ids, len(ids) - 1


def tokenize_example(
    ex: TextExample,
    tokenizer: Any,
    bot_id: int,
    eot_id: int,
    remove_eos: bool = True,
    include_last_cot: bool = False,
) -> TokenExample:
    """Token ids of both tasks. With `remove_eos` False an EOS separates question and thoughts
    (CODI's option for bases trained that way); the released checkpoints use True."""
    bos = [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []
    eos = tokenizer.eos_token_id
    q, _ = _ids(tokenizer, ex.question)
    cot_text = teacher_cot(ex, include_last_cot)
    cot, _ = _ids(tokenizer, cot_text) if cot_text else ([], [])
    ans, vi = _value_token_index(tokenizer, ex.answer)
    sep = [] if remove_eos else [eos]
    prefix = bos + q + sep
    teacher = prefix + cot + sep + ans + [eos]
    labels = [IGNORE] * len(prefix) + teacher[len(prefix) :]
    decoder = [eot_id] + sep + ans + [eos]
    first_ans_teacher = len(prefix) + len(cot) + len(sep)
    first_ans_decoder = 1 + len(sep)
    return TokenExample(
        id=ex.id,
        encoder_ids=prefix + [bot_id],
        decoder_ids=decoder,
        teacher_ids=teacher,
        teacher_labels=labels,
        teacher_pos=first_ans_teacher + vi - 1,
        student_pos=first_ans_decoder + vi - 1,
    )


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front of a text (as LLaMA's does; GPT-2's does not)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def build_examples(
    examples: list[TextExample],
    tokenizer: Any,
    bot_id: int,
    eot_id: int,
    max_tokens: int,
    remove_eos: bool = True,
    include_last_cot: bool = False,
) -> list[TokenExample]:
    """Tokenize all examples; drop those whose teacher sequence exceeds `max_tokens`."""
    out = []
    for ex in examples:
        tex = tokenize_example(ex, tokenizer, bot_id, eot_id, remove_eos, include_last_cot)
        if len(tex.teacher_ids) <= max_tokens:
            out.append(tex)
    dropped = len(examples) - len(out)
    if dropped:
        log.info(
            "dropped %d of %d examples longer than %d tokens", dropped, len(examples), max_tokens
        )
    if not out:
        raise OpcircuitsError(
            f"every example is longer than max_tokens={max_tokens}", field="max_tokens"
        )
    return out
