"""Benchmark: how much bf16 changes CODI's answers and thoughts against fp32 (not a test; the
figures go into `benchmarks/results/<name>.json`, default `precision`, which the docs render).

The official CODI evaluation runs in bf16; this project defaults to fp32 (LoRA merged). For each
model the same GSM8K test questions go through `run_batch` twice, loaded with `--dtype float32` and
`--dtype bfloat16` on the same device, and we count the problems whose greedy answer (token ids) and
whose predicted number differ, and compare the hidden states at every layer and position (bot,
latent_1..K): max and mean absolute difference, and the relative difference ‖bf16 − fp32‖ / ‖fp32‖
(Frobenius norm over problems and positions, per layer; per position over problems and layers).

Models: the shipped `demo` (trained) and a tiny random LLaMA CODI (4 blocks × 64, weights drawn
with std 0.05 so its thoughts and tokens vary; it rarely emits EOS: its answers run to the limit).

    nice -n 10 python benchmarks/precision.py --problems 200 --out precision.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from opcircuits.codi.checkpoint import load_codi  # noqa: E402
from opcircuits.codi.config import CodiConfig, demo_dir  # noqa: E402
from opcircuits.codi.evaluate import read_eval_problems  # noqa: E402
from opcircuits.codi.latent import decode_answer, extract_number, run_batch  # noqa: E402
from opcircuits.codi.model import CodiModel  # noqa: E402


def tiny_random(directory: Path, seed: int = 0) -> Path:
    """A random tiny LLaMA CODI (LoRA r=8) on the demo's tokenizer, as a self-contained dir."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(demo_dir())
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    base = LlamaForCausalLM(cfg)
    config = CodiConfig(base=".", num_latent=6, prj_dim=48, lora_r=8, lora_alpha=16)
    model = CodiModel.from_base(config, base, mean_resizing=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 or ".lora_" in name:
                p.normal_(0.0, 0.05)
    model.save_pretrained(directory, tokenizer=tok)
    return directory


def run(model_name: str, questions: list[str], dtype: str, args) -> dict:
    model, tok = load_codi(model_name, dtype=dtype, device=args.device)
    layers = list(range(model.num_layers + 1))
    hidden, answers, cut = [], [], []
    t0 = time.time()
    for i in range(0, len(questions), args.batch_size):
        out = run_batch(
            model,
            tok,
            questions[i : i + args.batch_size],
            layers=layers,
            max_new_tokens=args.max_new_tokens,
        )
        hidden.append(out.hidden)
        answers += out.answer_ids
        cut += out.truncated
    texts = [decode_answer(model, tok, a) for a in answers]
    return {
        "hidden": torch.cat(hidden).double(),  # [N, P, L, D]
        "answers": answers,
        "predicted": [extract_number(t) for t in texts],
        "truncated": sum(cut),
        "layers": layers,
        "seconds": round(time.time() - t0, 1),
    }


def compare(a: dict, b: dict) -> dict:
    ha, hb = a["hidden"], b["hidden"]
    diff = (hb - ha).abs()

    def rel(dims: tuple[int, ...]) -> list[float]:
        num = (hb - ha).pow(2).sum(dims).sqrt()
        return (num / ha.pow(2).sum(dims).sqrt()).tolist()

    n = len(a["answers"])
    return {
        "n_problems": n,
        "answers_differ": sum(x != y for x, y in zip(a["answers"], b["answers"], strict=True)),
        "predicted_differ": sum(
            x != y for x, y in zip(a["predicted"], b["predicted"], strict=True)
        ),
        "truncated_fp32": a["truncated"],
        "truncated_bf16": b["truncated"],
        "seconds_fp32": a["seconds"],
        "seconds_bf16": b["seconds"],
        "per_layer": [
            {
                "layer": layer,
                "max_abs": float(diff[:, :, j].max()),
                "mean_abs": float(diff[:, :, j].mean()),
                "mean_abs_fp32": float(ha[:, :, j].abs().mean()),
                "relative": r,
            }
            for j, (layer, r) in enumerate(zip(a["layers"], rel((0, 1, 3)), strict=True))
        ],
        "relative_per_position": rel((0, 2, 3)),  # bot, latent_1 .. latent_K
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--random-max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--result", default="precision", help="result file under benchmarks/results/"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    questions = [p["question"] for p in read_eval_problems(args.data)[: args.problems]]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        random_dir = str(tiny_random(Path(tmp) / "tiny-random"))
        for name, model, max_new in (
            ("demo", "demo", args.max_new_tokens),
            ("tiny-random", random_dir, args.random_max_new_tokens),
        ):
            opts = argparse.Namespace(**{**vars(args), "max_new_tokens": max_new})
            fp32 = run(model, questions, "float32", opts)
            bf16 = run(model, questions, "bfloat16", opts)
            results[name] = {"max_new_tokens": max_new, **compare(fp32, bf16)}
            r = results[name]
            print(
                f"{name}: answers differ {r['answers_differ']}/{r['n_problems']}, predicted "
                f"numbers differ {r['predicted_differ']}; relative hidden difference per layer "
                + ", ".join(f"{x['layer']}: {x['relative']:.4f}" for x in r["per_layer"])
                + "; per position "
                + ", ".join(f"{x:.4f}" for x in r["relative_per_position"])
            )
    results["command"] = " ".join(["python", "benchmarks/precision.py", *sys.argv[1:]])
    results["device"] = args.device
    results["torch"] = torch.__version__
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    _write_result(args.result, results)


def _write_result(name: str, results: dict) -> None:
    """The figures per model, the per-layer lists side by side (the docs render flat values)."""
    from results import write_result

    figures: dict = {}
    for model in ("demo", "tiny-random"):
        r = dict(results[model])
        per_layer = r.pop("per_layer")
        for key in ("relative", "max_abs", "mean_abs", "mean_abs_fp32"):
            r[f"{key}_per_layer"] = [round(x[key], 6) for x in per_layer]
        r["layers"] = [x["layer"] for x in per_layer]
        figures[model] = r
    notes = f"device {results['device']}; hidden states compared at every layer and position."
    print(f"wrote {write_result(name, 'precision', figures, notes=notes)}")


if __name__ == "__main__":
    main()
