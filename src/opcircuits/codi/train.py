"""CODI training: continuous chain of thought via self-distillation.

One model plays two roles on every batch:
- teacher: cross-entropy on question + explicit chain of thought (without its last step, as the
  official training; `include_last_cot` keeps it) + answer;
- student: question, bot, K latent steps (each the projected final hidden state of the previous
  step, fed back as the next input embedding), eot, then cross-entropy on the answer;
- distillation: smooth-L1 (or L2) between the student's and the teacher's hidden states at the
  token that predicts the answer value's first token, at every layer (HF `hidden_states`, embeddings
  included), teacher side detached, each layer's loss divided by the teacher states' std (its
  square for l2, as official), averaged over layers and multiplied by `distill_factor`.
total = student CE + distillation + teacher CE × `teacher_factor`.

Checkpoints: `OUT/last/` is a released-layout checkpoint (`model.safetensors` + `codi_config.json`
[+ base config and tokenizer]) plus the training state (optimizer, scheduler, step, RNG states;
safetensors + JSON, never pickle: `train_state.py`), so rerunning the same command after a crash
resumes exactly. The final model is also written to `OUT/`.
Works under `accelerate launch` (data-parallel; every process sees a disjoint slice of each batch).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from opcircuits.codi.checkpoint import load_weights_strict, read_weights
from opcircuits.codi.config import CodiConfig
from opcircuits.codi.model import WEIGHTS_NAME, CodiModel, cache_arg_name
from opcircuits.codi.train_data import IGNORE, TokenExample, build_examples, read_train_data
from opcircuits.codi.train_state import (
    find_checkpoint,
    load_optimizer,
    load_scheduler,
    read_state,
    restore_rng,
    save_rng,
    save_state,
)
from opcircuits.errors import OpcircuitsError
from opcircuits.files import write_json_atomic
from opcircuits.options import TrainOptions
from opcircuits.progress import stage_progress

log = logging.getLogger(__name__)

LOG_NAME = "train_log.jsonl"
DATA_SUMMARY_NAME = "train_data.json"


# --- batches -------------------------------------------------------------------------------


def collate(examples: list[TokenExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad one micro-batch: encoder on the left (the latent loop appends after it), teacher and
    decoder on the right (their labels and gather positions stay put)."""

    def pad(seqs: list[list[int]], value: int, left: bool) -> torch.Tensor:
        width = max(len(s) for s in seqs)
        rows = [
            ([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s)))
            for s in seqs
        ]
        return torch.tensor(rows, dtype=torch.long)

    enc = [e.encoder_ids for e in examples]
    dec = [e.decoder_ids for e in examples]
    tea = [e.teacher_ids for e in examples]
    return {
        "encoder_ids": pad(enc, pad_id, left=True),
        "encoder_mask": pad([[1] * len(s) for s in enc], 0, left=True),
        "decoder_ids": pad(dec, pad_id, left=False),
        "decoder_mask": pad([[1] * len(s) for s in dec], 0, left=False),
        "decoder_labels": pad(dec, IGNORE, left=False),
        "teacher_ids": pad(tea, pad_id, left=False),
        "teacher_mask": pad([[1] * len(s) for s in tea], 0, left=False),
        "teacher_labels": pad([e.teacher_labels for e in examples], IGNORE, left=False),
        "teacher_pos": torch.tensor([e.teacher_pos for e in examples], dtype=torch.long),
        "student_pos": torch.tensor([e.student_pos for e in examples], dtype=torch.long),
    }


def batch_indices(
    n: int, step: int, micro: int, rank: int, options: TrainOptions, world: int
) -> list[int]:
    """Example indices of (optimizer step, micro-step, process): a seeded permutation per epoch,
    consumed as one endless stream, so the data order depends only on the seed and the step."""
    per_step = options.batch_size * options.grad_accum * world
    start = step * per_step + (micro * world + rank) * options.batch_size
    out = []
    for pos in range(start, start + options.batch_size):
        epoch, i = divmod(pos, n)
        out.append(int(_permutation(n, options.seed, epoch)[i]))
    return out


@functools.lru_cache(maxsize=2)
def _permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The example order of one epoch (memoised: a step only ever needs this or the next one)."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen)


# --- the objective -------------------------------------------------------------------------


