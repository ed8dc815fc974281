"""The report's tuned-lens section, from the `tuned-lens.json` that `opcircuits lens train` wrote
for the analyzed store (numbers only; the lens itself is trained in `codi/`): held-out KL to the
final layer's next-token distribution per layer, for the tuned lens and the logit lens (its
identity-translator special case), the gain, and the tuned lens's top tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opcircuits.errors import OpcircuitsError
from opcircuits.store.lens_file import lens_json_path, read_lens_json


def load(path: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The checked lens record of `path` (a lens folder or its JSON), which must have been
    trained on the store of `manifest` (else an error naming both fingerprints)."""
    return read_lens_json(path, manifest)


def section(lens: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Per layer (the final one is its own target, KL 0 for both lenses, and is left out of the
    comparison): both KLs and `gain` = logit − tuned (nats); the largest gain; how many layers
    the tuned lens is below the logit lens at."""
    final = lens["final_layer"]
    rows = [
        {
            "layer": r["layer"],
            "tuned": r["tuned"],
            "logit": r["logit"],
            "gain": r["logit"] - r["tuned"],
            "final": r["layer"] == final,
        }
        for r in sorted(lens["kl"], key=lambda r: r["layer"])
    ]
    compared = [r for r in rows if not r["final"]]
    if not compared:
        raise OpcircuitsError(
            "the lens record holds no layer before the final one",
            path=lens_json_path(path),
            field="kl",
        )
    n_held = lens["split"].get("n_held_out") if isinstance(lens["split"], dict) else None
    return {
        "path": str(path),
        "n_held_out": n_held,
        "final_layer": final,
        "kl_unit": lens.get("kl_unit", "nats"),
        "layers": rows,
        "n_compared": len(compared),
        "n_tuned_better": sum(r["tuned"] < r["logit"] for r in compared),
        "best": max(compared, key=lambda r: r["gain"]),
        "top_tokens": lens.get("top_tokens") or [],
    }
