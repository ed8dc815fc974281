"""The CODI objective: one forward computes the teacher, student and distillation losses.

- teacher: cross-entropy on question + explicit chain of thought + answer;
- student: question, bot, K latent steps (each the projected final hidden state of the previous
  step, fed back as the next input embedding), eot, then cross-entropy on the answer;
- distillation: smooth-L1 (or L2) between the student's and the teacher's hidden states at the
  token that predicts the answer value's first token, at every layer (HF `hidden_states`,
  embeddings included), teacher side detached, each layer's loss divided by the teacher states'
  std (its square for l2, as official), averaged over layers and multiplied by `distill_factor`.
- step supervision (`step_factor` > 0): cross-entropy of each thought's LM-head output against
  its step's result (`examples.step_targets`), as SIM-CoT supervises each latent with its step.
total = student CE + distillation + teacher CE × `teacher_factor` + step CE × `step_factor`.

The routing options of the config (`codi.masks`) hold here as at inference: a bottleneck model's
eot and answer never see the prompt, a twin's thoughts neither see it nor get the projection.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from opcircuits.codi.masks import answer_mask, thought_mask
from opcircuits.codi.model import CodiModel, cache_arg_name
from opcircuits.codi.training.examples import IGNORE
from opcircuits.options import TrainOptions


class CodiObjective(nn.Module):
    """The CODI loss as one module (so data-parallel wrappers see a single forward)."""

    def __init__(self, model: CodiModel, options: TrainOptions):
        super().__init__()
        self.model = model
        self.num_latent = options.num_latent
        self.distill_factor = options.distill_factor
        self.teacher_factor = options.teacher_factor
        self.distill_loss = options.distill_loss
        self.step_factor = options.step_factor

    def forward(
        self, batch: dict[str, torch.Tensor], student: bool = True
    ) -> dict[str, torch.Tensor]:
        # The teacher runs only where a loss reads it (a student-only recipe sets both to 0).
        teacher = None
        if not student or self.teacher_factor or self.distill_factor:
            teacher = self.model.codi(
                input_ids=batch["teacher_ids"],
                attention_mask=batch["teacher_mask"],
                output_hidden_states=student,
                use_cache=False,
            )
        if not student:
            assert teacher is not None
            teacher_ce = _shifted_ce(teacher.logits, batch["teacher_labels"])
            zero = teacher_ce.new_zeros(())
            # keep every trainable parameter in the graph (data-parallel reducers expect it)
            extra = [self.model.thought_constant] if self.model.thought_constant is not None else []
            unused = sum(p.sum() for p in [*self.model.prj.parameters(), *extra]) * 0.0
            total = teacher_ce * self.teacher_factor + unused
            return {
                "loss": total,
                "student_ce": zero,
                "distill": zero,
                "teacher_ce": teacher_ce,
                "step_ce": zero,
            }

        out, step_logits = self._student(batch)
        student_ce = _shifted_ce(out.logits, batch["decoder_labels"])
        zero = student_ce.new_zeros(())
        teacher_ce = distill = step_ce = zero
        if teacher is not None:
            teacher_ce = _shifted_ce(teacher.logits, batch["teacher_labels"])
            distill = self._distill(batch, out, teacher)
        if self.step_factor > 0 and "step_ids" in batch:
            step_ce = _token_ce(torch.stack(step_logits, dim=1), batch["step_ids"])
        total = student_ce + distill + teacher_ce * self.teacher_factor + step_ce * self.step_factor
        return {
            "loss": total,
            "student_ce": student_ce,
            "distill": distill,
            "teacher_ce": teacher_ce,
            "step_ce": step_ce,
        }

    def _distill(self, batch: dict[str, torch.Tensor], out: Any, teacher: Any) -> torch.Tensor:
        """The distillation loss at the answer value's first token, every layer."""
        rows = torch.arange(batch["decoder_mask"].shape[0], device=batch["decoder_mask"].device)
        students = [h[rows, batch["student_pos"]] for h in out.hidden_states]
        teachers = [h[rows, batch["teacher_pos"]].detach() for h in teacher.hidden_states]
        stds = _global_std(teachers)
        elements = _global_sum(teachers[0].new_tensor(float(teachers[0].numel())))
        distill = students[0].new_zeros(())
        for s, t, std in zip(students, teachers, stds, strict=True):
            distill = distill + layer_distill_loss(s, t, std, elements, self.distill_loss)
        return distill / len(students) * self.distill_factor

    def _student(self, batch: dict[str, torch.Tensor]) -> tuple[Any, list[torch.Tensor]]:
        """The student's forward: its answer output and each thought's LM-head logits [B, V]."""
        lm = self.model.codi
        cache_kw = cache_arg_name(self.model.lm)
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
        config, T = self.model.config, enc_mask.shape[1]
        next_pos = positions[:, -1:] + 1
        hidden = out.hidden_states[-1][:, -1:, :]
        step_logits = []
        for _ in range(self.num_latent):
            latent = self.model.project(hidden)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = lm(
                inputs_embeds=latent,
                attention_mask=thought_mask(config, mask, T),
                position_ids=next_pos,
                **{cache_kw: cache},
                use_cache=True,
                output_hidden_states=True,
                logits_to_keep=1,
            )
            cache = out.past_key_values
            next_pos = next_pos + 1
            hidden = out.hidden_states[-1][:, -1:, :]
            step_logits.append(out.logits[:, -1])
        dec_mask = batch["decoder_mask"]
        dec_pos = next_pos + torch.arange(dec_mask.shape[1], device=dec_mask.device)[None, :]
        out = lm(
            inputs_embeds=self.model.embed(batch["decoder_ids"]),
            attention_mask=answer_mask(config, torch.cat([mask, dec_mask], dim=1), T),
            position_ids=dec_pos,
            **{cache_kw: cache},
            use_cache=True,
            output_hidden_states=True,
        )
        return out, step_logits


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
    return _token_ce(logits[:, :-1], labels[:, 1:])


def _token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits [B, N, V] against targets [B, N] (IGNORE left out): this
    process's sum divided by the global micro-batch's number of targets."""
    target = targets.reshape(-1)
    count = _global_sum((target != IGNORE).sum().to(torch.float32)).clamp(min=1)
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), target, ignore_index=IGNORE, reduction="sum"
    )
    return total / count
