"""CODI's prompt and answer format, in one place for training, inference and interventions.

Encoder (the prompt): the question (stripped, `'  '` → `' '`), tokenized on its own with BOS if
the tokenizer adds one, then EOS for checkpoints trained without `remove_eos`, then bot.
Decoder (after the K thoughts): eot, then EOS without `remove_eos`, then the answer
`The answer is: N` and EOS. The answer's value is read from decoded text as the last number in it
(`data.numbers`: commas removed, `.5` = 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from opcircuits.data.numbers import last_number

if TYPE_CHECKING:
    from opcircuits.codi.model import CodiModel

ANSWER_PREFIX = "The answer is: "


class NoAnswerToken(ValueError):
    """The tokenized answer has no token covering the answer value (no distillation target)."""


def format_question(question: str) -> str:
    """CODI's prompt text: stripped, each pair of spaces replaced by one (str.replace semantics)."""
    return question.strip().replace("  ", " ")


def answer_text(final: str) -> str:
    """The answer as CODI is trained to write it: `The answer is: N`."""
    return ANSWER_PREFIX + final


def encoder_ids(question: Sequence[int], bot_id: int, eos_id: int, remove_eos: bool) -> list[int]:
    """The prompt from the question's ids ([BOS] question): EOS unless `remove_eos`, then bot."""
    return list(question) + ([] if remove_eos else [eos_id]) + [bot_id]


def answer_start(eot_id: int, eos_id: int, remove_eos: bool) -> list[int]:
    """What follows the thoughts before the answer: eot, then EOS unless `remove_eos`."""
    return [eot_id] if remove_eos else [eot_id, eos_id]


def prompt_ids(model: CodiModel, tokenizer, question: str) -> list[int]:
    """Token ids of one prompt: the tokenized question (BOS if the tokenizer adds one), then bot
    (EOS before bot only for checkpoints trained without `remove_eos`)."""
    ids = tokenizer(format_question(question))["input_ids"]
    return encoder_ids(ids, model.bot_id, int(tokenizer.eos_token_id), model.config.remove_eos)


def answer_start_ids(model: CodiModel, tokenizer) -> list[int]:
    """What is fed after the thoughts, before the answer is decoded: eot, then EOS for checkpoints
    trained without `remove_eos` (their decoder input is `[eot, eos, answer…]`, as in the
    official `test.py`; fed only eot, such a model predicts EOS first and answers nothing)."""
    return answer_start(model.eot_id, int(tokenizer.eos_token_id), model.config.remove_eos)


def text_ids(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of `text`, without special tokens."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def value_token_index(tokenizer: Any, answer: str) -> tuple[list[int], int]:
    """Answer ids and the index of the first token that covers the answer value (NoAnswerToken
    when none does)."""
    ids, offsets = text_ids(tokenizer, answer)
    start = len(ANSWER_PREFIX.rstrip()) if answer.startswith(ANSWER_PREFIX) else 0
    # first character of the value itself (skip the space after the colon)
    while start < len(answer) and answer[start] == " ":
        start += 1
    for i, (a, b) in enumerate(offsets):
        if b > start and answer[max(a, start) : b].strip():
            return ids, i
    raise NoAnswerToken(f"no token of {answer!r} covers its value")


def gold_answer_ids(
    tokenizer: Any, final: str, eot_id: int, remove_eos: bool
) -> tuple[list[int], int]:
    """The decoder ids of a gold answer (answer start, `The answer is: N`, EOS) and the index
    whose logits predict the value's first token (where a teacher-forced score starts)."""
    eos = tokenizer.eos_token_id
    ans, vi = value_token_index(tokenizer, answer_text(final))
    start = answer_start(eot_id, eos, remove_eos)
    return start + ans + [eos], len(start) + vi - 1


def decode_answer(model: CodiModel, tokenizer, ids: Sequence[int]) -> str:
    """Answer text without special tokens (ids >= V are CODI's own and have no text)."""
    return tokenizer.decode([i for i in ids if i < model.base_vocab_size], skip_special_tokens=True)


def extract_number(text: str) -> float | None:
    """The last number in a decoded answer, commas removed (None when there is none)."""
    return last_number(text)