class CodiObjective(nn.Module):
    """The CODI loss as one module (so data-parallel wrappers see a single forward)."""

    def __init__(self, model: CodiModel, options: TrainOptions):
        super().__init__()
        self.model = model
        self.num_latent = options.num_latent
        self.distill_factor = options.distill_factor
        self.teacher_factor = options.teacher_factor
        self.distill_loss = options.distill_loss

    def forward(
        self, batch: dict[str, torch.Tensor], student: bool = True
    ) -> dict[str, torch.Tensor]:
        lm = self.model.codi
        cache_kw = cache_arg_name(self.model.lm)
        teacher = lm(
            input_ids=batch["teacher_ids"],
            attention_mask=batch["teacher_mask"],
            output_hidden_states=student,
            use_cache=False,
        )
        teacher_ce = _shifted_ce(teacher.logits, batch["teacher_labels"])
        zero = teacher_ce.new_zeros(())
        if not student:
            # keep every trainable parameter in the graph (data-parallel reducers expect it)
            unused = sum(p.sum() for p in self.model.prj.parameters()) * 0.0
            total = teacher_ce * self.teacher_factor + unused
            return {"loss": total, "student_ce": zero, "distill": zero, "teacher_ce": teacher_ce}

        # student: question + bot, K latent steps, then eot + answer, one KV cache throughout
        enc_mask = batch["encoder_mask"]
        positions = (enc_mask.cumsum(-1) - 1).clamp(min=0)
        out = lm(
            input_ids=batch["encoder_ids"],
            attention_mask=enc_mask,
            position_ids=positions,
            use_cache=True,
            output_hidden_states=True,
            logits_to_keep=1,
        )
        cache = out.past_key_values
        mask = enc_mask
        next_pos = positions[:, -1:] + 1
        hidden = out.hidden_states[-1][:, -1:, :]
        for _ in range(self.num_latent):
            latent = self.model.project(hidden)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = lm(
                inputs_embeds=latent,
                attention_mask=mask,
                position_ids=next_pos,
                **{cache_kw: cache},
                use_cache=True,
                output_hidden_states=True,
                logits_to_keep=1,
            )
            cache = out.past_key_values
            next_pos = next_pos + 1
            hidden = out.hidden_states[-1][:, -1:, :]
        dec_mask = batch["decoder_mask"]
        dec_pos = next_pos + torch.arange(dec_mask.shape[1], device=dec_mask.device)[None, :]
        out = lm(
            inputs_embeds=self.model.embed(batch["decoder_ids"]),
            attention_mask=torch.cat([mask, dec_mask], dim=1),
            position_ids=dec_pos,
            **{cache_kw: cache},
            use_cache=True,
            output_hidden_states=True,
        )
        student_ce = _shifted_ce(out.logits, batch["decoder_labels"])

        rows = torch.arange(dec_mask.shape[0], device=dec_mask.device)
        students = [h[rows, batch["student_pos"]] for h in out.hidden_states]
        teachers = [h[rows, batch["teacher_pos"]].detach() for h in teacher.hidden_states]
        stds = _global_std(teachers)
        elements = _global_sum(teachers[0].new_tensor(float(teachers[0].numel())))
        distill = zero
        for s, t, std in zip(students, teachers, stds, strict=True):
            distill = distill + layer_distill_loss(s, t, std, elements, self.distill_loss)
        distill = distill / len(students) * self.distill_factor
        total = student_ce + distill + teacher_ce * self.teacher_factor
        return {
            "loss": total,
            "student_ce": student_ce,
            "distill": distill,
            "teacher_ce": teacher_ce,
        }


# Every loss is this process's share of the loss of the whole micro-batch (all processes' slices
# together): local sums divided by global counts, and the distillation std taken over the global
# batch. The shares of all processes add up to what one process holding the whole micro-batch
# computes, so N processes × batch B train exactly like one process × batch N·B (the training
# loop scales by N because data-parallel wrappers average gradients).


def layer_distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, std: torch.Tensor, elements: Any, kind: str
) -> torch.Tensor:
    """One layer's distillation loss (this process's share): smooth-L1 or squared error summed
    over its elements, divided by the global element count and by the teacher states' std —
    twice for l2, as the official CODI (`distill_loss_div_std` divides an L2 loss by std once
    more), which makes the l2 loss invariant to the scale of the hidden states."""
    if kind == "l2":
        return F.mse_loss(student, teacher, reduction="sum") / elements / (std * std)
    return F.smooth_l1_loss(student, teacher, reduction="sum") / elements / std


