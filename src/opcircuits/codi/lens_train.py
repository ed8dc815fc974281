"""`opcircuits lens train`: fit a tuned lens (`codi/tuned_lens.py`) on a store's hidden states
and write `tuned-lens.safetensors` + `tuned-lens.json` into --out, together and atomically.

The problems are split once (seeded) into trained-on and held-out ones; every number reported is
measured on the held-out problems only. The model must be the one the store was extracted with
(its weights' sha256 is the store's), and the record names the store's fingerprint, so the lens
is never applied to another store's model. Rerunning the same command on the same store finds the
lens up to date and writes nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opcircuits.codi import tuned_lens as tl
from opcircuits.codi.config import model_and_checkpoint, model_folders
from opcircuits.errors import OpcircuitsError
from opcircuits.files import (
    atomic_dir,
    check_replaceable,
    refuse_inside_inputs,
    refuse_same_files,
    sha256_file,
    write_json_atomic,
)
from opcircuits.options import LensTrainOptions
from opcircuits.progress import stage_progress
from opcircuits.store import open_store, store_fingerprint
from opcircuits.store.lens_file import (
    LENS_FILES,
    LENS_FORMAT,
    LENS_JSON,
    LENS_VERSION,
    read_lens_json,
)

log = logging.getLogger(__name__)


def _ours(name: str) -> bool:
    return name in LENS_FILES


def check_states(hidden: np.ndarray, store: Any) -> None:
    """A NaN or inf in the store's states is an error naming the problem, position and layer."""
    bad = ~np.isfinite(hidden)
    if bad.any():
        n, p, layer, _ = (int(i) for i in np.argwhere(bad)[0])
        raise OpcircuitsError(
            f"the hidden state of problem {store.records['id'].iloc[n]!r} at position "
            f"{store.positions[p]} layer {store.layers[layer]} holds NaN or inf",
            path=store.path,
            field="hidden",
        )


def _load_model(options: LensTrainOptions, manifest: dict[str, Any]) -> tuple[Any, Any]:
    """The store's model, as extract loaded it (same weights, re-initialized alike)."""
    from opcircuits.codi.checkpoint import load_codi

    name, checkpoint = model_and_checkpoint(options.model, options.checkpoint)
    model, tokenizer = load_codi(
        name,
        checkpoint=checkpoint,
        base=options.base,
        dtype=options.dtype,
        device=options.device,
        merge=bool(manifest.get("merge", True)),
    )
    got = sha256_file(model.source.weights_path)
    if manifest.get("weights_sha256") is None:  # an imported store: nothing to compare with
        log.warning("the store records no weights_sha256: the model cannot be checked against it")
    elif manifest["weights_sha256"] != got:
        raise OpcircuitsError(
            f"the model's weights (sha256 {got[:12]}…) are not the ones the store was extracted "
            f"with ({str(manifest['weights_sha256'])[:12]}…): give the store's model",
            path=model.source.weights_path,
            field="model",
        )
    if manifest.get("reinit") is not None:
        from opcircuits.codi.reinit import reinitialize

        reinitialize(model, int(manifest["reinit"]))
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def _settings(options: LensTrainOptions) -> dict[str, Any]:
    keys = ("held_out", "steps", "lr", "batch_size", "top_k", "seed", "dtype")
    return {k: getattr(options, k) for k in keys}


def _up_to_date(out: Path, manifest: dict[str, Any], settings: dict[str, Any]) -> bool:
    """An earlier run of this command on this store, settings and intact weights."""
    if not (out / LENS_JSON).is_file():
        return False
    try:
        lens = read_lens_json(out, manifest)
    except OpcircuitsError:
        return False
    weights = out / lens["weights"].get("file", "")
    return (
        lens["settings"] == settings
        and weights.is_file()
        and sha256_file(weights) == lens["weights"].get("sha256")
    )


