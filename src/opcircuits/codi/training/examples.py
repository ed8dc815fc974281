"""Training problems (GSM8K or GSM8k-Aug rows) → CODI teacher/student training examples.

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
it works for any base tokenizer. A record without such a token, without a final answer, or too
long is left out and counted per reason (`DROP_REASONS`); the caller reports the counts.

The prompt and answer format itself (question normalization, where EOS, bot and eot go, the
answer prefix) is `codi.prompt`'s, shared with inference; the raw rows come from
`data.io.read_problem_rows`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opcircuits.codi.prompt import (
    ANSWER_PREFIX,  # noqa: F401  (re-exported: the answer format's name here before codi.prompt)
    NoAnswerToken,
    answer_start,
    answer_text,
    encoder_ids,
    format_question,
    text_ids,
    value_token_index,
)
from opcircuits.data.io import read_problem_rows
from opcircuits.data.numbers import is_number, remove_commas
from opcircuits.errors import OpcircuitsError

IGNORE = -100
_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
_RESULT = re.compile(r"=([^<>=]*)>>\s*$")


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
    # Step supervision: per thought k = 1…K the id thought k's LM head is trained to give (step
    # k's result; the final result after the last step), IGNORE where it is not one token.
    step_ids: tuple[int, ...] = ()


# Why a record is left out of training (counted and reported, never silently).
NO_FINAL_ANSWER = "no_final_answer"  # GSM8K: no `#### N`; GSM8k-Aug: `answer` is not a number
NO_ANSWER_TOKEN = "no_answer_token"  # no token of the tokenized answer covers the value
TOO_LONG = "too_long"  # teacher sequence longer than max_tokens
DROP_REASONS = (NO_FINAL_ANSWER, NO_ANSWER_TOKEN, TOO_LONG)


@dataclass
class TrainData:
    """Training problems of one source and what was left out of it, and why."""

    source: str
    split: str
    examples: list[TextExample]
    rows: int  # rows of `split` read
    other_splits: int = 0  # rows of other splits skipped (problem files with a `split` field)
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))


def format_problem(pid: str, question: str, solution: str) -> TextExample | None:
    """Turn one GSM8K record (original `answer` field with `#### N`) into a CODI example.

    Returns None for records without a final answer.
    """
    if "####" not in solution:
        return None
    final = remove_commas(solution.split("####")[-1].strip())
    if not is_number(final):
        return None
    steps = tuple(f"<<{e.strip()}={r.strip()}>>" for e, r in _ANNOTATION.findall(solution))
    return TextExample(
        id=pid, question=format_question(question), steps=steps, answer=answer_text(final)
    )


def format_aug_problem(pid: str, question: str, cot: str, answer: str) -> TextExample | None:
    """One GSM8k-Aug record (`cot` = calculator steps separated by spaces, `answer` = the value)
    as a CODI example, read as the official training does: the steps are `cot` split on spaces
    and the value is the last word of `answer`, with `####` and commas removed. None if that is
    not a number."""
    words = answer.replace("####", " ").split()
    final = remove_commas(words[-1]) if words else ""
    if not is_number(final):
        return None
    return TextExample(
        id=pid,
        question=format_question(question),
        steps=tuple(cot.split()),
        answer=answer_text(final),
    )


def read_train_data(source: str | Path, split: str = "train") -> TrainData:
    """Training problems as CODI examples, from GSM8K (`question`, `answer` with the solution and
    `#### N`) or GSM8k-Aug (`question`, `cot`, `answer`) rows; records without a usable final
    answer are counted in `dropped`."""
    rows, other = read_problem_rows(source, split)
    data = TrainData(
        source=str(source), split=split, examples=[], rows=len(rows), other_splits=other
    )
    for i, (where, line, row) in enumerate(rows):
        aug = "cot" in row  # GSM8k-Aug: the steps in `cot`, the bare value in `answer`
        for name in ("question", "cot", "answer") if aug else ("question", "answer"):
            value = row.get(name)
            numeric = aug and name == "answer" and isinstance(value, (int, float))
            if not isinstance(value, str) and not numeric:
                raise OpcircuitsError("missing or not a string", path=where, line=line, field=name)
        pid = str(row.get("id", f"{split}_{i}"))
        if aug:
            ex = format_aug_problem(pid, row["question"], row["cot"], str(row["answer"]))
        else:
            ex = format_problem(pid, row["question"], row["answer"])
        if ex is None:
            data.dropped[NO_FINAL_ANSWER] += 1
        else:
            data.examples.append(ex)
    if not data.examples:
        raise OpcircuitsError(
            "no usable training problems (none has a final answer)", path=str(source)
        )
    return data


def read_train_problems(source: str | Path) -> list[TextExample]:
    """The usable training problems of a source (see `read_train_data`)."""
    return read_train_data(source).examples


def tokenize_example(
    ex: TextExample,
    tokenizer: Any,
    bot_id: int,
    eot_id: int,
    remove_eos: bool = True,
    include_last_cot: bool = False,
    num_steps: int = 0,
) -> TokenExample:
    """Token ids of both tasks. With `remove_eos` False an EOS separates question and thoughts
    (CODI's option for bases trained that way); the released checkpoints use True. With
    `num_steps` = K > 0 also the step-supervision targets (`step_targets`)."""
    bos = [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []
    eos = tokenizer.eos_token_id
    q, _ = text_ids(tokenizer, ex.question)
    cot_text = teacher_cot(ex, include_last_cot)
    cot, _ = text_ids(tokenizer, cot_text) if cot_text else ([], [])
    ans, vi = value_token_index(tokenizer, ex.answer)
    sep = [] if remove_eos else [eos]
    prefix = bos + q + sep
    teacher = prefix + cot + sep + ans + [eos]
    labels = [IGNORE] * len(prefix) + teacher[len(prefix) :]
    start = answer_start(eot_id, eos, remove_eos)
    decoder = start + ans + [eos]
    first_ans_teacher = len(prefix) + len(cot) + len(sep)
    first_ans_decoder = len(start)
    return TokenExample(
        id=ex.id,
        encoder_ids=encoder_ids(bos + q, bot_id, eos, remove_eos),
        decoder_ids=decoder,
        teacher_ids=teacher,
        teacher_labels=labels,
        teacher_pos=first_ans_teacher + vi - 1,
        student_pos=first_ans_decoder + vi - 1,
        step_ids=step_targets(ex, tokenizer, num_steps) if num_steps else (),
    )


def step_targets(ex: TextExample, tokenizer: Any, num_latent: int) -> tuple[int, ...]:
    """The id each of K thoughts is trained to decode: step k's result for k ≤ the number of
    steps, the last step's result after it; IGNORE where a result is not exactly one token (its
    value token as in `The answer is: N`) or a step has no `=result`."""
    values = []
    for step in ex.steps:
        m = _RESULT.search(step)
        values.append(remove_commas(m.group(1).strip()) if m else None)
    out = []
    for k in range(num_latent):
        value = values[min(k, len(values) - 1)] if values else None
        out.append(_single_token(tokenizer, value) if value and is_number(value) else IGNORE)
    return tuple(out)


def _single_token(tokenizer: Any, value: str) -> int:
    """The id of `value` in an answer when it is exactly one token, else IGNORE."""
    try:
        ids, i = value_token_index(tokenizer, answer_text(value))
    except NoAnswerToken:
        return IGNORE
    return ids[i] if i == len(ids) - 1 else IGNORE


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
    num_steps: int = 0,
) -> tuple[list[TokenExample], dict[str, int]]:
    """Tokenize all examples. Those with no token covering the answer value, or whose teacher
    sequence exceeds `max_tokens`, are left out and counted per reason (`dropped`)."""
    out = []
    dropped = {NO_ANSWER_TOKEN: 0, TOO_LONG: 0}
    for ex in examples:
        try:
            tex = tokenize_example(
                ex, tokenizer, bot_id, eot_id, remove_eos, include_last_cot, num_steps
            )
        except NoAnswerToken:
            dropped[NO_ANSWER_TOKEN] += 1
            continue
        if len(tex.teacher_ids) > max_tokens:
            dropped[TOO_LONG] += 1
            continue
        out.append(tex)
    if not out:
        raise OpcircuitsError(
            f"no example left to train on of {len(examples)} ({dropped[NO_ANSWER_TOKEN]} without "
            f"an answer-value token, {dropped[TOO_LONG]} longer than max_tokens={max_tokens})",
            field="max_tokens",
        )
    return out, dropped