def _global_sum(x: torch.Tensor) -> torch.Tensor:
    """`x` summed over the processes of a data-parallel run (itself in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.detach().clone()
        dist.all_reduce(x)
    return x


def _global_std(states: list[torch.Tensor]) -> list[torch.Tensor]:
    """Unbiased std of each layer's states over the global micro-batch (one all-reduce of
    count, sum and sum of squares per layer, in float64 against cancellation)."""
    moments = torch.stack(
        [
            torch.stack([s.new_tensor(float(s.numel())), s.sum(), (s * s).sum()]).double()
            for s in [t.detach().double() for t in states]
        ]
    )
    n, total, squares = _global_sum(moments).unbind(-1)
    var = (squares - total * total / n) / (n - 1)
    return [v.to(states[0].dtype) for v in var.clamp(min=0).sqrt()]


def _shifted_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: this process's token losses summed, divided by the number of
    target tokens of the global micro-batch."""
    target = labels[:, 1:].reshape(-1)
    count = _global_sum((target != IGNORE).sum().to(torch.float32)).clamp(min=1)
    total = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        target,
        ignore_index=IGNORE,
        reduction="sum",
    )
    return total / count


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
    if main:
        write_json_atomic(Path(options.out) / DATA_SUMMARY_NAME, summary)
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


def train(options: TrainOptions) -> Path:
    """Train (or resume training) a CODI model; returns `options.out`, holding the final
    checkpoint in the released layout once all steps are done."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if options.threads:
        torch.set_num_threads(options.threads)
    # torchrun-style launches (`accelerate launch --multi_gpu`) on a machine without CUDA: run the
    # processes on the CPU with gloo instead of silently training independent copies
    cpu = "LOCAL_RANK" in os.environ and not torch.cuda.is_available()
    acc = Accelerator(mixed_precision=options.mixed_precision, cpu=cpu or None)
    out = Path(options.out)
    resume = find_checkpoint(out)
    state = None
    if resume is not None:
        state = read_state(resume)
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
                f"checkpoint written by {state['world']} processes, resumed "
                f"with {acc.num_processes}",
                path=resume,
            )

    set_seed(options.seed)
    model, tokenizer = _build_model(options)
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
    step = start
    log_path = out / LOG_NAME
    t0 = time.time()
    with _progress(acc.is_main_process, total, start) as advance:
        for step in range(start, end):
            student = step >= options.teacher_only_steps
            sums = torch.zeros(4)
            for micro in range(options.grad_accum):
                idx = batch_indices(
                    len(examples), step, micro, acc.process_index, options, acc.num_processes
                )
                batch = {
                    k: v.to(acc.device)
                    for k, v in collate([examples[i] for i in idx], model.pad_id).items()
                }
                sync = micro == options.grad_accum - 1
                ctx = acc.no_sync(objective) if not sync else contextlib.nullcontext()
                with ctx:
                    losses = objective(batch, student=student)
                    # data-parallel wrappers average gradients over processes; the losses are
                    # already shares of the global batch, so undo the average
                    acc.backward(losses["loss"] * acc.num_processes / options.grad_accum)
                sums += torch.stack(
                    [
                        losses[k].detach().float().cpu()
                        for k in ("loss", "student_ce", "distill", "teacher_ce")
                    ]
                )
            grad_norm = acc.clip_grad_norm_(objective.parameters(), options.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            means = acc.reduce(sums.to(acc.device) / options.grad_accum, "sum").cpu().tolist()
            record = {
                "step": step + 1,
                "loss": means[0],
                "student_ce": means[1],
                "distill": means[2],
                "teacher_ce": means[3],
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "elapsed_s": round(time.time() - t0, 2),
            }
            if acc.is_main_process:
                out.mkdir(parents=True, exist_ok=True)
                with open(log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
                advance(record)
            done = step + 1
            if done % options.save_every == 0 or done == end:
                _save_checkpoint(
                    out,
                    acc.unwrap_model(objective).model,
                    tokenizer,
                    optimizer,
                    scheduler,
                    done,
                    options,
                    acc,
                )
    if end == total:
        if acc.is_main_process:
            acc.unwrap_model(objective).model.save_pretrained(
                out, tokenizer=tokenizer if model.config.base == "." else None
            )
            log.info("finished %d steps; final model in %s", total, out)
        acc.wait_for_everyone()
    elif acc.is_main_process:
        log.info("stopped after step %d of %d; rerun the same command to resume", end, total)
    return out


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
            )
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
