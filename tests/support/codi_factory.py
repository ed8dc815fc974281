"""Tiny random CODI checkpoints in exactly the released layout, for tests and benchmarks.

A released CODI checkpoint is a dir with one weights file (`model.safetensors` or
`pytorch_model.bin`) holding the whole module's state dict; the base model's dir supplies
`config.json` and the tokenizer. Beside the weights, `codi_config.json` states what the weights
cannot tell (K, `remove_eos`, LoRA alpha: the loader requires them for a checkpoint that is not a
preset) and nothing else, so the base is still passed separately as for a released one. Here the
base is a tiny LLaMA or GPT-2 built from a transformers config and a byte-level BPE tokenizer
trained on the given texts with `tokenizers`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from opcircuits.codi.config import CodiConfig
from opcircuits.codi.model import CodiModel, unique_state_dict

BOS, EOS = "<s>", "</s>"


@dataclass
class TinyCodi:
    arch: str
    checkpoint: Path  # dir with the weights file only (as released)
    base: Path  # dir with config.json + tokenizer (+ pretrained weights when `partial`)
    config: CodiConfig
    vocab_size: int  # V, before the three CODI ids


def train_tokenizer(texts: list[str], *, vocab_size: int = 384, add_bos: bool = True):
    """A byte-level BPE tokenizer (GPT-2 style) trained on `texts`, as a PreTrainedTokenizerFast.

    LLaMA-like tokenizers prepend BOS; GPT-2-like ones add nothing."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A",
            pair=f"{BOS} $A {BOS} $B",
            special_tokens=[(BOS, tok.token_to_id(BOS))],
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS)


def base_config(arch: str, vocab_size: int, bos_id: int, eos_id: int, *, layers: int = 4):
    from transformers import GPT2Config, LlamaConfig

    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=64,
            n_layer=layers,
            n_head=4,
            n_positions=1024,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
        )
    raise ValueError(arch)


def write_tiny_base(directory: Path, arch: str, texts: list[str], *, layers: int = 2) -> Path:
    """A base folder as `opcircuits train --from-scratch --base DIR` reads it: `config.json` and
    the tokenizer, no weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, add_bos=arch == "llama")
    cfg = base_config(
        arch, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, layers=layers
    )
    tokenizer.save_pretrained(directory)
    cfg.save_pretrained(directory)
    return directory


def build_tiny_codi(
    root: Path,
    arch: str,
    texts: list[str],
    *,
    lora_r: int = 4,
    prj_dim: int = 48,
    num_latent: int = 6,
    fmt: str = "safetensors",
    partial: bool = False,
    seed: int = 0,
    init_std: float = 0.05,
    routing: dict | None = None,
) -> TinyCodi:
    """Write `root/base` and `root/checkpoint` for a random tiny CODI model.

    LoRA B matrices are random (not peft's zeros) so LoRA really changes the outputs. With
    `partial`, the base dir also holds pretrained weights and the checkpoint omits every base
    weight except the (resized) embeddings, so the loader must fill them from the base.
    `routing` sets the config's routing options (`answer_reads_prompt`, …), declared in
    codi_config.json as a trained organism's are."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    root = Path(root)
    base_dir, ckpt_dir = root / "base", root / "checkpoint"
    base_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, add_bos=arch == "llama")
    vocab = len(tokenizer)
    cfg = base_config(arch, vocab, tokenizer.bos_token_id, tokenizer.eos_token_id)
    base = AutoModelForCausalLM.from_config(cfg)
    # Larger weights than the default init (0.02), so hidden states and greedy tokens vary.
    with torch.no_grad():
        for p in base.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, init_std)
    tokenizer.save_pretrained(base_dir)
    if partial:
        base.save_pretrained(base_dir)
    else:
        cfg.save_pretrained(base_dir)
    routing = dict(routing or {})
    config = CodiConfig(
        base=str(base_dir),
        num_latent=num_latent,
        prj_dim=prj_dim,
        lora_r=lora_r,
        lora_alpha=32,
        **routing,
    )
    model = CodiModel.from_base(config, base, mean_resizing=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.normal_(0.0, 0.05)
    state = model.state_dict()
    if partial:
        state = {
            k: v
            for k, v in state.items()
            if ".lora_" in k or k.startswith("prj.") or "embed" in k or "wte" in k
        }
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(unique_state_dict(state), str(ckpt_dir / "model.safetensors"))
    elif fmt == "bin":
        torch.save(state, ckpt_dir / "pytorch_model.bin")  # keeps both tied names, as released
    else:
        raise ValueError(fmt)
    undeclared = {"num_latent": num_latent, "remove_eos": True, "lora_alpha": 32, **routing}
    (ckpt_dir / "codi_config.json").write_text(json.dumps(undeclared))
    return TinyCodi(arch, ckpt_dir, base_dir, config, vocab)


def sample_texts(gsm8k_dir: Path, n: int = 300) -> list[str]:
    """Questions and answers from GSM8K's train split (tokenizer training data)."""
    out = []
    with open(Path(gsm8k_dir) / "train.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            out += [row["question"], row["answer"]]
            if len(out) >= n:
                break
    return out
