"""Extraction: run a CODI model over a problem file and stream its continuous thoughts to a store.

For each problem: hidden states at positions bot, latent_1..latent_K and the chosen layers, the K
projected inputs fed back, the logit lens at each position, the greedy answer and whether it is
right. Shards are written atomically as they finish, so rerunning the same command resumes, and
`accelerate launch -m opcircuits extract …` splits the shards across processes (rank r writes
shards r, r+W, …; the main process finalizes once all are done). Every phase ends where all
ranks learn whether one failed (`codi.ranks`), so an error on any rank stops all of them.
"""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from opcircuits.errors import OpcircuitsError
from opcircuits.options import ExtractOptions, split_list
from opcircuits.progress import stage_progress

if TYPE_CHECKING:
    from opcircuits.codi.ranks import Ranks

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
    from opcircuits.data.annotations import (
        label_record,
        operator_symbols,
        step_operators,
        step_results,
    )

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
        "step_ops": step_operators(record),
        "step_results": step_results(record),
    }


def number_text(value: float) -> str:
    """A step result as the chain of thought writes it after `=`: `24`, not `24.0`."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def result_token_ids(
    tokenizer, results: list[float | None] | None, before: str = ""
) -> list[int | None] | None:
    """The first token id of each step result's text (the whole number where it is one token,
    as for `demo-arith`; the first piece of a multi-token number), None where r_j is unknown.
    `before=" "`: of the text after a space, a BPE vocabulary's other spelling of the number
    (GPT-2's `Ġ8`; `demo-rules` writes its results so), which the lens may decode instead."""
    if results is None:
        return None
    out: list[int | None] = []
    for value in results:
        text = None if value is None else before + number_text(value)
        ids = [] if text is None else tokenizer.encode(text, add_special_tokens=False)
        out.append(int(ids[0]) if ids else None)
    return out


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
        layer_lens_ids,
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
        per_layer = layer_lens_ids(model, out.hidden, layers, top_k).tolist()
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
                "step_result_ids": result_token_ids(tokenizer, fields["step_results"]),
                "step_result_space_ids": result_token_ids(tokenizer, fields["step_results"], " "),
                "lens_top_ids": lens_ids[j],
                "lens_top_tokens": [[names[t] for t in row] for row in lens_ids[j]],
                "lens_top_probs": lens_probs[j],
                "lens_layer_top_ids": per_layer[j],
            }
        if on_batch is not None:
            on_batch(len(idx))
    assert hidden is not None and latent is not None
    return hidden, latent, records  # type: ignore[return-value]


def extract(options: ExtractOptions) -> Path:
    """Extract every problem of `options.dataset` into the store `options.out`; returns its path."""
    from opcircuits.codi.ranks import Ranks

    # The process group forms before any input is read: a rank failing earlier would leave the
    # others waiting in the rendezvous for ever.
    ranks = Ranks()
    try:
        return _extract(options, ranks)
    finally:
        ranks.close()


def _read_inputs(options: ExtractOptions) -> list[dict[str, Any]]:
    from opcircuits.codi.config import model_folders
    from opcircuits.data.io import read_problems
    from opcircuits.files import check_replaceable, refuse_inside_inputs, refuse_same_files
    from opcircuits.store import is_store_file

    folders = model_folders(options.model, options.checkpoint, options.base)
    inputs = {"--data": options.dataset, **folders}
    refuse_same_files({"out": options.out}, inputs)
    refuse_inside_inputs({"out": options.out}, inputs)  # a store inside a checkpoint folder
    check_replaceable(options.out, is_store_file)  # never write beside someone else's files
    return read_problems(options.dataset)


def _load_model(options: ExtractOptions, ranks: Ranks) -> tuple[Any, Any, str]:
    """The model (re-initialized for the random baseline), its tokenizer and the name the
    store records."""
    from opcircuits.codi.checkpoint import load_codi
    from opcircuits.codi.config import model_and_checkpoint

    model_name, checkpoint = model_and_checkpoint(options.model, options.checkpoint)
    model, tokenizer = load_codi(
        model_name,
        checkpoint=checkpoint,
        base=options.base,
        dtype=options.dtype,
        device=ranks.device(options.device),
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
    from opcircuits.codi.resolve import weights_sha256
    from opcircuits.files import sha256_file
    from opcircuits.store import default_positions

    src = model.source
    K = model.config.num_latent
    return {
        "model": name,
        "reinit": options.reinit,
        "checkpoint": src.checkpoint,
        "weights_sha256": weights_sha256(src),
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


def _extract(options: ExtractOptions, ranks: Ranks) -> Path:
    from opcircuits.codi.latent import check_lengths
    from opcircuits.store import StoreWriter

    with ranks.together():  # every rank's checks (its files, its device) before any work
        problems = _read_inputs(options)
        model, tokenizer, name = _load_model(options, ranks)
        layers = parse_layers(options.layers, model.num_layers, model.source.config.layers)
        # Before any work: a question beyond the model's positions is an error naming its id.
        ids = [p["id"] for p in problems]
        check_lengths(model, tokenizer, [p["question"] for p in problems], ids)
        manifest = _manifest(options, model, name, layers)

        def writer() -> StoreWriter:
            return StoreWriter(
                options.out,
                manifest,
                len(problems),
                options.shard_size,
                rank=ranks.rank,
                world_size=ranks.world,
                ids=ids,
            )

        # The main process creates the store (or checks it and re-verifies the shards it keeps)
        # first, so ranks never race to create it and kept shards are hashed once.
        w = writer() if ranks.main else None
    with ranks.together():
        if w is None:
            w = writer()
        _write_shards(w, model, tokenizer, problems, layers, options, ranks)
    with ranks.together():  # the others exit non-zero too when the merge fails
        if ranks.main:
            _finalize(w, options)
    return options.out


def _write_shards(
    w: Any,
    model: Any,
    tokenizer: Any,
    problems: list[dict[str, Any]],
    layers: list[int],
    options: ExtractOptions,
    ranks: Ranks,
) -> None:
    """Extract and write this process's shards that are not done yet."""
    pending = w.pending_shards()
    todo = sum(w.shard_bounds(i)[1] - w.shard_bounds(i)[0] for i in pending)
    if ranks.main and not pending:
        log.info("%s: nothing left to extract", options.out)
    with stage_progress(f"extract (rank {ranks.rank})", enabled=ranks.main and todo > 0) as bar:
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
