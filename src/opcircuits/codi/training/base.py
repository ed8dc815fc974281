"""A small base model to train CODI on from scratch (`opcircuits new-base`; how the shipped demo's
base was made): a byte-level BPE tokenizer trained on GSM8K train text (digits split one per
token, so numbers are spelled digit by digit) and a small LLaMA-architecture config.

`build_demo_base(options)` writes `config.json` + tokenizer files (no weights): a base that
`opcircuits train --base DIR --from-scratch` initializes randomly and trains fully (lora_r = 0).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from opcircuits.codi.training.examples import read_train_problems
from opcircuits.options import NewBaseOptions

log = logging.getLogger(__name__)

BOS, EOS = "<s>", "</s>"


def train_tokenizer(texts: list[str], vocab_size: int, split_digits: bool = True) -> Any:
    """A byte-level BPE (GPT-2 style, no unknown tokens) with BOS added in front of every text
    (as LLaMA's tokenizer does) and digits split individually, unless `split_digits` is False:
    then a number frequent enough in `texts` becomes one token (demo-arith: each of 1..50)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    digits = [pre_tokenizers.Digits(individual_digits=True)] if split_digits else []
    tok.pre_tokenizer = pre_tokenizers.Sequence([*digits, byte_level])
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


def build_demo_base(options: NewBaseOptions) -> Path:
    """Write the demo base (tokenizer + LLaMA config, no weights) into `options.out`."""
    from transformers import LlamaConfig

    from opcircuits.files import atomic_dir, check_replaceable, refuse_same_files

    out = Path(options.out)
    data = None if options.data == "hf" else options.data
    refuse_same_files({"out": out}, {"--data": data})
    check_replaceable(out)  # before training the tokenizer
    examples = read_train_problems(options.data)
    texts = [t for ex in examples for t in (ex.question, ex.cot, ex.answer) if t]
    tokenizer = train_tokenizer(texts, options.vocab_size, options.split_digits)
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
    with atomic_dir(out) as scratch:  # a half-written base never replaces a whole one
        config.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
    log.info(
        "demo base: vocab %d, %d layers × %d, written to %s",
        vocab,
        options.num_layers,
        options.hidden_size,
        out,
    )
    return out
