#!/usr/bin/env bash
# The pipeline on an H200 as a user runs it: the project's files in a fresh git +
# DVC repository, params composed for ResNet-50 and MiniLM x h200_ort x {fp32, fp16}, `dvc repro` (every
# stage, gates included), `dvc metrics show` and the report into $OUT, then a second `dvc repro` that
# must run nothing. Set-up: scripts/gpu_setup.sh (run after scripts/gpu_run.sh on the same machine, or alone).
# Arguments, if any, replace the matrix's compose overrides, e.g. the AOTInductor target:
#   bash scripts/gpu_pipeline.sh "model=[resnet50,minilm]" "target=[h200_aoti]" "precision=[fp16]" "dataset=[photo_crops,sentences]"
# RESUME=1 (same WORK folder, same machine): after a fix, copy the project's code in again and let `dvc repro`
# go on from what it has cached, instead of starting a fresh repository.
set -euo pipefail
matrix=("$@")
[ ${#matrix[@]} -gt 0 ] || matrix=("model=[resnet50,minilm]" "target=[h200_ort]" "precision=[fp32,fp16]" "dataset=[photo_crops,sentences]")
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
source scripts/gpu_setup.sh > >(tee "$OUT/setup.log") 2>&1
REPO=$PWD
WORK=${WORK:-/tmp/gpu_pipeline}
export PYTHONPATH="$SITE"
if [ "${RESUME:-0}" = 1 ] && [ -d "$WORK/.dvc" ]; then
  # After a failed stage: the project's code again, and `dvc repro` goes on from what DVC has cached.
  cp -r conf pipeline stages hydra_plugins "$WORK/" && cd "$WORK"
else
  rm -rf "$WORK" && mkdir -p "$WORK"
  cp -r conf pipeline stages hydra_plugins dvc.yaml .dvcignore .gitignore "$WORK/"
  cd "$WORK"
  git init -q && git config user.email gpu@example.invalid && git config user.name gpu
  dvc init -q && cp -r "$REPO/.dvc/plots" .dvc/
  python3 -m pipeline compose "${matrix[@]}"
  git add -A && git commit -qm "matrix: ${matrix[*]}"
fi
start=$(date +%s)
# --keep-going: a failing stage still leaves every other stage's figures to read; the script fails at the end.
failed=0
dvc repro --keep-going 2>&1 | tee "$OUT/dvc_repro.log" || failed=1
echo "first dvc repro: $(( $(date +%s) - start )) s" | tee -a "$OUT/dvc_repro.log"
dvc metrics show --json > "$OUT/metrics.json"
dvc metrics show --precision 4 > "$OUT/metrics.txt"
cp params.yaml dvc.lock "$OUT/" && cp reports/summary.md "$OUT/" 2>/dev/null || true
[ "$failed" = 0 ] || exit 1
dvc repro 2>&1 | tee "$OUT/dvc_repro_second.log"
echo "stages the second dvc repro ran (environment probes run every time by design):"
grep -o "Running stage '[^']*'" "$OUT/dvc_repro_second.log" | grep -v "environment@" || echo "none"
