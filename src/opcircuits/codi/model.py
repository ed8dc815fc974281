"""The CODI module: a causal LM with three extra ids (pad, bot, eot), optional LoRA, and the
projection that turns a final hidden state into the next continuous thought.

Attribute names (`codi`, `prj`, `prj.ln`) are chosen so that `state_dict()` keys equal the released
checkpoints' keys (`codi.base_model.model.…`, `prj.1.weight`, `prj.ln.weight`, …).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

from opcircuits.codi.config import CodiConfig, lora_targets_for
from opcircuits.errors import OpcircuitsError

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"


def build_projection(hidden_size: int, config: CodiConfig) -> nn.Sequential:
    """Dropout → Linear(d, prj_dim) → GELU → Linear(prj_dim, d) [→ LayerNorm(d) as `ln`]."""
    prj = nn.Sequential(
        nn.Dropout(config.prj_dropout),
        nn.Linear(hidden_size, config.prj_dim),
        nn.GELU(),
        nn.Linear(config.prj_dim, hidden_size),
    )
    if not config.prj_no_ln:
        prj.add_module("ln", nn.LayerNorm(hidden_size))
    return prj


def lora_config_for(config: CodiConfig, model_type: str):
    """The peft LoraConfig of a CODI module (targets default to the released ones)."""
    from peft import LoraConfig, TaskType

    targets = config.lora_targets or lora_targets_for(model_type)
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        # GPT-2's Conv1D stores weights transposed.
        fan_in_fan_out=model_type == "gpt2",
        init_lora_weights=True,
    )


class CodiModel(nn.Module):
    """A CODI model. Build one with `from_base`; load a checkpoint with
    `codi.checkpoint.load_codi` (which also returns the tokenizer).

    `codi` is the base LM (peft-wrapped when `config.lora_r > 0`, plain after `merge_lora`), `prj`
    the projection. `pad_id, bot_id, eot_id = V, V+1, V+2` where V is the base vocabulary size.
    """

    def __init__(self, config: CodiConfig, codi: nn.Module, prj: nn.Module, base_vocab_size: int):
        super().__init__()
        self.config = config
        self.codi = codi
        self.prj = prj
        self.base_vocab_size = base_vocab_size
        self.pad_id = base_vocab_size
        self.bot_id = base_vocab_size + 1
        self.eot_id = base_vocab_size + 2
        self.merged = False
        # thought_input = "constant": every thought's input is this one learned vector (the
        # negative twin of an organism: its thoughts carry positions, no content).
        self.thought_constant: nn.Parameter | None = None
        if config.thought_input == "constant":
            width = prj[1].in_features
            weight = prj[1].weight
            self.thought_constant = nn.Parameter(
                torch.randn(width, generator=torch.Generator().manual_seed(0)).to(
                    device=weight.device, dtype=weight.dtype
                )
            )

    @classmethod
    def from_base(
        cls, config: CodiConfig, base_model: nn.Module, *, mean_resizing: bool = True
    ) -> CodiModel:
        """Wrap a transformers causal LM: resize to V+3 ids (tied head stays tied), add LoRA when
        `config.lora_r > 0`, and a projection in the base's dtype. `base_model` is modified."""
        base_config = base_model.config
        vocab = int(base_config.vocab_size)
        base_model.resize_token_embeddings(vocab + 3, mean_resizing=mean_resizing)
        codi: nn.Module = base_model
        if config.lora_r > 0:
            from peft import get_peft_model

            codi = get_peft_model(base_model, lora_config_for(config, base_config.model_type))
        dtype = base_model.get_input_embeddings().weight.dtype
        device = base_model.get_input_embeddings().weight.device
        prj = build_projection(int(base_config.hidden_size), config).to(device=device, dtype=dtype)
        return cls(config, codi, prj, vocab)

    # --- parts ----------------------------------------------------------------------------
    @property
    def lm(self) -> nn.Module:
        """The transformers model that runs (LoRA layers injected, if any), minus peft's wrapper."""
        if hasattr(self.codi, "get_base_model"):
            return self.codi.get_base_model()
        return self.codi

    @property
    def hidden_size(self) -> int:
        return int(self.lm.config.hidden_size)

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks (HF `hidden_states` has num_layers + 1 entries)."""
        return int(self.lm.config.num_hidden_layers)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids ([...]) → [..., d]."""
        return self.lm.get_input_embeddings()(ids)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden state(s) [..., d] → the next latent's input embedding [..., d] (the
        learned constant, whatever `hidden` is, with `thought_input = "constant"`)."""
        if self.thought_constant is not None:
            # a copy, never a view of the parameter: interventions edit thought inputs in place
            return self.thought_constant.to(hidden.dtype).expand(hidden.shape).clone()
        return self.prj(hidden)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of final hidden states (the logit lens)."""
        return self.lm.get_output_embeddings()(hidden)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The backbone's last normalization (LLaMA `norm`, GPT-2 `ln_f`): what the logit lens
        applies to an intermediate layer's state before the head (HF's last hidden state has it)."""
        base = self.lm.base_model
        for name in ("norm", "ln_f"):
            norm = getattr(base, name, None)
            if isinstance(norm, nn.Module):
                return norm(hidden)
        raise OpcircuitsError(
            f"{type(base).__name__} has no final norm (norm or ln_f): no per-layer logit lens"
        )

    def merge_lora(self) -> CodiModel:
        """Fold LoRA into the base weights for faster inference (no-op without LoRA)."""
        if self.config.lora_r > 0 and not self.merged:
            self.codi = self.codi.merge_and_unload()
            self.merged = True
        return self

    # --- saving -----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, tokenizer=None) -> Path:
        """Write `model.safetensors` (the whole module's state dict, released key names) and
        `codi_config.json`; also the tokenizer when given, and the base's `config.json` (with the
        original vocabulary size V) when `config.base == "."` (a self-contained checkpoint)."""
        from safetensors.torch import save_file

        from opcircuits.files import atomic_path

        if self.merged:
            raise OpcircuitsError("cannot save a model whose LoRA was merged; save before merging")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = unique_state_dict(self.state_dict())
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        self.config.save(directory)
        if self.config.base == ".":
            base_config = copy.deepcopy(self.lm.config)
            base_config.vocab_size = self.base_vocab_size
            base_config.save_pretrained(directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        return directory


def cache_arg_name(module: nn.Module) -> str:
    """The KV-cache argument of a transformers model's forward: transformers 5.x renamed
    `past_key_values` to `cache`."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


# --- tied weights ---------------------------------------------------------------------------
# The one rule for shared weights (an LM head tied to the input embedding): two state-dict entries
# are the same weight when they view the same storage at the same offset with the same shape.
# Saving keeps one key per weight, loading accepts any of them, and CODI's own rows are found so.


def weight_identity(tensor: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    """What makes two tensors one weight: storage, offset and shape."""
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))


def alias_groups(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """Keys of a state dict grouped by the weight they hold (tied embeddings share a group), in
    the order of each group's first key; an empty tensor is a group of its own."""
    groups: dict[tuple, list[str]] = {}
    for key, tensor in state.items():
        ident = weight_identity(tensor) if tensor.numel() else (key,)
        groups.setdefault(ident, []).append(key)
    return list(groups.values())


def unique_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop later aliases of shared tensors (tied embeddings) — safetensors refuses to store them
    twice — and make every tensor contiguous. The loader accepts either alias."""
    return {group[0]: state[group[0]].detach().contiguous() for group in alias_groups(state)}
