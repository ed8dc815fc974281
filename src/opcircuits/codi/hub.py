"""Fetching checkpoints and bases from the Hugging Face hub; errors say how to go local."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from opcircuits.errors import OpcircuitsError

log = logging.getLogger(__name__)

# Everything a CODI checkpoint or a base's config/tokenizer can need; no other repo files.
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.tiktoken"]
CONFIG_PATTERNS = ["*.json", "*.model", "*.txt", "*.tiktoken"]

LOCAL_HINT = (
    "download it elsewhere and pass local directories: "
    "--checkpoint DIR (the CODI weights) --base DIR (the base model's config and tokenizer)"
)


def download(repo_id: str, *, weights: bool = True) -> Path:
    """Snapshot of a hub repo (cached by huggingface_hub; HF_TOKEN is used for gated repos)."""
    from huggingface_hub import snapshot_download

    patterns = CHECKPOINT_PATTERNS if weights else CONFIG_PATTERNS
    log.info("fetching %s from the Hugging Face hub", repo_id)
    try:
        path = snapshot_download(
            repo_id, allow_patterns=patterns, token=os.environ.get("HF_TOKEN") or None
        )
    except Exception as exc:  # offline, gated, missing: all end the same way for the user
        gated = "gated" in type(exc).__name__.lower() or "401" in str(exc)
        extra = " (gated: accept its licence on the hub and set HF_TOKEN)" if gated else ""
        raise OpcircuitsError(
            f"cannot fetch '{repo_id}' from the Hugging Face hub{extra}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; {LOCAL_HINT}"
        ) from exc
    return Path(path)


def looks_like_repo_id(name: str) -> bool:
    """'owner/name' or a bare hub name such as 'gpt2' (not an existing local path)."""
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") for p in parts)