def split(n: int, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Problem indices (trained-on, held-out), both sorted; at least one of each."""
    if n < 2:
        raise OpcircuitsError(
            f"the store holds {n} problem(s); the tuned lens needs at least 2 (one held out)",
            field="store",
        )
    order = np.random.default_rng(seed).permutation(n)
    k = min(max(1, round(held_out * n)), n - 1)
    return np.sort(order[k:]), np.sort(order[:k])


def _rows(hidden: np.ndarray, problems: np.ndarray, device: torch.device) -> torch.Tensor:
    """(problem, position) rows of the chosen problems: [n * P, L, D]."""
    part = hidden[problems]
    return torch.from_numpy(part.reshape(-1, *part.shape[2:])).to(device)


def train_tuned_lens(options: LensTrainOptions) -> Path:
    """Train the tuned lens on `options.store`; returns the path of the tuned-lens.json written."""
    folders = model_folders(options.model, options.checkpoint, options.base)
    inputs = {"--store": options.store, **folders}
    refuse_same_files({"out": options.out}, inputs)
    refuse_inside_inputs({"out": options.out}, inputs)
    check_replaceable(options.out, _ours, field="out")
    store = open_store(options.store)
    manifest = store.manifest
    settings = _settings(options)
    if _up_to_date(options.out, manifest, settings):
        log.info("%s is up to date for this store and these settings", options.out)
        return options.out / LENS_JSON
    model, tokenizer = _load_model(options, manifest)
    final = model.num_layers
    if final not in store.layers:
        raise OpcircuitsError(
            f"the store lacks the final layer {final}, which the tuned lens predicts; it holds "
            f"layers {store.layers} (extract with --layers all)",
            path=store.path,
            field="layers",
        )
    hidden = store.hidden()
    check_states(hidden, store)
    lens = _fit_and_measure(options, store, hidden, model, tokenizer, final, settings)
    with atomic_dir(options.out, _ours, field="out") as scratch:
        lens["weights"]["sha256"] = tl.save_translators(lens.pop("_translators"), scratch)
        write_json_atomic(scratch / LENS_JSON, lens)
    return options.out / LENS_JSON


def _fit_and_measure(
    options: LensTrainOptions,
    store: Any,
    hidden: np.ndarray,
    model: Any,
    tokenizer: Any,
    final: int,
    settings: dict[str, Any],
) -> dict[str, Any]:
    device = next(model.parameters()).device
    torch.manual_seed(options.seed)
    train_idx, held_idx = split(len(store), options.held_out, options.seed)
    lens_layers = [layer for layer in store.layers if layer != final]
    cols = [store.layers.index(layer) for layer in lens_layers]
    final_col = store.layers.index(final)
    translators = tl.Translators(lens_layers, store.hidden_size).to(device)
    unembed = tl.Unembed(model)
    with stage_progress("tuned lens", status=True) as bar:
        task = bar.add_task("", total=options.steps)

        def step(loss: float) -> None:
            bar.update(task, advance=1, description=f"train KL {loss:.4f}")

        last = tl.fit(
            translators,
            unembed,
            _rows(hidden, train_idx, device),
            cols,
            final_col,
            steps=options.steps,
            lr=options.lr,
            batch_size=options.batch_size,
            seed=options.seed,
            on_step=step,
        )
    n_pos = len(store.positions)
    measured = tl.measure(
        translators,
        unembed,
        _rows(hidden, held_idx, device),
        np.tile(np.arange(n_pos), len(held_idx)),
        n_pos,
        cols,
        final_col,
        batch_size=options.batch_size,
    )
    lens = _record(store, measured, lens_layers, final, len(held_idx), model, tokenizer, options)
    lens["settings"] = settings
    lens["train_kl_last_step"] = last
    lens["split"] = {
        "n_train": len(train_idx),
        "n_held_out": len(held_idx),
        "held_out_ids": [str(store.records["id"].iloc[i]) for i in held_idx],
    }
    lens["_translators"] = translators
    return lens


def _record(
    store: Any,
    m: tl.Measured,
    lens_layers: list[int],
    final: int,
    n_held: int,
    model: Any,
    tokenizer: Any,
    options: LensTrainOptions,
) -> dict[str, Any]:
    """tuned-lens.json's numbers: held-out KL per layer (and per position) of both lenses, and
    the tuned lens's top tokens per position and layer."""
    from opcircuits.codi.latent import token_text

    positions = store.positions
    row_pos = np.tile(np.arange(len(positions)), n_held)
    kl = [
        {"layer": layer, "tuned": float(m.tuned[:, i].mean()), "logit": float(m.logit[:, i].mean())}
        for i, layer in enumerate(lens_layers)
    ] + [{"layer": final, "tuned": 0.0, "logit": 0.0}]  # the final layer is its own target
    by_position, tokens = [], []
    for p, name in enumerate(positions):
        rows = row_pos == p
        for i, layer in enumerate(lens_layers):
            by_position.append(
                {
                    "position": name,
                    "layer": layer,
                    "tuned": float(m.tuned[rows, i].mean()),
                    "logit": float(m.logit[rows, i].mean()),
                }
            )
            mean = m.prob_sums[p, i] / n_held
            top = np.argsort(-mean, kind="stable")[: options.top_k]
            counts = Counter(int(t) for t in m.top1[rows, i]).most_common(options.top_k)
            tokens.append(
                {
                    "position": name,
                    "layer": layer,
                    "tokens": [token_text(model, tokenizer, int(t)) for t in top],
                    "mean_probs": [float(mean[t]) for t in top],
                    "top1": [[token_text(model, tokenizer, t), c] for t, c in counts],
                }
            )
    return {
        "format": LENS_FORMAT,
        "format_version": LENS_VERSION,
        "store": {
            "fingerprint": store_fingerprint(store.manifest),
            "model": store.manifest.get("model"),
            "weights_sha256": store.manifest.get("weights_sha256"),
            "n_problems": len(store),
        },
        "weights": {"file": tl.LENS_WEIGHTS},
        "layers": list(store.layers),
        "translated_layers": lens_layers,
        "final_layer": final,
        "positions": positions,
        "kl_unit": "nats, mean over held-out (problem, position) states",
        "kl": kl,
        "kl_by_position": by_position,
        "top_tokens": tokens,
    }
