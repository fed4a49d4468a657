#!/usr/bin/env bash
# The GPU part of the pipeline on the lent H200, in one device call (after the onnxruntime-gpu
# wheel was staged into /root/stage with ../shared/tools/device-stage):
#   install the carried wheels, build pycuda from its sdist, run the GPU tests, then the h200_ort
#   target's validate + benchmark on ResNet-50 (scripts/gpu_benchmarks.py). Results land in $OUT.
set -euo pipefail
OUT=${OUT:-/tmp/gpu_out}
SITE=/tmp/site
mkdir -p "$OUT" "$SITE"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PATH=/usr/local/cuda/bin:$PATH

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl /root/stage/.ortstage/*.whl
export PYTHONPATH="$SITE:$PWD"

if ! python3 -c "import pycuda.driver" 2>/dev/null; then
  start=$(date +%s)
  rm -rf /tmp/pycuda-build && mkdir -p /tmp/pycuda-build && tar -xzf .whl/pycuda-*.tar.gz -C /tmp/pycuda-build
  (cd /tmp/pycuda-build/pycuda-* && python3 configure.py --cuda-root=/usr/local/cuda >/dev/null \
     && python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" .)
  echo "pycuda built from source in $(( $(date +%s) - start )) s" | tee "$OUT/pycuda_build.txt"
fi
python3 -c "import onnxruntime as o, pycuda.driver as d; d.init(); print('onnxruntime', o.__version__, o.get_available_providers()); print('GPU', d.Device(0).name())" | tee "$OUT/versions.txt"

python3 -m pytest -m gpu -q -s -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" || true
python3 scripts/gpu_benchmarks.py --out "$OUT" 2>&1 | tee "$OUT/gpu_benchmarks.log"
