"""Where a benchmark's time goes (`intervene.py --profile`, `extract.py --profile`; not a test).

The phases of the code measured are wrapped, for the profiled run only, in
`torch.profiler.record_function` ranges (the code itself is unchanged). For a causal sweep
(`SWEEP_PHASES`): prefill (`Engine.open_batch`), latent steps (`Engine.latents`), draft
verification (`Engine._verify`), answer decoding (`Engine._greedy`), cache copies
(`Engine.subset`), the answer bookkeeping around them (`Engine.decode`), the intervention hooks
(`Hooks._apply` and the attention-mask hook), and the rest of `run_interventions` (edits,
outcomes). For extraction (`EXTRACT_PHASES`): prefill, the latent steps with the answer prompt,
answer decoding (`codi.latent`), the shard written to disk (`StoreWriter.write_shard`), and the
rest of `extract_shard`. Each phase's time is exclusive (a nested phase is counted in its own
row) and split into the torch operators it ran (top-level `aten::` ops, their children included)
and what is left: Python, module calls, hooks, transformers' glue.

The profiler times events on the wall clock of this process's thread, which on a shared machine
also counts other processes' turns, so each phase's exclusive CPU time of the thread
(`time.thread_time`) is recorded too (`<phase>_cpu_s`, `_cpu_share`): the shares to read. The
profiler's own overhead (a few µs per op) is in the operator rows; run it with one thread.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import Counter
from collections.abc import Callable, Iterator

from torch.profiler import ProfilerActivity, profile, record_function

from opcircuits.codi import latent
from opcircuits.codi.interventions import engine as engine_mod
from opcircuits.codi.interventions import hooks as hooks_mod
from opcircuits.store import writer as store_writer

WHOLE = "whole"  # the range around the whole profiled call; its own time is "other"
SWEEP_PHASES = {
    "prefill": (engine_mod.Engine, "open_batch"),
    "latent steps": (engine_mod.Engine, "latents"),
    "draft verification": (engine_mod.Engine, "_verify"),
    "answer decoding": (engine_mod.Engine, "_greedy"),
    "cache copies": (engine_mod.Engine, "subset"),
    "answer bookkeeping": (engine_mod.Engine, "decode"),
    "hooks": (hooks_mod.Hooks, "_apply"),
}
EXTRACT_PHASES = {
    "prefill": (latent, "prefill"),
    "latent steps": (latent, "_latents_and_answer"),
    "answer decoding": (latent, "_greedy_answers"),
    "store writing": (store_writer.StoreWriter, "write_shard"),
}
# Matrix products (and the attention kernels built on them): the work the FLOP count counts.
MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product")

# Exclusive CPU seconds of this thread per phase.
_cpu: Counter[str] = Counter()
_stack: list[list] = []  # [label, thread time at entry, CPU time of phases nested in it]


def _ranged(label: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        frame = [label, time.thread_time(), 0.0]
        _stack.append(frame)
        try:
            with record_function(label):
                return fn(*args, **kwargs)
        finally:
            _stack.pop()
            spent = time.thread_time() - frame[1]
            _cpu[label] += spent - frame[2]
            if _stack:
                _stack[-1][2] += spent

    return wrapper


@contextlib.contextmanager
def instrumented(phases: dict) -> Iterator[None]:
    """The phases wrapped in ranges while inside (with the sweep's, the attention-mask hook
    too); the originals restored after."""
    saved = [(owner, name, getattr(owner, name)) for owner, name in phases.values()]
    mask = hooks_mod.Hooks._mask
    try:
        for label, (owner, name) in phases.items():
            setattr(owner, name, _ranged(label, getattr(owner, name)))
        if "hooks" in phases:
            hooks_mod.Hooks._mask = lambda self, block: _ranged("hooks", mask(self, block))
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
        hooks_mod.Hooks._mask = mask


@contextlib.contextmanager
def session(phases: dict, enabled: bool = True) -> Iterator[dict]:
    """Profile the block (when `enabled`); the dict it yields holds the breakdown after it."""
    figures: dict = {}
    if not enabled:
        yield figures
        return
    _cpu.clear()
    c0, t0 = time.process_time(), time.perf_counter()
    with instrumented(phases), profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function(WHOLE):
            frame = [WHOLE, time.thread_time(), 0.0]
            _stack.append(frame)
            try:
                yield figures
            finally:
                _stack.pop()
                _cpu[WHOLE] += time.thread_time() - frame[1] - frame[2]
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    figures.update(breakdown(prof.events(), list(phases)))
    thread = sum(_cpu.values())
    for label in (*phases, WHOLE):
        name = "other" if label == WHOLE else label
        figures[f"{name}_cpu_s"] = round(_cpu[label], 3)
        figures[f"{name}_cpu_share"] = round(_cpu[label] / thread, 3) if thread else 0.0
    figures["profiled_cpu_s"] = round(cpu, 1)  # the process, the profiler's own work included
    figures["profiled_wall_s"] = round(wall, 1)


def breakdown(events, phases: list[str]) -> dict:
    """Per phase: exclusive milliseconds (thread wall clock), of which in torch operators; the
    share in operators and in matrix products; the operators with the most own time."""
    labels = (*phases, WHOLE)

    def phase_of(event) -> str | None:  # the innermost phase range enclosing an event
        while event is not None:
            if event.name in labels:
                return "other" if event.name == WHOLE else event.name
            event = event.cpu_parent
        return None

    inclusive: Counter[str] = Counter()
    nested: Counter[str] = Counter()  # time of the phases directly inside a phase
    ops: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0.0
    for e in events:
        if e.name == WHOLE:
            total += e.cpu_time_total
        elif e.name in labels:
            inclusive[e.name] += e.cpu_time_total
            outer = phase_of(e.cpu_parent)
            if outer is not None:
                nested[outer] += e.cpu_time_total
        else:
            own[e.name] += e.self_cpu_time_total
            parent = e.cpu_parent
            if parent is None or parent.name in labels:  # a top-level op of its phase
                phase = phase_of(parent)
                if phase is not None:
                    ops[phase] += e.cpu_time_total
    figures: dict = {"profiled_ms": round(total / 1e3, 1)}
    for label in (*phases, "other"):
        exclusive = (total if label == "other" else inclusive[label]) - nested[label]
        figures[f"{label}_ms"] = round(exclusive / 1e3, 1)
        figures[f"{label}_share"] = round(exclusive / total, 3) if total else 0.0
        figures[f"{label}_in_ops_ms"] = round(ops[label] / 1e3, 1)
    op_time = sum(ops.values())
    matmul = sum(v for k, v in own.items() if k.startswith(MATMUL))
    figures["in_torch_ops_share"] = round(op_time / total, 3) if total else 0.0
    figures["in_matmul_share"] = round(matmul / total, 3) if total else 0.0
    figures["top_ops"] = ", ".join(f"{k} {v / 1e3:.0f} ms" for k, v in own.most_common(10))
    other = Counter({k: v for k, v in own.items() if not k.startswith(MATMUL)})
    figures["top_non_matmul_ops"] = ", ".join(
        f"{k} {v / 1e3:.0f} ms" for k, v in other.most_common(8)
    )
    return figures
