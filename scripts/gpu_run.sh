#!/usr/bin/env bash
# The GPU runtime on the lent H200, in one device call: the GPU tests (pytest -m gpu), then
# scripts/gpu_benchmarks.py (ResNet-50 through the h200_ort target: transfers excluded, overlapped and
# one after another; CUDA graphs at batch 1). Set-up: scripts/gpu_setup.sh. Results land in $OUT.
set -euo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
source scripts/gpu_setup.sh > >(tee "$OUT/setup.log") 2>&1
python3 -m pytest -m gpu -q -s -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" || true
python3 scripts/gpu_benchmarks.py --out "$OUT" 2>&1 | tee "$OUT/gpu_benchmarks.log"
