"""`opcircuits train --recipe`: the official CODI settings, pinned to the official scripts'
numbers, and explicit options overriding them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from opcircuits.errors import OpcircuitsError
from opcircuits.options import TRAIN_RECIPES, TrainOptions

# Facts copied from the official repository (github.com/zhenyi4/codi). The flags of
# scripts/train_gpt2_gsm8k-aug.sh: --model_name_or_path gpt2 --data_name icot (zen-E/GSM8k-Aug)
# --seed 11 --per_device_train_batch_size 64 --gradient_accumulation_steps 2 --bf16
# --num_train_epochs 40 --learning_rate 3e-3 --max_grad_norm 2.0 --lora_r 128 --lora_alpha 32
# --weight_decay 0.1 --warmup_ratio 0.03 --num_latent 6 --prj_dim 768 --prj_dropout 0.0
# --remove_eos True; it sets no --distill_loss_factor and no --max_token_num, so train.py's
# defaults apply: distill_loss_factor 1.0 and max_token_num 1000 (src/model.py
# TrainingArguments), as do distill_loss_type "smooth_l1", ref_loss_factor 1.0,
# include_last_cot False and prj_no_ln False.
OFFICIAL_GPT2 = {
    "base": "gpt2",
    "data": "zen-E/GSM8k-Aug",
    "seed": 11,
    "batch_size": 64,
    "grad_accum": 2,
    "mixed_precision": "bf16",
    "epochs": 40,
    "lr": 3e-3,
    "max_grad_norm": 2.0,
    "lora_r": 128,
    "lora_alpha": 32,
    "weight_decay": 0.1,
    "warmup_ratio": 0.03,
    "num_latent": 6,
    "prj_dim": 768,
    "prj_dropout": 0.0,
    "remove_eos": True,
    "distill_factor": 1.0,
    "max_tokens": 1000,
    "distill_loss": "smooth_l1",
    "teacher_factor": 1.0,
    "include_last_cot": False,
    "prj_no_ln": False,
}
# scripts/train_llama1b_gsm8k-aug.sh: --model_name_or_path meta-llama/Llama-3.2-1B-Instruct
# --data_name icot --seed 11 --per_device_train_batch_size 32 --gradient_accumulation_steps 4
# --bf16 --num_train_epochs 10 --learning_rate 8e-4 --max_grad_norm 2.0 --lora_r 128
# --lora_alpha 32 --weight_decay 0.1 --warmup_ratio 0.03 --num_latent 6 --prj_dim 2048
# --prj_dropout 0.0 --remove_eos True --distill_loss_factor 20 --max_token_num 200.
OFFICIAL_LLAMA = {
    **OFFICIAL_GPT2,
    "base": "meta-llama/Llama-3.2-1B-Instruct",
    "batch_size": 32,
    "grad_accum": 4,
    "epochs": 10,
    "lr": 8e-4,
    "prj_dim": 2048,
    "distill_factor": 20.0,
    "max_tokens": 200,
}


@pytest.mark.parametrize(
    ("name", "facts"), [("codi-gpt2", OFFICIAL_GPT2), ("codi-llama3.2-1b", OFFICIAL_LLAMA)]
)
def test_recipes_are_the_official_settings(name: str, facts: dict, tmp_path: Path) -> None:
    options = TrainOptions(out=tmp_path, recipe=name)
    assert {k: getattr(options, k) for k in facts} == facts
    assert options.batch_size * options.grad_accum == 128  # the official effective batch
    assert set(TRAIN_RECIPES[name]) == set(facts)  # nothing else is set by the recipe


def test_explicit_options_override_the_recipe(tmp_path: Path) -> None:
    # 8e-4 and seed 0 equal the no-recipe defaults: given explicitly, they still win
    options = TrainOptions(out=tmp_path, recipe="codi-gpt2", lr=8e-4, seed=0, prj_dim=64)
    assert (options.lr, options.seed, options.prj_dim) == (8e-4, 0, 64)
    assert (options.epochs, options.weight_decay, options.distill_factor) == (40, 0.1, 1.0)
    assert TrainOptions(out=tmp_path, recipe="codi-gpt2", remove_eos=False).remove_eos is False
    # the same values given one by one are the same run (a checkpoint resumes under either)
    spelled = TrainOptions(out=tmp_path, **OFFICIAL_GPT2)
    assert spelled.fingerprint() == TrainOptions(out=tmp_path, recipe="codi-gpt2").fingerprint()


def test_without_a_recipe(tmp_path: Path) -> None:
    options = TrainOptions(out=tmp_path, base="gpt2")
    fallbacks = {
        f.name: f.metadata["fallback"]
        for f in dataclasses.fields(TrainOptions)
        if "fallback" in f.metadata and f.name != "base"
    }
    assert {k: getattr(options, k) for k in fallbacks} == fallbacks
    assert (options.lr, options.distill_factor, options.include_last_cot) == (8e-4, 20.0, False)
    with pytest.raises(OpcircuitsError) as err:
        TrainOptions(out=tmp_path)
    assert err.value.field == "base"
    with pytest.raises(OpcircuitsError) as err:
        TrainOptions(out=tmp_path, recipe="codi-gpt3")
    assert err.value.field == "recipe"


def test_every_recipe_value_is_a_recipe_option() -> None:
    """A recipe may only set fields that have a "not given" state (else a flag could not be told
    apart from the default, and the recipe would silently win or lose)."""
    settable = {f.name for f in dataclasses.fields(TrainOptions) if "fallback" in f.metadata}
    for recipe in TRAIN_RECIPES.values():
        assert set(recipe) <= settable
