"""`opcircuits doctor`: what loading a CODI model reads from where, and what looks wrong.

The facts are gathered through the loader's own pieces (`resolve`, the module skeleton, the
strict key partition, `load_codi`), so they describe what every other command loads. Where the
loader refuses (a non-finite weight, a missing key) the report records the refusal and still
says what it found, naming the tensors. `codi/doctor_view.py` draws the report on screen.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from opcircuits.codi.config import (
    CONFIG_NAME,
    PRESETS,
    CodiConfig,
    model_and_checkpoint,
    read_config,
)
from opcircuits.errors import OpcircuitsError
from opcircuits.options import DoctorOptions
from opcircuits.versions import package_versions

log = logging.getLogger(__name__)

MARKER = "opcircuits doctor"  # what every report holds: an existing --json without it is foreign
PACKAGES = ("opcircuits", "torch", "transformers", "peft", "safetensors", "tokenizers")
SHOWN = 5  # names listed per key set (the counts are complete)
CODI_IDS = 3  # pad, bot, eot: rows a CODI checkpoint adds to the base vocabulary


def model_names(options: DoctorOptions) -> tuple[str, Path | None]:
    """(model, checkpoint) as `extract` passes them: a bare --checkpoint is its own model."""
    return model_and_checkpoint(options.model, options.checkpoint)


def check_json_out(options: DoctorOptions) -> None:
    """Before anything is read: --json may not be (or lie inside) a model folder, and an
    existing file there must be an earlier doctor report."""
    from opcircuits.codi.resolve import local_folders
    from opcircuits.files import (
        read_json_object,
        refuse_blocked_parent,
        refuse_inside_inputs,
        refuse_same_files,
    )

    out = Path(options.json)  # type: ignore[arg-type]
    folders = local_folders(*model_names(options))
    refuse_same_files({"--json": out}, {"--model": folders})
    refuse_inside_inputs({"--json": out}, {"--model": folders})
    if out.is_dir():
        raise OpcircuitsError("exists and is a folder; choose a file path", path=out, field="json")
    refuse_blocked_parent(out, field="json")
    if out.exists():
        try:
            previous = read_json_object(out)
        except OpcircuitsError:
            previous = {}
        if previous.get("report") != MARKER:
            raise OpcircuitsError(
                "exists and is not an `opcircuits doctor` report: nothing was changed; move it "
                "away or choose another path",
                path=out,
                field="json",
            )


# What building or loading the module can raise besides our own errors (peft's and transformers'
# refusals of a config, e.g. LoRA targets the base lacks): reported, not a traceback.
BUILD_ERRORS = (OpcircuitsError, ValueError, TypeError, RuntimeError, KeyError)


def _finding(kind: str, message: str) -> dict[str, str]:
    return {"kind": kind, "message": message}


def _reason(exc: Exception) -> str:
    if isinstance(exc, OpcircuitsError):
        return str(exc)
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"


def _files(folders: list[tuple[str, Path]]) -> list[dict[str, Any]]:
    """Every file at the top of each folder (a hub snapshot's links followed): size, sha256."""
    from opcircuits.files import sha256_file

    out = []
    for role, folder in folders:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            out.append(
                {
                    "folder": role,
                    "name": path.name,
                    "path": str(path),
                    "bytes": path.stat().st_size,
                    "sha256": sha256_file(path),
                }
            )
    return out


def _folders(resolved: Any) -> list[tuple[str, Path]]:
    if resolved.base_dir == resolved.checkpoint_dir:
        return [("checkpoint = base", resolved.checkpoint_dir)]
    return [("checkpoint", resolved.checkpoint_dir), ("base", resolved.base_dir)]


def config_sources(
    model: str, resolved: Any, weights: dict[str, torch.Tensor], flags: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Every CodiConfig setting, its value and where it came from, by `resolve`'s precedence
    (low → high): default, preset, the weights' shapes, codi_config.json, a flag."""
    from opcircuits.codi.weights import infer_config

    source = {f.name: "default" for f in dataclasses.fields(CodiConfig)}
    preset = next((p for n, p in PRESETS.items() if model in (n, p.checkpoint)), None)
    if preset is not None:
        source.update(dict.fromkeys(["base", *preset.config], "preset"))
        if preset.layers is not None:
            source["layers"] = "preset"
    source.update(dict.fromkeys(infer_config(weights), "weights"))
    source.update(dict.fromkeys(read_config(resolved.checkpoint_dir) or {}, CONFIG_NAME))
    source.update(dict.fromkeys([k for k, v in flags.items() if v is not None], "flag"))
    values = dataclasses.asdict(resolved.config)
    return {k: {"value": values[k], "from": source[k]} for k in values}


def _non_finite(weights: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Every floating tensor holding NaN or inf, with the counts (the loader refuses them)."""
    bad = []
    for key, t in weights.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            bad.append({"key": key, "nan": nan, "inf": inf, "numel": t.numel()})
    return bad


def _named(keys: list[str]) -> dict[str, Any]:
    return {"count": len(keys), "first": keys[:SHOWN]}


def _weight_name(module: torch.nn.Module, target: torch.nn.Module) -> str | None:
    return next((f"{n}.weight" for n, m in module.named_modules() if m is target), None)


def _structure(resolved: Any, weights: dict[str, torch.Tensor]) -> tuple[dict, list[dict]]:
    """What the module on the base's architecture expects of the file: which keys it takes from
    the checkpoint and which from the base, the head's tying and the vocabulary rows."""
    from opcircuits.codi.checkpoint import skeleton
    from opcircuits.codi.strict import LEGACY_BUFFERS, lacking_keys, own_keys

    module = skeleton(resolved.config, resolved.base_dir)
    state = module.state_dict()
    own = own_keys(module)
    used = [k for k in weights if k in state]
    facts: dict[str, Any] = {
        "from_checkpoint": _named(used),
        "from_base": _named([k for k in lacking_keys(module, weights) if k not in own]),
        "ignored_buffers": _named([k for k in weights if LEGACY_BUFFERS.search(k)]),
        "unknown": _named([k for k in weights if k not in state and not LEGACY_BUFFERS.search(k)]),
    }
    lm = module.lm
    emb_key = _weight_name(module, lm.get_input_embeddings())
    head = lm.get_output_embeddings()
    head_key = _weight_name(module, head) if head is not None else None
    base_ties = bool(getattr(lm.config, "tie_word_embeddings", True))
    facts["head"] = {"embedding": emb_key, "head": head_key, "base_ties": base_ties}
    facts["vocab"] = {
        "base_config": int(module.base_vocab_size),
        "embedding_rows": _rows(weights, emb_key),
        "head_rows": _rows(weights, head_key),
    }
    findings = _head_findings(weights, emb_key, head_key, base_ties)
    expected = module.base_vocab_size + CODI_IDS
    for what in ("embedding_rows", "head_rows"):
        rows = facts["vocab"][what]
        if rows is not None and rows != expected:
            key = emb_key if what == "embedding_rows" else head_key
            findings.append(
                _finding(
                    "vocab",
                    f"{key} has {rows} rows; the base's config.json gives vocab_size "
                    f"{module.base_vocab_size}, so {expected} (with pad, bot, eot) are expected",
                )
            )
    return facts, findings


def _rows(weights: dict[str, torch.Tensor], key: str | None) -> int | None:
    return int(weights[key].shape[0]) if key in weights and weights[key].dim() else None


def _head_findings(
    weights: dict[str, torch.Tensor], emb_key: str | None, head_key: str | None, ties: bool
) -> list[dict[str, str]]:
    """A trained untied head where the base ties it (the loader keeps one of the two), or a
    head identical to the embedding where the base unties them (saved from a tied model?)."""
    if emb_key not in weights or head_key not in weights or emb_key == head_key:
        return []
    emb, head = weights[emb_key], weights[head_key]  # type: ignore[index]
    same = emb.shape == head.shape and torch.equal(emb, head)
    if ties and not same:
        return [
            _finding(
                "head_untied",
                f"the checkpoint's LM head {head_key} differs from its embedding {emb_key}, but "
                "the base ties them (tie_word_embeddings true): the loader keeps one of the two",
            )
        ]
    if not ties and same:
        return [
            _finding(
                "head_tied",
                f"the checkpoint's LM head {head_key} equals its embedding {emb_key}, but the "
                "base unties them (tie_word_embeddings false): saved from a tied model?",
            )
        ]
    return []


def _empty_configs(folders: list[tuple[str, Path]]) -> list[dict[str, str]]:
    return [
        _finding("empty_config", f"{folder / 'config.json'} ({role}) is a 0-byte file")
        for role, folder in folders
        if (folder / "config.json").is_file() and (folder / "config.json").stat().st_size == 0
    ]


def _tokenizer_facts(resolved: Any, vocab: dict[str, Any] | None) -> list[dict[str, str]]:
    """The tokenizer's length beside the base vocabulary: ids at or past it would collide with
    CODI's pad, bot and eot rows."""
    from opcircuits.codi.checkpoint import load_tokenizer

    try:
        length = len(load_tokenizer(resolved.base_dir))
    except OpcircuitsError as exc:
        return [_finding("tokenizer", str(exc))]
    if vocab is None:
        return []
    vocab["tokenizer"] = length
    if length > vocab["base_config"]:
        return [
            _finding(
                "vocab",
                f"the tokenizer has {length} tokens but the base's vocab_size is "
                f"{vocab['base_config']}: ids from {vocab['base_config']} on collide with CODI's "
                "pad, bot and eot rows",
            )
        ]
    return []


def _load(options: DoctorOptions, model: str, checkpoint: Path | None) -> dict[str, Any]:
    """Load as every command does; its refusal is a finding, not the end of the report."""
    from opcircuits.codi.checkpoint import load_codi

    try:
        codi, _ = load_codi(
            model,
            checkpoint=checkpoint,
            base=options.base,
            dtype=options.dtype,
            device=options.device,
            merge=False,
            **_flags(options),
        )
    except BUILD_ERRORS as exc:
        return {"loaded": False, "refusal": _reason(exc)}
    weight = codi.prj[1].weight
    params = sum(p.numel() for p in codi.parameters())
    return {"loaded": True, "device": str(weight.device), "parameters": params}


def _flags(options: DoctorOptions) -> dict[str, Any]:
    return {
        "num_latent": options.num_latent,
        "remove_eos": options.remove_eos,
        "lora_alpha": options.lora_alpha,
    }


def diagnose(options: DoctorOptions) -> dict[str, Any]:
    """The report: where each piece came from, the files with their sha256, the keys taken from
    the checkpoint and from the base, the config with each setting's source, the versions, and
    `suspicious`: every finding (empty when nothing looks wrong)."""
    from opcircuits.codi.resolve import local_folders, resolve

    model, checkpoint = model_names(options)
    report: dict[str, Any] = {
        "report": MARKER,
        "model": model,
        "dtype": options.dtype,
        "versions": package_versions(PACKAGES, with_python=True),
        "suspicious": [],
    }
    found = report["suspicious"]
    try:
        resolved, weights = resolve(
            model, checkpoint=checkpoint, base=options.base, **_flags(options)
        )
    except OpcircuitsError as exc:
        found.append(_finding("unresolved", str(exc)))
        report["files"] = _files([("given", f) for f in local_folders(model, checkpoint)])
        return report
    folders = _folders(resolved)
    report["where"] = {
        "checkpoint": resolved.checkpoint,
        "checkpoint_dir": str(resolved.checkpoint_dir),
        "weights": str(resolved.weights_path),
        "base": resolved.base,
        "base_dir": str(resolved.base_dir),
    }
    report["files"] = _files(folders)
    found += _empty_configs(folders)
    flags = {**_flags(options), "base": options.base}
    report["config"] = config_sources(model, resolved, weights, flags)
    report["weights"] = {
        "tensors": len(weights),
        "dtypes": dict(Counter(str(t.dtype).removeprefix("torch.") for t in weights.values())),
        "non_finite": _non_finite(weights),
    }
    found += [
        _finding("non_finite", f"{b['key']} holds {b['nan']} NaN and {b['inf']} inf values")
        for b in report["weights"]["non_finite"]
    ]
    try:
        report["keys"], more = _structure(resolved, weights)
        found += more
    except BUILD_ERRORS as exc:
        report["keys"] = None
        found.append(_finding("structure", _reason(exc)))
    del weights
    vocab = report["keys"]["vocab"] if report["keys"] else None
    found += _tokenizer_facts(resolved, vocab)
    report["load"] = _load(options, model, checkpoint)
    if not report["load"]["loaded"]:
        found.append(_finding("loader_refuses", report["load"]["refusal"]))
    return report
