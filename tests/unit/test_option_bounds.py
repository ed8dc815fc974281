"""Every count of `data synth`, `data classify`, `train`, `new-base` and `evaluate` has a sane
maximum, checked when the options are made, before anything is allocated (issue 25 item 3)."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from opcircuits.errors import OpcircuitsError
from opcircuits.options import (
    ClassifyOptions,
    EvaluateOptions,
    NewBaseOptions,
    SynthOptions,
    TrainOptions,
)

REQUIRED = {
    SynthOptions: {},
    ClassifyOptions: {},
    TrainOptions: {"out": "run", "base": "gpt2"},
    NewBaseOptions: {"out": "base"},
    EvaluateOptions: {},
}
# Integers that are not counts: seeds that only name a random stream (a string seed, any size),
# LoRA alpha (a scale), and synth's step counts (each 2..6, checked by the class).
NOT_COUNTS = {(SynthOptions, "seed"), (ClassifyOptions, "seed"), (TrainOptions, "lora_alpha"),
              (SynthOptions, "steps")}  # fmt: skip


def _int_fields(cls: type) -> list[dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    return [
        f
        for f in dataclasses.fields(cls)
        if f.metadata.get("list") is int
        or int in (typing.get_args(hints[f.name]) or (hints[f.name],))
    ]


@pytest.mark.parametrize("cls", list(REQUIRED), ids=lambda c: c.__name__)
def test_every_count_has_a_maximum_that_is_enforced(cls):
    counts = [f for f in _int_fields(cls) if (cls, f.name) not in NOT_COUNTS]
    assert counts
    for f in counts:
        high = f.metadata.get("max")
        assert isinstance(high, int), f"{cls.__name__}.{f.name} has no max"
        value = [high + 1] if f.metadata.get("list") else high + 1
        with pytest.raises(OpcircuitsError, match="must be at most") as info:
            cls(**REQUIRED[cls], **{f.name: value})
        assert info.value.field == f.name


@pytest.mark.parametrize(
    "cls, values",
    [
        (SynthOptions, {"n": 99_999_999_999}),
        (TrainOptions, {"batch_size": 10**9, "out": "r", "base": "b"}),
        (TrainOptions, {"max_steps": 10**12, "out": "r", "base": "b"}),
        (EvaluateOptions, {"num_latent": "6,100000"}),
        (EvaluateOptions, {"max_new_tokens": 10**9}),
        (ClassifyOptions, {"per_category": 10**10}),
        (NewBaseOptions, {"vocab_size": 10**10, "out": "b"}),
    ],
)
def test_the_attack_values_are_refused(cls, values):
    with pytest.raises(OpcircuitsError, match="must be at most"):
        cls(**values)


def test_the_maxima_leave_the_documented_runs_alone():
    SynthOptions(n=30000, kind="rules", split="train")  # docs/guide/data.md's training file
    TrainOptions(out="r", recipe="codi-gpt2")
    TrainOptions(out="r", recipe="codi-llama3.2-1b")
    EvaluateOptions(num_latent="6,5,4,3,2,1,0", batch_size=128)
    NewBaseOptions(out="b")
