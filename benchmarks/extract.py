"""Benchmark: extraction throughput, peak memory and FLOP efficiency (not a test; the figures go
into `benchmarks/results/<name>.json`, which the docs render).

Compares, on the same random-weight CODI model and the same GSM8K test questions, in one run:
  (a) this package's extractor (`opcircuits.extract.extract_shard` + `StoreWriter`: batched, left
      padded, LoRA merged, KV cache, logits only where used), and
  (b) a re-creation of the earlier per-problem loop: one problem at a time, fp32, peft LoRA left
      unmerged, every step asking the model for all hidden states and full-sequence logits (as
      CODI's own evaluation does with batch size 1), KV cache as in CODI's evaluation.
Both decode greedily until EOS or --max-new-tokens (random weights rarely emit EOS, so
usually every step). Useful FLOPs are counted from the tokens actually processed (padding and
wasted logits excluded) and compared with this machine's measured matmul peak (a large torch
matmul, same dtype and threads).

    python benchmarks/extract.py --shape gpt2 --device cpu
    python benchmarks/extract.py --shape llama1b --device cuda --dtype bfloat16 --problems 600
    python benchmarks/extract.py --shape gpt2 --threads 1 --problems 64 --naive-problems 1 \
        --batch-size 64 --profile    # where (a)'s time goes (profiling.py), extract-gpt2-profile
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from opcircuits.codi.config import CodiConfig  # noqa: E402
from opcircuits.codi.latent import prompt_ids  # noqa: E402
from opcircuits.codi.model import CodiModel  # noqa: E402

SHAPES = {
    # name: (model_type, transformers config kwargs, prj_dim)
    "tiny": (
        "llama",
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
        48,
    ),
    "gpt2": (
        "gpt2",
        dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257),
        768,
    ),
    "llama1b": (
        "llama",
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            vocab_size=128256,
            rope_theta=500000.0,
            max_position_embeddings=131072,
        ),
        2048,
    ),
}


def gsm8k_dir() -> Path:
    env = os.environ.get("OPCIRCUITS_GSM8K_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "gsm8k"


def load_questions(n: int) -> tuple[list[str], list[str]]:
    rows = [json.loads(x) for x in (gsm8k_dir() / "test.jsonl").read_text().splitlines()]
    train = [json.loads(x) for x in (gsm8k_dir() / "train.jsonl").read_text().splitlines()]
    texts = [t for r in train for t in (r["question"], r["answer"])]
    questions = [r["question"] for r in rows]
    return [questions[i % len(questions)] for i in range(n)], texts


def make_tokenizer(texts: list[str], vocab: int = 8000):
    """A byte-level BPE tokenizer trained on GSM8K train (realistic prompt lengths, any shape)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<s>", "</s>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def make_model(shape: str, vocab: int, device: torch.device) -> CodiModel:
    """Random-weight CODI model of a shape, LoRA r=128 (unmerged), fp32, on `device`."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    model_type, kwargs, prj_dim = SHAPES[shape]
    kwargs = {"vocab_size": vocab, **kwargs}
    cfg = (
        LlamaConfig(tie_word_embeddings=True, **kwargs)
        if model_type == "llama"
        else GPT2Config(**kwargs)
    )
    torch.manual_seed(0)
    with torch.device(device):
        base = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    lora_r = 8 if shape == "tiny" else 128
    config = CodiConfig(base=".", prj_dim=prj_dim, lora_r=lora_r, lora_alpha=32)
    model = CodiModel.from_base(config, base, mean_resizing=False).to(device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    return model.eval()


# --- the earlier per-problem loop ----------------------------------------------------------


@torch.inference_mode()
def naive_problem(model: CodiModel, tokenizer, question: str, max_new_tokens: int) -> int:
    """One problem, batch size 1, unmerged LoRA, all hidden states and full logits every step.
    Returns the number of answer tokens decoded."""
    device = model.prj[1].weight.device
    ids = torch.tensor([prompt_ids(model, tokenizer, question)], device=device)
    out = model.codi(input_ids=ids, use_cache=True, output_hidden_states=True)
    cache = out.past_key_values
    thoughts = [[h[0, -1].cpu() for h in out.hidden_states]]
    x = model.project(out.hidden_states[-1][:, -1:])
    for _ in range(model.config.num_latent):
        out = model.codi(
            inputs_embeds=x, past_key_values=cache, use_cache=True, output_hidden_states=True
        )
        cache = out.past_key_values
        thoughts.append([h[0, -1].cpu() for h in out.hidden_states])
        torch.softmax(out.logits[0, -1], -1).topk(5)  # the logit lens
        x = model.project(out.hidden_states[-1][:, -1:])
    x = model.embed(torch.tensor([[model.eot_id]], device=device))
    n = 0
    for _ in range(max_new_tokens):
        out = model.codi(
            inputs_embeds=x, past_key_values=cache, use_cache=True, output_hidden_states=True
        )
        cache = out.past_key_values
        logits = out.logits[:, -1, : model.eot_id]
        token = logits.argmax(-1)
        n += 1
        if token.item() == tokenizer.eos_token_id:
            break
        x = model.embed(token[:, None])
    return n


# --- measurement helpers ---------------------------------------------------------------------


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak, else sampled process RSS (Linux)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0
        self.start = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.005)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = self.rss()
            self.peak = self.rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.rss())

    @property
    def increase(self) -> int:
        """Peak above the memory held when the block started (model weights excluded)."""
        return self.peak - self.start


class Clock:
    """Wall and process-CPU seconds of a block. On a CPU shared with other jobs, CPU seconds
    are the time this process actually computed (our threads' share of the cores)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        sync(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu

    @property
    def busy(self) -> float:
        """Seconds for efficiency: CPU seconds on CPU (robust to sharing), wall time on GPU."""
        return self.cpu if self.device.type == "cpu" else self.wall


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 3.0) -> float:
    """Best FLOP/s of a large square matmul (the machine's practical peak), per `Clock.busy`."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    end = time.perf_counter() + seconds
    a @ b
    while time.perf_counter() < end:
        with Clock(device) as clock:
            a @ b
        best = max(best, 2 * n**3 / max(clock.busy, 1e-9))
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def block_params(model: CodiModel) -> int:
    """Weights multiplied once per token in the transformer blocks (not embeddings/head)."""
    from transformers.pytorch_utils import Conv1D

    lm = model.lm
    blocks = lm.model.layers if hasattr(lm, "model") else lm.transformer.h
    total = 0
    for mod in blocks.modules():
        if isinstance(mod, torch.nn.Linear | Conv1D):
            total += mod.weight.numel()
    return total


def useful_flops(model: CodiModel, prompt_len: int, n_decoded: int) -> float:
    """Forward FLOPs a problem needs: prompt, K latents (+ projection and lens), eot and the
    decoded tokens; attention over the growing context; lm_head only where logits are used."""
    cfg = model.lm.config
    d, L, V = model.hidden_size, model.num_layers, model.lm.get_output_embeddings().weight.shape[0]
    N, K = block_params(model), model.config.num_latent
    steps = list(range(1, prompt_len + 1))  # context length of every processed token
    ctx = prompt_len
    for _ in range(K + n_decoded):  # K latents; eot + (n_decoded - 1) answer tokens
        ctx += 1
        steps.append(ctx)
    flops = sum(2 * N + 4 * L * c * d for c in steps)
    flops += (1 + K + n_decoded) * 2 * d * V  # lens at bot + latents; logits per decode step
    flops += K * 2 * 2 * d * model.config.prj_dim
    del cfg
    return float(flops)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="gpt2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--problems", type=int, default=None, help="(a) problems; default by shape")
    p.add_argument("--naive-problems", type=int, default=None, help="(b) problems (it is slow)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    p.add_argument("--out", type=Path, default=None, help="write the result file here instead")
    p.add_argument(
        "--profile", action="store_true", help="(a) under torch.profiler: where its time goes"
    )
    p.add_argument(
        "--result",
        default=None,
        help="name of the result file under benchmarks/results/ "
        "(default extract-SHAPE, plus -Nthreads or -DEVICE when not 1 CPU thread)",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        args.dtype
    ]
    defaults = {"tiny": (256, 32, 64), "gpt2": (128, 8, 64), "llama1b": (600, 4, 200)}
    n_a, n_b, bs = defaults[args.shape] if device.type == "cpu" else (600, 8, 600)
    n_a, n_b = args.problems or n_a, args.naive_problems or n_b
    bs = args.batch_size or bs

    questions, texts = load_questions(max(n_a, n_b))
    tokenizer = make_tokenizer(texts)
    vocab = SHAPES[args.shape][1].get("vocab_size", len(tokenizer))
    model = make_model(args.shape, vocab, device)
    lens = {q: len(prompt_ids(model, tokenizer, q)) for q in questions}

    # (b) the earlier loop: fp32, unmerged, one problem at a time.
    naive_problem(model, tokenizer, questions[0], 2)  # warm-up
    sync(device)
    with PeakMemory(device) as mem_b, Clock(device) as clock_b:
        decoded_b = [
            naive_problem(model, tokenizer, q, args.max_new_tokens) for q in questions[:n_b]
        ]

    # (a) this extractor: LoRA merged, the chosen dtype, batched, streamed into a store.
    # Through the public loader, as users run it: save the same weights as a checkpoint dir.
    from opcircuits.codi.checkpoint import load_codi
    from opcircuits.extract import extract_shard
    from opcircuits.store import StoreWriter, default_positions

    ckpt_tmp = tempfile.TemporaryDirectory()
    model.save_pretrained(Path(ckpt_tmp.name), tokenizer=tokenizer)
    del model
    model, tokenizer = load_codi(ckpt_tmp.name, dtype=args.dtype, device=device)
    # Useful FLOPs of both runs are counted on the merged model (LoRA's extra work is waste).
    flops_b = sum(
        useful_flops(model, lens[q], n) for q, n in zip(questions, decoded_b, strict=False)
    )
    layers = list(range(0, model.num_layers + 1, max(1, model.num_layers // 4)))
    extract_shard(
        model,
        tokenizer,
        [{"id": "w", "question": questions[0], "answer": "#### 1", "final_value": 1, "steps": []}],
        layers=layers,
        batch_size=1,
        max_new_tokens=2,
        top_k=5,
    )  # warm-up
    problems = [
        {"id": f"test_{i}", "question": q, "answer": "#### 1", "final_value": 1, "steps": []}
        for i, q in enumerate(questions[:n_a])
    ]
    shard = 256
    from profiling import EXTRACT_PHASES, session

    with (
        tempfile.TemporaryDirectory() as tmp,
        PeakMemory(device) as mem_a,
        Clock(device) as clock_a,
        session(EXTRACT_PHASES, enabled=args.profile) as profile,
    ):
        manifest = {
            "model": args.shape,
            "layers": layers,
            "positions": default_positions(model.config.num_latent),
        }
        writer = StoreWriter(Path(tmp) / "store", manifest, n_a, shard)
        for index in writer.pending_shards():
            a, b = writer.shard_bounds(index)
            hidden, latent, records = extract_shard(
                model,
                tokenizer,
                problems[a:b],
                layers=layers,
                batch_size=bs,
                max_new_tokens=args.max_new_tokens,
                top_k=5,
            )
            writer.write_shard(index, hidden, latent, records)
        writer.finalize()
    # Random weights (almost) never emit EOS: every problem decodes max_new_tokens tokens.
    flops_a = sum(useful_flops(model, lens[q], args.max_new_tokens) for q in questions[:n_a])

    peak = matmul_peak(device, dtype)
    peak_fp32 = peak if dtype == torch.float32 else matmul_peak(device, torch.float32)
    time_a, time_b = clock_a.wall, clock_b.wall
    result = {
        "shape": args.shape,
        "device": str(device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "batch_size": bs,
        "max_new_tokens": args.max_new_tokens,
        "mean_prompt_tokens": sum(lens[q] for q in questions[:n_a]) / n_a,
        "a_problems": n_a,
        "a_wall_s": time_a,
        "a_cpu_s": clock_a.cpu,
        "a_problems_per_s": n_a / time_a,
        "a_problems_per_busy_s": n_a / clock_a.busy,
        "a_peak_memory": mem_a.peak,
        "a_peak_increase": mem_a.increase,
        "a_flops_per_busy_s": flops_a / clock_a.busy,
        "a_fraction_of_peak": flops_a / clock_a.busy / peak,
        "b_problems": n_b,
        "b_wall_s": time_b,
        "b_cpu_s": clock_b.cpu,
        "b_problems_per_s": n_b / time_b,
        "b_problems_per_busy_s": n_b / clock_b.busy,
        "b_peak_memory": mem_b.peak,
        "b_peak_increase": mem_b.increase,
        "b_flops_per_busy_s": flops_b / clock_b.busy,
        "b_fraction_of_peak": flops_b / clock_b.busy / peak_fp32,
        "matmul_peak_flops": peak,
        "matmul_peak_fp32_flops": peak_fp32,
        "speedup_busy": (n_a / clock_a.busy) / (n_b / clock_b.busy),
        "load_average_1min": os.getloadavg()[0],
    }
    if args.profile:  # (a)'s rates then include the profiler's overhead
        result["profile"] = profile
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    _write_result(args, device, result)
    busy = "CPU-s" if device.type == "cpu" else "s"
    print(
        f"\n| shape | device (threads) | dtype | batch | (a) problems/s wall | (a) problems/{busy} "
        f"| (a) % of matmul peak | (a) peak mem. | (b) problems/s wall | (b) problems/{busy} | "
        "(b) % of peak | (b) peak mem. | speedup |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.shape} | {device} ({result['threads']}) | {args.dtype} | {bs} | "
        f"{result['a_problems_per_s']:.2f} | {result['a_problems_per_busy_s']:.2f} | "
        f"{100 * result['a_fraction_of_peak']:.0f}% | {human_bytes(mem_a.increase)} | "
        f"{result['b_problems_per_s']:.3f} | {result['b_problems_per_busy_s']:.3f} | "
        f"{100 * result['b_fraction_of_peak']:.1f}% | {human_bytes(mem_b.increase)} | "
        f"{result['speedup_busy']:.1f}x |"
    )
    print(
        f"matmul peak: {peak / 1e9:.1f} GFLOP/{busy} ({args.dtype}); "
        f"load average {result['load_average_1min']:.1f}"
    )


def _write_result(args: argparse.Namespace, device: torch.device, result: dict) -> None:
    from results import write_result

    name = args.result or f"extract-{args.shape}" + ("-profile" if args.profile else "")
    if args.result is None and device.type != "cpu":
        name += f"-{device.type}"
    elif args.result is None and result["threads"] != 1:
        name += f"-{result['threads']}threads"
    notes = (
        "(a) this extractor, (b) the earlier per-problem loop; rates per busy second are CPU "
        "seconds on a CPU. Wall-clock rates are noisy on a shared machine."
    )
    print(f"wrote {write_result(name, 'extract', result, notes=notes, out=args.out)}")


if __name__ == "__main__":
    main()
