"""Extraction: run a CODI model over a problem file and stream its continuous thoughts to a store.

For each problem: hidden states at positions bot, latent_1..latent_K and the chosen layers, the K
projected inputs fed back, the logit lens at each position, the greedy answer and whether it is
right. Shards are written atomically as they finish, so rerunning the same command resumes, and
`accelerate launch -m opcircuits extract …` splits the shards across processes (rank r writes
shards r, r+W, …; the main process finalizes once all are done).
"""

from __future__ import annotations

import logging
import os
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opcircuits.errors import OpcircuitsError
from opcircuits.options import ExtractOptions, split_list
from opcircuits.progress import stage_progress

log = logging.getLogger(__name__)


def parse_layers(
    spec: str | list[int] | None, n_layers: int, default: list[int] | None
) -> list[int]:
    """HF `hidden_states` indices: 0 = embeddings, l = output of block l, `all` = 0..n_layers."""
    if spec is None:
        if default is None:
            return list(range(n_layers + 1))
        spec = list(default)
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return list(range(n_layers + 1))
    layers = split_list(spec, field="layers") or []
    if not layers:
        raise OpcircuitsError("no layers chosen", field="layers")
    bad = [x for x in layers if not 0 <= x <= n_layers]
    if bad:
        raise OpcircuitsError(
            f"layers {bad} out of range: this model has {n_layers} blocks, so layers are "
            f"0 (embeddings) .. {n_layers}",
            field="layers",
        )
    if len(set(layers)) != len(layers):
        raise OpcircuitsError(f"layers repeat: {layers}", field="layers")
    return layers


def problem_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The store columns a problem record supplies (category and operators derived if absent)."""
    from opcircuits.data.annotations import label_record, operator_symbols

    category = record.get("category") or label_record(record).category
    n_steps = record.get("n_steps")
    if n_steps is None:
        n_steps = len(record.get("steps") or [])
    return {
        "id": record["id"],
        "category": category,
        "question": record["question"],
        "gold": float(record["final_value"]),
        "n_steps": int(n_steps),
        "ops_used": operator_symbols(record),
    }


class _Dist:
    """This process's place in an `accelerate launch` / `torchrun` job (env RANK, WORLD_SIZE,
    LOCAL_RANK); a single process otherwise. Only barriers are exchanged, so gloo serves both
    CPU and GPU jobs."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owns_group = False
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="gloo")
                self.owns_group = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False

    def device(self, requested: str) -> str:
        """`auto` in a multi-process job on GPUs means this process's own GPU."""
        if self.world > 1 and requested == "auto" and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested


