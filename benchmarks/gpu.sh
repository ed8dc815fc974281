#!/usr/bin/env bash
# The GPU benchmarks of issue 24, one command, at most 8 minutes on one H100-class GPU: each step
# has its own time limit (with the GPU check they add up to 480 s) and writes its result file under
# benchmarks/results/ (the docs render them). A step that fails or runs out of time is reported
# at the end and the others still run; the script then exits 1.
#
#   bash benchmarks/gpu.sh              # from the repository root or anywhere
#   PYTHON=.venv/bin/python bash benchmarks/gpu.sh
#
# Needs: a CUDA build of torch that sees a GPU (checked first: no GPU, no run) and GSM8K in
# $OPCIRCUITS_GSM8K_DIR or ../shared/data/gsm8k (the tokenizer of the random shapes is trained on
# it). Steps:
#   1. 600 synthetic test problems and their pairs (data/synth_test_600.jsonl, kept if present)
#   2. extraction, 600 problems, LLaMA-3.2-1B shape, bf16 (target <= 10 s)    -> extract-llama1b-cuda
#   3. the default causal sweep, 600 problems, GPT-2 shape, fp32               -> intervene-gpt2-cuda
#   4. the default causal sweep, 600 problems, LLaMA-3.2-1B shape, bf16     -> intervene-llama1b-cuda
#   5. the analysis of a 600-problem store (the permutation family on the CPU: no GPU solver yet)
#                                                                           -> analyze-default-600-gpu
# Peak GPU memory: extract's a_peak_memory, intervene's subset/all peak_gpu_memory (bytes).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
failed=()

die() {
    echo "gpu.sh: $*" >&2
    exit 2
}

# step NAME SECONDS COMMAND...: run it with a hard time limit, note a failure and go on.
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@"
    local rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        failed+=("$name: ran past its ${limit} s limit")
    elif [ "$rc" -ne 0 ]; then
        failed+=("$name: exit status $rc")
    fi
    echo "== $name: $((SECONDS - t0)) s, exit status $rc"
}

gpu=$(timeout 30 "$PY" -c 'import torch
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1) ||
    die "could not ask torch for a GPU ($PY): $gpu"
[ -n "$gpu" ] || die "no CUDA GPU: torch.cuda.is_available() is False for $PY (a CPU build of \
torch, or no GPU on this machine); run it where an NVIDIA GPU and a CUDA build of torch are"
gsm8k=${OPCIRCUITS_GSM8K_DIR:-../shared/data/gsm8k}
[ -f "$gsm8k/train.jsonl" ] || die "no GSM8K at $gsm8k (set OPCIRCUITS_GSM8K_DIR)"
echo "gpu.sh: $gpu"

data=data/synth_test_600.jsonl
if [ ! -f "$data" ] || [ ! -f "${data%.jsonl}.pairs.jsonl" ]; then
    step "synthetic problems" 20 "$PY" -m opcircuits data synth --out "$data" --n 600 --seed 7 \
        --split test
fi
step "extract llama1b" 100 "$PY" benchmarks/extract.py --shape llama1b --device cuda \
    --dtype bfloat16 --problems 600
sweep=(--data "$data" --sweep default --problems 600 --batch-size 128 --max-new-tokens 16)
step "intervene gpt2" 110 "$PY" benchmarks/intervene.py --shape gpt2 --device cuda \
    --dtype float32 "${sweep[@]}" --naive-problems 8
step "intervene llama1b" 170 "$PY" benchmarks/intervene.py --shape llama1b --device cuda \
    --dtype bfloat16 "${sweep[@]}" --naive-problems 4
step "analyze" 50 "$PY" benchmarks/analyze.py --result analyze-default-600-gpu \
    --note "on the GPU machine of benchmarks/gpu.sh"

if [ "${#failed[@]}" -gt 0 ]; then
    printf 'gpu.sh: failed: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "gpu.sh: every step wrote its result file under benchmarks/results/"
