#!/usr/bin/env bash
# The GPU benchmarks, as one script for a lent accelerator (the device tool runs it in the repo root and
# brings back what it writes under $OUT). Each benchmark prints one JSON report; stderr keeps the progress.
#   OUT=/tmp/out bash bench/gpu.sh
# The image there has torch, transformers, peft and safetensors; the rest of the project installs without deps.
set -uo pipefail
OUT=${OUT:-/tmp/soppu-gpu}
mkdir -p "$OUT"
python -m pip install --quiet --no-deps -e . >/dev/null 2>&1 || true
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
run() {  # name, timeout (s), command...
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.err"
  echo "$name: exit $?" | tee -a "$OUT/summary.txt"
}
# The engine's batched paths on a random Llama-3-8B-shaped model cut to 8 layers, bf16, 1 to 4096 users.
run engine-llama8b 300 python bench/engine.py --device cuda --llama8b-layers 8 --batch 4096 --prompt-len 16 \
  --steps 8 --rounds 2 --users 1 8 64 256 1024 4096 --peft-max-users 256
# The JD solver at d = 4096 (q, k, v, o; N = 10, 100, 1000) against the dense-Gram and exact-SVD baselines.
run compression 240 python bench/compression.py --device cuda
