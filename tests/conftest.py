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
