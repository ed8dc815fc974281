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

    nice -n 10 python benchmarks/intervene.py --model demo --problems 600 --naive-problems 64
    nice -n 10 python benchmarks/intervene.py --model demo-arith --data data/synth_test.jsonl
    nice -n 10 python benchmarks/intervene.py --shape gpt2 --problems 6 --max-new-tokens 16
    nice -n 10 python benchmarks/intervene.py --model demo-arith --data data/synth_test_600.jsonl \
        --sweep default --problems 600 --naive-problems 64 --batch-size 64 --max-new-tokens 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
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


def load_model(args):
    if args.shape:
        from extract import load_questions, make_model, make_tokenizer

        _, texts = load_questions(1)
        tok = make_tokenizer(texts)
        model = make_model(args.shape, len(tok), torch.device("cpu")).merge_lora()
        return model, tok, f"random {args.shape} shape"
    from opcircuits.codi.checkpoint import load_codi

    model, tok = load_codi(args.model, device="cpu")
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


def sweep(engine, problems, batches, interventions, ref, naive, sources=None):
    t0, c0 = time.perf_counter(), time.process_time()
    runs = iv.run_interventions(
        engine, problems, batches, interventions, ref, sources=sources, naive=naive
    )
    out = [o for batch in runs for o in batch]
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--shape", choices=["gpt2", "tiny"], help="random weights of this shape")
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
        "--result", default=None, help="result file under benchmarks/results/ (intervene-MODEL)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    from opcircuits.options import DEFAULT_MAX_NEW_TOKENS

    model, tok, name = load_model(args)
    max_new = args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    engine = iv.Engine(model, tok, max_new_tokens=max_new)
    K, n_layers = model.config.num_latent, model.num_layers
    sources = None
    if args.sweep == "default":
        interventions, every, source_rows = default_sweep(args, model, args.problems)
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

    lengths = [engine.prompt_length(p.question) for p in problems]
    m = min(args.naive_problems, len(problems))
    # The naive subset is batched on its own (same batch size) for both methods.
    sub_batches = iv.plan_batches(lengths[:m], args.batch_size)
    all_batches = iv.plan_batches(lengths, args.batch_size)
    extra = [
        [len(problems) + j for j in b]
        for b in iv.plan_batches([engine.prompt_length(p.question) for p in every[len(problems):]],
                                 args.batch_size)
    ]  # fmt: skip

    t0, c0 = time.perf_counter(), time.process_time()
    ref = iv.clean_reference(
        engine, every, all_batches + extra, layers, reference_rows=list(range(len(problems)))
    )
    ref_time = (time.perf_counter() - t0, time.process_time() - c0)
    if args.sweep == "default":
        ref.add_category_direction("pure_addition", "pure_multiplication")
        ref.add_random_direction(0)
        ref_sub = ref
    else:
        ref_sub = iv.clean_reference(engine, problems[:m], sub_batches, layers)

    engine.stats.clear()
    subset = (engine, problems[:m], sub_batches, interventions, ref_sub)
    fast_sub, fast_wall, fast_cpu = sweep(*subset, naive=False, sources=sources)
    stats_sub = dict(engine.stats)
    naive_sub, naive_wall, naive_cpu = sweep(*subset, naive=True, sources=sources)
    agree = sum(a.answer_ids == b.answer_ids for a, b in zip(fast_sub, naive_sub, strict=True))
    logp_diff = max(
        abs(a.logp_gold - b.logp_gold) for a, b in zip(fast_sub, naive_sub, strict=True)
    )
    engine.stats.clear()
    fast_all, all_wall, all_cpu = sweep(
        engine, problems, all_batches, interventions, ref, False, sources=sources
    )
    rows_sub, rows_all = m * len(interventions), len(problems) * len(interventions)
    clean = {o.problem: o for o in fast_all if o.intervention.kind == "none"}
    changed = sum(
        o.answer_ids != clean[o.problem].answer_ids
        for o in fast_all
        if o.intervention.kind != "none"
    )
    result = {
        "model": name,
        "data": str(args.data or "GSM8K test"),
        "problems": len(problems),
        "naive_problems": m,
        "interventions": len(interventions),
        "sweep": args.sweep,
        "kinds": args.kinds if args.sweep == "sites" else "the default sweep",
        "sites": args.sites if args.sweep == "sites" else "the default sweep",
        "batch_size": args.batch_size,
        "max_new_tokens": max_new,
        "threads": args.threads,
        "clean_accuracy": sum(o.correct for o in clean.values()) / len(clean),
        "changed_share": changed / rows_all,
        "reference_s": [round(x, 1) for x in ref_time],
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
        },
        "all": {
            "wall_s": round(all_wall, 1),
            "cpu_s": round(all_cpu, 1),
            "rows_per_s": round(rows_all / all_wall, 2),
            "rows_per_cpu_s": round(rows_all / all_cpu, 2),
            "answers_found": dict(engine.stats),
        },
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    from results import write_result

    name = args.result or f"intervene-{args.shape or Path(args.model).name}"
    notes = (
        "(a) run_interventions as shipped, (b) naive=True; throughput per CPU-second. Timings "
        f"on a shared machine (load average {load_before[0]:.1f} before this run)."
    )
    print(f"wrote {write_result(name, 'intervene', result, notes=notes)}")


if __name__ == "__main__":
    main()
