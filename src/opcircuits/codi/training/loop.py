"""CODI training: continuous chain of thought via self-distillation.

One model plays teacher (explicit chain of thought, without its last step as the official
training; `include_last_cot` keeps it) and student (K continuous thoughts) on every batch, and
the student's hidden states are distilled towards the teacher's (the loss: `objective.py`).

Checkpoints: `OUT/last/` is a released-layout checkpoint (`model.safetensors` + `codi_config.json`
[+ base config and tokenizer]) plus the training state (optimizer, scheduler, step, RNG states;
safetensors + JSON, never pickle: `train_state.py`), so rerunning the same command after a crash
resumes exactly. The final model is also written to `OUT/`. OUT holds only what runs of `train`
wrote there (listed in `files.OWNED_LIST`): a folder holding anyone's other files, or a log that
is not a training log, is refused before the first write.
Works under `accelerate launch` (data-parallel; every process sees a disjoint slice of each batch).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from opcircuits.codi.config import CodiConfig
from opcircuits.codi.model import WEIGHTS_NAME, CodiModel
from opcircuits.codi.strict import load_weights_strict
from opcircuits.codi.training.batches import batch_indices, collate
from opcircuits.codi.training.examples import (
    IGNORE,
    TokenExample,
    build_examples,
    read_train_data,
)
from opcircuits.codi.training.objective import CodiObjective
from opcircuits.codi.training.outdir import (
    _check_layers,
    _check_out,
    _read_log,
    _record,
    _refuse_inputs_as_outputs,
    _trim_log,
)
from opcircuits.codi.training.state import (
    find_checkpoint,
    load_optimizer,
    load_scheduler,
    read_state,
    restore_rng,
    save_rng,
    save_state,
)
from opcircuits.codi.weights import read_weights
from opcircuits.errors import OpcircuitsError
from opcircuits.files import write_json_atomic
from opcircuits.options import TrainOptions
from opcircuits.progress import stage_progress

log = logging.getLogger(__name__)

LOG_NAME = "train_log.jsonl"
# The losses each step logs (step_ce only where step supervision is on).
LOSSES = ("loss", "student_ce", "distill", "teacher_ce", "step_ce")
DATA_SUMMARY_NAME = "train_data.json"


# --- checkpoints ---------------------------------------------------------------------------


def _save_checkpoint(
    out: Path,
    model: CodiModel,
    tokenizer: Any,
    optimizer: Any,
    scheduler: Any,
    step: int,
    options: TrainOptions,
    acc: Any,
) -> None:
    """Write OUT/last/ as a whole: everything goes to OUT/last.tmp/, then one rename swaps it in,
    so a crash at any moment leaves a complete previous or new checkpoint."""
    tmp, last, old = out / "last.tmp", out / "last", out / "last.old"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, tokenizer=tokenizer if model.config.base == "." else None)
    acc.wait_for_everyone()
    save_rng(tmp, acc.process_index)
    if acc.is_main_process:
        save_state(tmp, optimizer, scheduler, step, options.fingerprint(), acc.num_processes)
    acc.wait_for_everyone()
    if acc.is_main_process:
        if last.exists():
            os.replace(last, old)
        os.replace(tmp, last)
        shutil.rmtree(old, ignore_errors=True)
        _record(out)
    acc.wait_for_everyone()


# --- the loop ------------------------------------------------------------------------------


def _build_model(options: TrainOptions) -> tuple[CodiModel, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(options.base)
        if options.from_scratch:
            base = AutoModelForCausalLM.from_config(
                AutoConfig.from_pretrained(options.base), dtype=torch.float32
            )
        else:
            base = AutoModelForCausalLM.from_pretrained(options.base, dtype=torch.float32)
    except OSError as exc:
        raise OpcircuitsError(f"cannot load the base model: {exc}", field="base") from exc
    if options.from_scratch:
        base_ref = "."  # the checkpoint carries the base config and tokenizer itself
    elif Path(options.base).is_dir():
        base_ref = str(Path(options.base).resolve())
    else:
        base_ref = options.base
    layers = list(options.layers) if options.layers else None
    config = CodiConfig(
        base=base_ref,
        num_latent=options.num_latent,
        prj_dim=options.prj_dim,
        prj_no_ln=options.prj_no_ln,
        prj_dropout=options.prj_dropout,
        lora_r=options.lora_r,
        lora_alpha=options.lora_alpha,
        remove_eos=options.remove_eos,
        layers=layers,
        answer_reads_prompt=options.answer_reads_prompt,
        thoughts_read_prompt=options.thoughts_read_prompt,
        thought_input=options.thought_input,
    )
    return CodiModel.from_base(config, base), tokenizer


def _training_examples(
    options: TrainOptions, tokenizer: Any, model: CodiModel, main: bool
) -> list[TokenExample]:
    """The tokenized training examples; what was left out, and why, is logged and written to
    OUT/train_data.json (never dropped silently)."""
    data = read_train_data(options.data)
    problems = data.examples[: options.limit] if options.limit else data.examples
    examples, dropped = build_examples(
        problems,
        tokenizer,
        model.bot_id,
        model.eot_id,
        options.max_tokens,
        options.remove_eos,
        options.include_last_cot,
        options.num_latent if options.step_factor > 0 else 0,
    )
    data.dropped.update(dropped)
    summary = {
        "source": data.source,
        "split": data.split,
        "rows": data.rows,
        "other_splits_skipped": data.other_splits,
        "limit": options.limit,
        "problems": len(problems),
        "examples": len(examples),
        "dropped": data.dropped,
        "max_tokens": options.max_tokens,
        "include_last_cot": options.include_last_cot,
    }
    if options.step_factor > 0:
        targets = [t for e in examples for t in e.step_ids]
        summary["step_targets"] = len(targets)
        summary["step_targets_not_one_token"] = sum(t == IGNORE for t in targets)
    if main:
        out = Path(options.out)
        out.mkdir(parents=True, exist_ok=True)
        _record(out)  # the folder is the run's before its first file is written
        write_json_atomic(out / DATA_SUMMARY_NAME, summary)
        left_out = sum(data.dropped.values())
        (log.warning if left_out else log.info)(
            "training data %s: %d rows of split %r, %d used; left out: %s",
            data.source,
            data.rows,
            data.split,
            len(examples),
            ", ".join(f"{n} {reason}" for reason, n in data.dropped.items()),
        )
    return examples


def _optimizer(model: nn.Module, options: TrainOptions) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": options.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=options.lr,
    )


def _cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _check_resume(resume: Path, state: dict[str, Any], options: TrainOptions, acc: Any) -> None:
    """A checkpoint resumes only with the options and the process count that wrote it."""
    if state["options"] != options.fingerprint():
        diff = sorted(
            k
            for k in set(state["options"]) | set(options.fingerprint())
            if state["options"].get(k) != options.fingerprint().get(k)
        )
        raise OpcircuitsError(
            f"{resume} was trained with different options {diff}; use "
            "the same options to resume, or another --out",
            path=resume,
        )
    if state["world"] != acc.num_processes:
        raise OpcircuitsError(
            f"checkpoint written by {state['world']} processes, resumed with {acc.num_processes}",
            path=resume,
        )


def _accumulate(
    objective: Any,
    examples: list[TokenExample],
    step: int,
    pad_id: int,
    options: TrainOptions,
    acc: Any,
) -> torch.Tensor:
    """The forward and backward passes of one optimizer step's micro-batches; returns the summed
    losses (`LOSSES`) of this process."""
    student = step >= options.teacher_only_steps
    sums = torch.zeros(len(LOSSES))
    for micro in range(options.grad_accum):
        idx = batch_indices(
            len(examples), step, micro, acc.process_index, options, acc.num_processes
        )
        batch = {
            k: v.to(acc.device) for k, v in collate([examples[i] for i in idx], pad_id).items()
        }
        sync = micro == options.grad_accum - 1
        ctx = acc.no_sync(objective) if not sync else contextlib.nullcontext()
        with ctx:
            losses = objective(batch, student=student)
            # data-parallel wrappers average gradients over processes; the losses are
            # already shares of the global batch, so undo the average
            acc.backward(losses["loss"] * acc.num_processes / options.grad_accum)
        sums += torch.stack([losses[k].detach().float().cpu() for k in LOSSES])
    return sums


def _step(
    objective: Any,
    optimizer: Any,
    scheduler: Any,
    examples: list[TokenExample],
    step: int,
    pad_id: int,
    options: TrainOptions,
    acc: Any,
) -> dict[str, Any]:
    """One optimizer step; returns its log record (without the elapsed time)."""
    sums = _accumulate(objective, examples, step, pad_id, options, acc)
    # max_grad_norm 0: no clipping (the norm is still measured and logged)
    grad_norm = acc.clip_grad_norm_(objective.parameters(), options.max_grad_norm or math.inf)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    means = acc.reduce(sums.to(acc.device) / options.grad_accum, "sum").cpu().tolist()
    record = {"step": step + 1, **dict(zip(LOSSES, means, strict=True))}
    if not options.step_factor:  # logs of runs without step supervision stay as they were
        del record["step_ce"]
    return {**record, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}


def _accelerator(options: TrainOptions) -> Any:
    from accelerate import Accelerator

    if options.threads:
        torch.set_num_threads(options.threads)
    # torchrun-style launches (`accelerate launch --multi_gpu`) on a machine without CUDA: run the
    # processes on the CPU with gloo instead of silently training independent copies
    cpu = "LOCAL_RANK" in os.environ and not torch.cuda.is_available()
    return Accelerator(mixed_precision=options.mixed_precision, cpu=cpu or None)


def train(options: TrainOptions) -> Path:
    """Train (or resume training) a CODI model; returns `options.out`, holding the final
    checkpoint in the released layout once all steps are done."""
    from accelerate.utils import set_seed

    acc = _accelerator(options)
    out = Path(options.out)
    # Every check before the first write: inputs, the folder's owner, the checkpoint, the log.
    _refuse_inputs_as_outputs(options)
    _check_out(out)
    resume = find_checkpoint(out)
    state = read_state(resume) if resume is not None else None
    if resume is not None:
        _check_resume(resume, state, options, acc)
    log_path = out / LOG_NAME
    kept_log, before = _read_log(log_path, state["step"] if state is not None else 0)

    set_seed(options.seed)
    model, tokenizer = _build_model(options)
    _check_layers(options, model)
    acc.wait_for_everyone()  # every process has checked --out before the main one writes into it
    if resume is not None:
        path = resume / WEIGHTS_NAME
        load_weights_strict(model, read_weights(path), path=path)
    examples = _training_examples(options, tokenizer, model, acc.is_main_process)
    per_step = options.batch_size * options.grad_accum * acc.num_processes
    total = options.max_steps or math.ceil(options.epochs * len(examples) / per_step)
    warmup = round(options.warmup_ratio * total)
    optimizer = _optimizer(model, options)
    scheduler = _cosine_with_warmup(optimizer, warmup, total)
    start = 0
    if state is not None:
        load_optimizer(optimizer, resume, state)
        load_scheduler(scheduler, resume, state)
        start = state["step"]
    objective = CodiObjective(model, options)
    objective, optimizer = acc.prepare(objective, optimizer)
    if resume is not None:
        restore_rng(resume, acc.process_index)
    if acc.is_main_process:
        log.info(
            "training %d steps (%d examples, %d per step, warm-up %d, teacher-only %d), "
            "starting at step %d",
            total,
            len(examples),
            per_step,
            warmup,
            options.teacher_only_steps,
            start,
        )

    end = total if options.stop_after is None else min(total, start + options.stop_after)
    objective.train()
    # elapsed_s counts on from the resumed checkpoint, so the log holds the run's training time
    if acc.is_main_process:
        _trim_log(log_path, kept_log)
    t0 = time.time() - before
    with _progress(acc.is_main_process, total, start) as advance:
        for step in range(start, end):
            record = _step(
                objective, optimizer, scheduler, examples, step, model.pad_id, options, acc
            )
            record["elapsed_s"] = round(time.time() - t0, 2)
            if acc.is_main_process:
                out.mkdir(parents=True, exist_ok=True)
                with open(log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
                advance(record)
            done = step + 1
            if done % options.save_every == 0 or done == end:
                trained = acc.unwrap_model(objective).model
                _save_checkpoint(out, trained, tokenizer, optimizer, scheduler, done, options, acc)
    _finish(out, acc.unwrap_model(objective).model, tokenizer, end, total, acc)
    return out


def _finish(out: Path, model: CodiModel, tokenizer: Any, end: int, total: int, acc: Any) -> None:
    """After the last step: the final model in the released layout in OUT/."""
    if end == total:
        if acc.is_main_process:
            model.save_pretrained(out, tokenizer=tokenizer if model.config.base == "." else None)
            _record(out)
            log.info("finished %d steps; final model in %s", total, out)
        acc.wait_for_everyone()
    elif acc.is_main_process:
        log.info("stopped after step %d of %d; rerun the same command to resume", end, total)


class _progress:
    """A rich progress bar showing the three losses (main process only), plus a log line every
    25 steps for non-interactive runs (nohup, CI)."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.enabled, self.total, self.start = enabled, total, start
        self.bar: Any = None

    def __enter__(self) -> Any:
        if self.enabled:
            self.bar = stage_progress("train", status=True)
            self.bar.start()
            self.task = self.bar.add_task("", total=self.total, completed=self.start)

        def advance(rec: dict[str, Any]) -> None:
            text = (
                f"ce {rec['student_ce']:.3f} distill {rec['distill']:.3f} "
                f"teacher {rec['teacher_ce']:.3f}"
            ) + (f" step {rec['step_ce']:.3f}" if "step_ce" in rec else "")
            if self.bar is not None:
                self.bar.update(self.task, advance=1, description=text)
            if rec["step"] % 25 == 0:
                log.info(
                    "step %d/%d: %s (lr %.2e, %.1fs)",
                    rec["step"],
                    self.total,
                    text,
                    rec["lr"],
                    rec["elapsed_s"],
                )

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
