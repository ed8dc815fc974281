"""A Hugging Face hub cache written by hand, laid out as huggingface_hub writes it, so hub ids
resolve offline through the real `snapshot_download` (the hub itself is unreachable in tests).

The layout (huggingface_hub's "Understand caching" guide; the hub's local-cache spec):
`<cache>/models--<owner>--<name>/{refs/main, blobs/<hash>, snapshots/<commit>/<file>}`, where
`refs/main` holds the commit hash, every snapshot file is a relative symlink to its blob, and a
blob is named by its content's sha256 for LFS files (weights) or its git blob sha1 otherwise.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin")


def _blob_name(name: str, data: bytes) -> str:
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def add_repo(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Write `files` (name in the repo → content) as the cached `main` of a model repo; returns
    its snapshot folder (what `snapshot_download` returns offline)."""
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    blobs = {name: _blob_name(name, data) for name, data in files.items()}
    commit = hashlib.sha1("".join(sorted(blobs.values())).encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for name, data in files.items():
        (repo / "blobs" / blobs[name]).write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / blobs[name], link.parent))
    (repo / "refs" / "main").write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def folder_files(directory: Path) -> dict[str, bytes]:
    """Every file of a folder (non-recursive), as `add_repo` takes them."""
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir()) if p.is_file()}
