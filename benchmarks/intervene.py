"""Benchmark: an intervention sweep, the fast way against the naive way (not a test; the figures
go into `benchmarks/results/<name>.json`, default `intervene-MODEL`, which the docs render).

The sweep: every position × layer × {zero, mean} (by default) on N problems, or with
`--sweep default` the sweep `opcircuits intervene` runs by default (every kind with the routing
controls: joint ablations, both truncations, knockouts, path patching; the partners of a
`<data>.pairs.jsonl` beside the data as patch sources). In one run:
  (a) `opcircuits.codi.interventions.run_interventions` as shipped: each batch's prompt prefilled
      once, the clean loop run once, each intervention rerunning only the steps from its first
      site on (the cache before it reused), answers found by verifying drafts (gold, clean);
  (b) the naive way, the same code with `naive=True`: for every intervention the prompt and the
      whole loop again, the answer decoded token by token (and the gold answer teacher-forced).
(b) runs on the first `--naive-problems` problems (it is slow); (a) runs on those and on all N.
Both give the same answers (checked). Throughput = problem × intervention rows per second, wall
and per CPU-second of this process (the machine is shared; CPU time is the steadier number).
`--profile` runs only (a), on all N problems, under torch.profiler, and writes where its time goes
(`profiling.py`: prefill, latent steps, draft verification, decoding, hooks, Python) to
`intervene-SHAPE-profile`. `--device cuda --dtype bfloat16` runs on a GPU (peak GPU memory
recorded); `--shape llama1b` is LLaMA-3.2-1B's shape (for a GPU: `benchmarks/gpu.sh`).

    nice -n 10 python benchmarks/intervene.py --model demo --problems 600 --naive-problems 64
    nice -n 10 python benchmarks/intervene.py --model demo-arith --data data/synth_test.jsonl
    nice -n 10 python benchmarks/intervene.py --shape gpt2 --problems 6 --max-new-tokens 16
    nice -n 10 python benchmarks/intervene.py --model demo-arith --data data/synth_test_600.jsonl \
        --sweep default --problems 600 --naive-problems 64 --batch-size 64 --max-new-tokens 16
    nice -n 10 python benchmarks/intervene.py --shape gpt2 --data data/synth_test_600.jsonl \
        --sweep default --problems 16 --interventions 20 --spread --batch-size 16 \
        --max-new-tokens 16 --profile
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from opcircuits.codi import interventions as iv  # noqa: E402


def gsm8k_dir() -> Path:
    env = os.environ.get("OPCIRCUITS_GSM8K_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "gsm8k"


def load_problems(path: Path | None, n: int) -> list[iv.Problem]:
    """The first n problems of a problem file (our records, e.g. `opcircuits data synth`), or of
    GSM8K's test split (its original release)."""
    if path is not None:
        from opcircuits.data.io import read_problems

        records = read_problems(path)[:n]
        return [iv.Problem.from_record(r) for r in records]
    lines = (gsm8k_dir() / "test.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    out = []
    for i, line in enumerate(lines):
        row = json.loads(line)
        gold = row["answer"].split("####")[-1].strip().replace(",", "")
        out.append(iv.Problem(f"test_{i}", row["question"], gold, None))
    return out


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(args, device: torch.device):
    """The model (LoRA merged) in `--dtype` on `device`, its tokenizer and a name for it."""
    dtype = DTYPES[args.dtype]
    from opcircuits.codi.checkpoint import load_codi

    if args.shape:
        from extract import load_questions, make_model, make_tokenizer

        _, texts = load_questions(1)
        tok = make_tokenizer(texts)
        model = make_model(args.shape, len(tok), device)
        # Through the public loader, as users run it (it also fuses GPT-2's GELU): saved first.
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(Path(tmp), tokenizer=tok)
            del model
            model, tok = load_codi(tmp, device=device, dtype=dtype)
        return model, tok, f"random {args.shape} shape"

    model, tok = load_codi(args.model, device=str(device), dtype=args.dtype)
    return model, tok, args.model


def default_sweep(args, model, n: int):
    """The default sweep of `opcircuits intervene` on the first n problems of `--data` and their
    partners: (interventions, problems incl. partners, partner row per problem, steer pair)."""
    from opcircuits.intervene.partners import default_pairs, patch_sources, read_records
    from opcircuits.intervene.sweep import build_sweep
    from opcircuits.options import InterveneOptions

    options = InterveneOptions(data=args.data, out=Path("unused"))
    records = read_records(args.data)[:n]
    pairs = default_pairs(args.data)
    ids = {str(r["id"]) for r in records}
    wanted = {str(r.get("pair_id")) for r in records}
    partners = [
        r for r in (read_records(pairs) if pairs else [])
        if str(r["id"]) not in ids and str(r.get("pair_id")) in wanted
    ]  # fmt: skip
    source_rows = patch_sources(records, partners, None, pairs)
    problems = [iv.Problem.from_record(r) for r in records + partners]
    heads = model.lm.config.num_attention_heads
    K, n_layers = model.config.num_latent, model.num_layers
    with_patch = any(s is not None for s in source_rows)
    interventions, _ = build_sweep(options, K, n_layers, with_patch, heads)
    return interventions, problems, source_rows


GROUP = iv.DEFAULT_GROUP  # --group: interventions per stacked batch in (a)


def rss() -> int:
    """This process's resident memory now (bytes; Linux), 0 where /proc is absent."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """The peak resident memory above the start while the block runs, sampled every 5 ms by a
    thread (ru_maxrss only ever grows over the whole process, so cannot tell phases apart; torch's
    CPU tensors are not Python allocations, so tracemalloc cannot see them)."""

    def __enter__(self):
        import threading

        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())
        self.above_start_mb = round((self.peak - self.start) / 2**20, 1)


def sweep(engine, problems, batches, interventions, ref, naive, sources=None, group=None):
    t0, c0 = time.perf_counter(), time.process_time()
    group = GROUP if group is None else group
    with PeakRSS() as mem:
        runs = iv.run_interventions(
            engine, problems, batches, interventions, ref, sources=sources, naive=naive,
            group=group,
        )  # fmt: skip
        out = [o for batch in runs for o in batch]
    sweep.peak_mb = mem.above_start_mb
    return out, time.perf_counter() - t0, time.process_time() - c0


@dataclass
class Plan:
    """What one benchmark run sweeps: the problems measured (`problems`), those plus the patch
    partners (`every`), their batches, the interventions and the sources."""

    problems: list
    every: list
    interventions: list
    layers: list[int]
    all_batches: list[list[int]]
    extra: list[list[int]]
    sources: object = None


def plan_sweep(args, engine) -> Plan:
    K, n_layers = engine.K, engine.n_layers
    sources = None
    if args.sweep == "default":
        interventions, every, source_rows = default_sweep(args, engine.model, args.problems)
        problems = every[: len(source_rows)]
        layers = list(range(n_layers + 1))
        N = len(problems)
        sources = iv.Sources(
            resample=iv.resample_sources(N, 0) + [0] * (len(every) - N),
            patch=source_rows + [None] * (len(every) - N),
        )
    else:
        problems = every = load_problems(args.data, args.problems)
        sites = iv.parse_sites(args.sites, K, n_layers)
        interventions = [iv.Intervention(k, s) for k in args.kinds.split(",") for s in sites]
        layers = sorted({site.layer for s in sites for site in s})
    if args.interventions and args.spread:  # N evenly spaced: every kind, every step
        step = len(interventions) / args.interventions
        interventions = [interventions[int(i * step)] for i in range(args.interventions)]
    interventions = interventions[: args.interventions]
    lengths = [engine.prompt_length(p.question) for p in problems]
    rest = [engine.prompt_length(p.question) for p in every[len(problems) :]]
    extra = [[len(problems) + j for j in b] for b in iv.plan_batches(rest, args.batch_size)]
    batches = iv.plan_batches(lengths, args.batch_size)
    return Plan(problems, every, interventions, layers, batches, extra, sources)


def gpu_peak(device: torch.device, reset: bool = False) -> int | None:
    """Peak GPU memory allocated since the last reset (bytes); None on a CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return peak


def profile_sweep(engine, plan: Plan, ref) -> dict:
    """(a) alone on all problems under torch.profiler: where its time goes (profiling.py)."""
    from profiling import SWEEP_PHASES, session

    engine.stats.clear()
    with session(SWEEP_PHASES) as figures:
        outcomes = sweep(engine, plan.problems, plan.all_batches, plan.interventions, ref, False,
                         sources=plan.sources)[0]  # fmt: skip
    figures["rows"] = len(outcomes)
    figures["answers_found"] = dict(engine.stats)
    return figures


def memory_probe(engine, problems, batches, interventions, ref, sources) -> dict:
    """(a) on the subset again with the first quarter of the interventions, stacked and one at a
    time (group 1, the engine before stacking): peak memory above the start (MB) follows the
    stacked batch (group × batch), not the number of interventions (compare the subset's
    `fast_peak_rss_mb` with all of them), and what stacking alone gains per CPU-second."""
    rows = len(problems)
    quarter = interventions[: max(1, len(interventions) // 4)]
    n = len(quarter)
    _, _, q_cpu = sweep(engine, problems, batches, quarter, ref, False, sources=sources)
    q_mb = sweep.peak_mb
    _, _, one_cpu = sweep(engine, problems, batches, quarter, ref, False, sources, group=1)
    return {
        "interventions": n,
        f"group {GROUP}: peak_rss_mb": q_mb,
        f"group {GROUP}: rows_per_cpu_s": round(rows * n / q_cpu, 2),
        "group 1: peak_rss_mb": sweep.peak_mb,
        "group 1: rows_per_cpu_s": round(rows * n / one_cpu, 2),
        "stacking_speedup_cpu": round(one_cpu / q_cpu, 2),
    }


def compare(args, engine, plan: Plan, ref, device: torch.device) -> dict:
    """(a) against (b) on the first `--naive-problems`, then (a) on all problems."""
    problems, interventions, sources = plan.problems, plan.interventions, plan.sources
    m = min(args.naive_problems, len(problems))
    # The naive subset is batched on its own (same batch size) for both methods.
    lengths = [engine.prompt_length(p.question) for p in problems[:m]]
    sub_batches = iv.plan_batches(lengths, args.batch_size)
    ref_sub = ref
    if args.sweep != "default":
        ref_sub = iv.clean_reference(engine, problems[:m], sub_batches, plan.layers)
    engine.stats.clear()
    gpu_peak(device, reset=True)
    subset = (engine, problems[:m], sub_batches, interventions, ref_sub)
    fast_sub, fast_wall, fast_cpu = sweep(*subset, naive=False, sources=sources)
    fast_mb = sweep.peak_mb
    stats_sub = dict(engine.stats)
    naive_sub, naive_wall, naive_cpu = sweep(*subset, naive=True, sources=sources)
    naive_mb = sweep.peak_mb
    pairs = list(zip(fast_sub, naive_sub, strict=True))
    agree = sum(a.answer_ids == b.answer_ids for a, b in pairs)
    logp_diff = max(abs(a.logp_gold - b.logp_gold) for a, b in pairs)
    peak_sub = gpu_peak(device, reset=True)
    engine.stats.clear()
    fast_all, all_wall, all_cpu = sweep(
        engine, problems, plan.all_batches, interventions, ref, False, sources=sources
    )
    peak_all = gpu_peak(device)
    all_mb = sweep.peak_mb
    memory = memory_probe(engine, problems[:m], sub_batches, interventions, ref_sub, sources)
    rows_sub, rows_all = m * len(interventions), len(problems) * len(interventions)
    clean = {o.problem: o for o in fast_all if o.intervention.kind == "none"}
    changed = sum(
        o.answer_ids != clean[o.problem].answer_ids
        for o in fast_all
        if o.intervention.kind != "none"
    )
    return {
        "naive_problems": m,
        "clean_accuracy": sum(o.correct for o in clean.values()) / len(clean),
        "changed_share": changed / rows_all,
        "subset": {
            "fast_wall_s": round(fast_wall, 1),
            "fast_cpu_s": round(fast_cpu, 1),
            "naive_wall_s": round(naive_wall, 1),
            "naive_cpu_s": round(naive_cpu, 1),
            "fast_rows_per_cpu_s": round(rows_sub / fast_cpu, 2),
            "naive_rows_per_cpu_s": round(rows_sub / naive_cpu, 2),
            "speedup_cpu": round(naive_cpu / fast_cpu, 2),
            "speedup_wall": round(naive_wall / fast_wall, 2),
            "answers_agree": f"{agree}/{len(fast_sub)}",
            "max_logp_diff": logp_diff,
            "answers_found": stats_sub,
            "peak_gpu_memory": peak_sub,
            "fast_peak_rss_mb": fast_mb,
            "naive_peak_rss_mb": naive_mb,
        },
        "all": {
            "wall_s": round(all_wall, 1),
            "cpu_s": round(all_cpu, 1),
            "rows_per_s": round(rows_all / all_wall, 2),
            "rows_per_cpu_s": round(rows_all / all_cpu, 2),
            "answers_found": dict(engine.stats),
            "peak_gpu_memory": peak_all,
            "peak_rss_mb": all_mb,
        },
        "group": GROUP,
        "memory": memory,
        "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--shape", choices=["gpt2", "tiny", "llama1b"], help="random weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--data", type=Path, help="problem file (default: GSM8K test)")
    ap.add_argument("--problems", type=int, default=600)
    ap.add_argument("--naive-problems", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--kinds", default="zero,mean")
    ap.add_argument("--sites", default="all")
    ap.add_argument("--sweep", choices=["sites", "default"], default="sites")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--group", type=int, default=iv.DEFAULT_GROUP, help="interventions per stacked batch in (a)"
    )
    ap.add_argument("--interventions", type=int, default=None, help="only the sweep's first N")
    ap.add_argument("--spread", action="store_true", help="--interventions N evenly spaced")
    ap.add_argument(
        "--profile", action="store_true", help="(a) on N problems under torch.profiler only"
    )
    ap.add_argument("--out", type=Path, default=None, help="write the result file here instead")
    ap.add_argument(
        "--result", default=None, help="result file under benchmarks/results/ (intervene-MODEL)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global GROUP
    GROUP = args.group
    load_before = os.getloadavg()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("intervene.py: --device cuda, but torch sees no CUDA GPU")

    from opcircuits.options import DEFAULT_MAX_NEW_TOKENS

    model, tok, name = load_model(args, device)
    max_new = args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    engine = iv.Engine(model, tok, max_new_tokens=max_new)
    plan = plan_sweep(args, engine)
    t0, c0 = time.perf_counter(), time.process_time()
    ref = iv.clean_reference(
        engine, plan.every, plan.all_batches + plan.extra, plan.layers,
        reference_rows=list(range(len(plan.problems))),
    )  # fmt: skip
    ref_time = (time.perf_counter() - t0, time.process_time() - c0)
    if args.sweep == "default":
        ref.add_category_direction("pure_addition", "pure_multiplication")
        ref.add_random_direction(0)
    common = {
        "model": name,
        "device": str(device),
        "dtype": args.dtype,
        "data": str(args.data.name if args.data else "GSM8K test"),
        "problems": len(plan.problems),
        "interventions": len(plan.interventions),
        "interventions_chosen": (
            "all" if not args.interventions else "spread" if args.spread else "first"
        ),
        "kinds_run": dict(Counter(i.kind for i in plan.interventions)),
        "sweep": args.sweep,
        "kinds": args.kinds if args.sweep == "sites" else "the default sweep",
        "sites": args.sites if args.sweep == "sites" else "the default sweep",
        "batch_size": args.batch_size,
        "group": args.group,
        "max_new_tokens": max_new,
        "threads": args.threads,
        "reference_s": [round(x, 1) for x in ref_time],
    }
    if args.profile:
        figures = {**common, **profile_sweep(engine, plan, ref)}
        suffix, what = "-profile", "the shipped engine under torch.profiler"
    else:
        figures = {**common, **compare(args, engine, plan, ref, device)}
        suffix = ""
        what = f"(a) run_interventions as shipped (group {args.group}), (b) naive=True"
    figures["loadavg_before"] = [round(x, 2) for x in load_before]
    figures["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(figures, indent=2))
    from results import write_result

    name = args.result or f"intervene-{args.shape or Path(args.model).name}{suffix}"
    if args.result is None and device.type != "cpu":
        name += f"-{device.type}"
    notes = (
        f"{what}; throughput per CPU-second. Timings on a shared machine (load average "
        f"{load_before[0]:.1f} before this run, {os.getloadavg()[0]:.1f} after)."
    )
    print(f"wrote {write_result(name, 'intervene', figures, notes=notes, out=args.out)}")


if __name__ == "__main__":
    main()