def extract_shard(
    model,
    tokenizer,
    problems: list[dict[str, Any]],
    *,
    layers: list[int],
    batch_size: int,
    max_new_tokens: int,
    top_k: int,
    on_batch=None,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Hidden [n, P, L, D], latent inputs [n, K, D] (float32) and records of `problems`, in order.

    Problems are batched by prompt length (longest first, so a too-large batch fails at once);
    results do not depend on the batching, so the output is in input order regardless."""
    from opcircuits.codi.latent import (
        decode_answer,
        extract_number,
        prompt_ids,
        run_batch,
        token_text,
    )

    n = len(problems)
    lengths = [len(prompt_ids(model, tokenizer, p["question"])) for p in problems]
    order = sorted(range(n), key=lambda i: (-lengths[i], i))
    hidden: np.ndarray | None = None
    latent: np.ndarray | None = None
    records: list[dict[str, Any] | None] = [None] * n
    names: dict[int, str] = {}
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        out = run_batch(
            model,
            tokenizer,
            [problems[i]["question"] for i in idx],
            layers=layers,
            max_new_tokens=max_new_tokens,
            top_k=top_k,
        )
        if hidden is None:
            hidden = np.empty((n, *out.hidden.shape[1:]), dtype=np.float32)
            latent = np.empty((n, *out.latent_inputs.shape[1:]), dtype=np.float32)
        hidden[idx] = out.hidden.numpy()
        latent[idx] = out.latent_inputs.numpy()
        lens_ids = out.lens_ids.tolist()
        lens_probs = out.lens_probs.tolist()
        for j, i in enumerate(idx):
            fields = problem_fields(problems[i])
            text = decode_answer(model, tokenizer, out.answer_ids[j])
            predicted = extract_number(text)
            for t in (t for row in lens_ids[j] for t in row):
                if t not in names:
                    names[t] = token_text(model, tokenizer, t)
            records[i] = {
                **fields,
                "answer_text": text,
                "predicted": predicted,
                "correct": predicted is not None and predicted == fields["gold"],
                "answer_truncated": out.truncated[j],
                "lens_top_ids": lens_ids[j],
                "lens_top_tokens": [[names[t] for t in row] for row in lens_ids[j]],
                "lens_top_probs": lens_probs[j],
            }
        if on_batch is not None:
            on_batch(len(idx))
    assert hidden is not None and latent is not None
    return hidden, latent, records  # type: ignore[return-value]


def extract(options: ExtractOptions) -> Path:
    """Extract every problem of `options.dataset` into the store `options.out`; returns its path."""
    from opcircuits.data.io import read_problems
    from opcircuits.files import check_replaceable, refuse_same_files
    from opcircuits.store import is_store_file

    refuse_same_files(
        {"out": options.out}, {"--data": options.dataset, "--checkpoint": options.checkpoint}
    )
    check_replaceable(options.out, is_store_file)  # never write beside someone else's files
    problems = read_problems(options.dataset)
    dist = _Dist()
    try:
        return _extract(options, problems, dist)
    finally:
        dist.close()


def _load_model(options: ExtractOptions, dist: _Dist) -> tuple[Any, Any, str]:
    """The model (re-initialized for the random baseline), its tokenizer and the name the
    store records."""
    from opcircuits.codi.checkpoint import load_codi

    # A bare --checkpoint DIR is its own model, not the demo preset's location.
    model_name = options.model
    if options.checkpoint is not None and options.model == "demo":
        model_name = str(options.checkpoint)
        checkpoint = None
    else:
        checkpoint = options.checkpoint
    model, tokenizer = load_codi(
        model_name,
        checkpoint=checkpoint,
        base=options.base,
        dtype=options.dtype,
        device=dist.device(options.device),
        merge=options.merge,
        num_latent=options.num_latent,
        remove_eos=options.remove_eos,
        lora_alpha=options.lora_alpha,
    )
    name = model.source.name
    if options.reinit is not None:
        from opcircuits.codi.reinit import reinitialize

        # The random-model baseline; its own model name keeps it from resuming a trained store.
        reinitialize(model, options.reinit)
        name = f"{name} (re-initialized, seed {options.reinit})"
    return model, tokenizer, name


def _manifest(options: ExtractOptions, model: Any, name: str, layers: list[int]) -> dict[str, Any]:
    """What the store records about how it was made (a resumed run must match it)."""
    from opcircuits.files import sha256_file
    from opcircuits.store import default_positions

    src = model.source
    K = model.config.num_latent
    return {
        "model": name,
        "reinit": options.reinit,
        "checkpoint": src.checkpoint,
        "weights_sha256": sha256_file(src.weights_path),
        "base": src.base,
        "num_latent": K,
        "layers": layers,
        "positions": default_positions(K),
        "dtype": options.dtype,
        "store_dtype": options.store_dtype,
        "hidden_size": model.hidden_size,
        "dataset": str(options.dataset),
        "dataset_sha256": sha256_file(options.dataset),
        "max_new_tokens": options.max_new_tokens,
        "top_k": options.top_k,
        "merge": options.merge,
        "codi_config": src.config.to_dict(),
    }


def _extract(options: ExtractOptions, problems: list[dict[str, Any]], dist: _Dist) -> Path:
    from opcircuits.codi.latent import check_lengths
    from opcircuits.store import StoreWriter

    model, tokenizer, name = _load_model(options, dist)
    layers = parse_layers(options.layers, model.num_layers, model.source.config.layers)
    # Before any work: a question beyond the model's positions is an error naming its id.
    check_lengths(model, tokenizer, [p["question"] for p in problems], [p["id"] for p in problems])
    manifest = _manifest(options, model, name, layers)

    def writer() -> StoreWriter:
        return StoreWriter(
            options.out,
            manifest,
            len(problems),
            options.shard_size,
            rank=dist.rank,
            world_size=dist.world,
            ids=[p["id"] for p in problems],
        )

    # The main process creates the store (or checks it and re-verifies the shards it keeps)
    # first, so ranks never race to create it and kept shards are hashed once.
    w = writer() if dist.main else None
    dist.barrier()
    if w is None:
        w = writer()
    _write_shards(w, model, tokenizer, problems, layers, options, dist)
    dist.barrier()
    if dist.main:
        _finalize(w, options)
    dist.barrier()
    return options.out


def _write_shards(
    w: Any,
    model: Any,
    tokenizer: Any,
    problems: list[dict[str, Any]],
    layers: list[int],
    options: ExtractOptions,
    dist: _Dist,
) -> None:
    """Extract and write this process's shards that are not done yet."""
    pending = w.pending_shards()
    todo = sum(w.shard_bounds(i)[1] - w.shard_bounds(i)[0] for i in pending)
    if dist.main and not pending:
        log.info("%s: nothing left to extract", options.out)
    with stage_progress(f"extract (rank {dist.rank})", enabled=dist.main and todo > 0) as bar:
        task = bar.add_task("extract", total=todo)
        for index in pending:
            a, b = w.shard_bounds(index)
            hidden, latent, records = extract_shard(
                model,
                tokenizer,
                problems[a:b],
                layers=layers,
                batch_size=options.batch_size,
                max_new_tokens=options.max_new_tokens,
                top_k=options.top_k,
                on_batch=lambda k: bar.advance(task, k),
            )
            w.write_shard(index, hidden, latent, records)


def _finalize(w: Any, options: ExtractOptions) -> None:
    """The main process, once every shard is written: the store's index, and what it holds."""
    store = w.finalize()
    n_ok = int(store.records["correct"].fillna(False).sum())
    log.info("%s: %d problems, %d answered correctly", options.out, len(store), n_ok)
    n_cut = int(store.manifest.get("n_answer_truncated") or 0)
    if n_cut:
        log.warning(
            "%s: %d answers hit --max-new-tokens %d before EOS (answer_truncated)",
            options.out,
            n_cut,
            options.max_new_tokens,
        )


class _CallableModule(types.ModuleType):
    """`from opcircuits import extract` is the function `extract`, but once this module is
    imported the package attribute `opcircuits.extract` is the module itself (Python sets it);
    calling the module calls the function, so both spellings work."""

    def __call__(self, options: ExtractOptions) -> Path:
        return extract(options)


sys.modules[__name__].__class__ = _CallableModule
