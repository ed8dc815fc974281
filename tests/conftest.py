"""Shared fixtures. GSM8K comes from one place: $OPCIRCUITS_GSM8K_DIR, else ../shared/data/gsm8k."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """The folder holding GSM8K's original `train.jsonl` and `test.jsonl`.

    A missing copy is a failure (never a skip), with a message saying where to point.
    """
    env = os.environ.get("OPCIRCUITS_GSM8K_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "gsm8k"
    ok = (path / "train.jsonl").is_file() and (path / "test.jsonl").is_file()
    if not ok:
        pytest.fail(
            f"GSM8K not found at {path}: set OPCIRCUITS_GSM8K_DIR to a folder holding "
            "train.jsonl and test.jsonl"
        )
    return path


# --- tiny CODI checkpoints ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_texts(gsm8k_dir: Path) -> list[str]:
    """GSM8K train questions and answers: what the tiny models' tokenizers are trained on."""
    from codi_factory import sample_texts

    return sample_texts(gsm8k_dir)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tiny_texts):
    """A random tiny LLaMA CODI checkpoint (LoRA r=4, safetensors, BOS-adding tokenizer)."""
    from codi_factory import build_tiny_codi

    return build_tiny_codi(tmp_path_factory.mktemp("codi-llama"), "llama", tiny_texts)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory, tiny_texts):
    """A random tiny GPT-2 CODI checkpoint (LoRA r=4, pytorch_model.bin, no BOS)."""
    from codi_factory import build_tiny_codi

    return build_tiny_codi(tmp_path_factory.mktemp("codi-gpt2"), "gpt2", tiny_texts, fmt="bin")


@pytest.fixture(scope="session")
def tiny_problems(tmp_path_factory, gsm8k_dir: Path) -> Path:
    """The first 24 GSM8K test problems as a problem-record JSONL (prompts of varied length)."""
    import json

    out = tmp_path_factory.mktemp("problems") / "problems.jsonl"
    with open(gsm8k_dir / "test.jsonl", encoding="utf-8") as src, open(out, "w") as dst:
        for i, line in zip(range(24), src, strict=False):
            row = json.loads(line)
            rec = {"id": f"test_{i}", "question": row["question"], "answer": row["answer"]}
            dst.write(json.dumps(rec) + "\n")
    return out
