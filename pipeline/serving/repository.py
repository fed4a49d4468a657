"""Triton model repositories for a build, written through Triton's own protobuf (model_config_pb2 +
text_format) and parsed back as a check.

Two forms: ``native`` is what a production Triton container loads directly (onnxruntime_onnx +
model.onnx, or tensorrt_plan + model.plan with GPU instance groups); ``python`` wraps the project's
own runner in Triton's Python backend, the form the embedded default serves with the server from
the nvidia-pytriton wheel (which has no other backend).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np

from ..config.checks import PYTHON_FORM_RUNTIMES
from ..config.schema import Device, ServingConfig, option_value
from ..errors import PipelineError

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# The runner's modules, vendored into the Python form (the stub sees no PYTHONPATH).
RUNNER_MODULES = ["__init__.py", "errors.py", "files.py", "config/__init__.py", "config/schema.py", "backends/__init__.py",
                  "backends/base.py", "backends/onnxruntime_backend.py"]
VERSION = "1"


@functools.lru_cache(maxsize=None)
def model_config_pb2():
    """tritonclient's generated ModelConfig module, loaded once from its file: importing the
    tritonclient.grpc package needs grpcio, which writing a config does not."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError("writing Triton model configs needs tritonclient: run `make venv` (requirements-serving.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("trt_pipeline_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def triton_dtype(dtype: np.dtype) -> str:
    names = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
             "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL", "bfloat16": "TYPE_BF16"}
    if np.dtype(dtype).name not in names:
        raise PipelineError(f"no Triton data type for numpy {np.dtype(dtype).name}; supported: {sorted(names)}")
    return names[np.dtype(dtype).name]


@dataclass(frozen=True)
class Batching:
    """The dynamic-batching part of a model config: configured (pinned) or found by the batching search."""

    instances: int
    max_queue_delay_us: int
    preferred_batch_sizes: List[int]

    @classmethod
    def configured(cls, serving: ServingConfig) -> "Batching":
        return cls(serving.instances, serving.max_queue_delay_us, list(serving.preferred_batch_sizes))

    def apply(self, config) -> None:
        """Set this batching on a Triton ModelConfig, in place (a model without a batch axis,
        max_batch_size 0, takes only the instance count)."""
        for group in config.instance_group:
            group.count = self.instances
        if not config.max_batch_size:
            return
        config.dynamic_batching.max_queue_delay_microseconds = self.max_queue_delay_us
        del config.dynamic_batching.preferred_batch_size[:]
        config.dynamic_batching.preferred_batch_size.extend(sorted({min(b, config.max_batch_size) for b in self.preferred_batch_sizes}))


def python_form_problem(backend, device) -> str:
    """Why this machine's Triton (the wheel's server, Python backend wrapping the project's runner in
    .venv-serving) cannot serve a build of this backend and device (enums or their strings); '' when it can:
    ONNX Runtime and OpenVINO builds on the CPU, ONNX Runtime on CUDA where this host has an NVIDIA GPU."""
    backend, device = option_value(backend), option_value(device)
    if backend in PYTHON_FORM_RUNTIMES["cpu"] and device == "cpu":
        return ""
    if backend == "onnxruntime" and device == "cuda":
        from ..backends.cuda_runtime import gpu_compute_capability

        return "" if gpu_compute_capability() else ("it is an onnxruntime build on cuda and this host has no NVIDIA GPU (libcuda); "
                                                    "serve it on its GPU host, or its native package on a Triton server there")
    if backend == "aoti":
        return ("it is an AOTInductor package, run by PyTorch, which this machine's serving environment (.venv-serving) does not "
                "hold: serve its Python form from a Triton whose Python-backend environment has the same torch")
    return (f"it is a {backend} build on {device}; the embedded Triton serves ONNX Runtime and OpenVINO builds on the CPU "
            f"and, on a GPU host, ONNX Runtime CUDA builds. Its native package is for a Triton server on its own target")


def runner_modules(device: Device, backend: str = "onnxruntime") -> List[str]:
    """The project modules the Python form vendors: the runner, its CUDA layer for GPU builds, and the
    OpenVINO runner for OpenVINO builds (served where the Python backend's environment has OpenVINO)."""
    return (RUNNER_MODULES + (["backends/cuda_runtime.py", "backends/cuda_runners.py"] if device == Device.cuda else [])
            + ([f"backends/{backend}_backend.py"] if backend in ("openvino", "aoti") else []))


@dataclass
class TensorInfo:
    name: str
    dtype: str  # numpy dtype name
    dims: List[int]  # without the batch axis; -1 = variable


def write_config(path: Path, config) -> None:
    from google.protobuf import text_format

    text = text_format.MessageToString(config)
    path.write_text(text, encoding="utf-8")
    parsed = text_format.Parse(path.read_text(encoding="utf-8"), type(config)())
    if parsed != config:  # the written text must be what Triton will read
        raise PipelineError(f"{path} does not parse back to the config that was written")


def read_config(path: Path):
    from google.protobuf import text_format

    return text_format.Parse(Path(path).read_text(encoding="utf-8"), model_config_pb2().ModelConfig())


def _base_config(name: str, inputs: List[TensorInfo], outputs: List[TensorInfo], max_batch: int, warmup: List[Dict[str, np.ndarray]],
                 parameters: Dict[str, str]):
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name, max_batch_size=max_batch)
    for info, field in [(i, config.input) for i in inputs] + [(o, config.output) for o in outputs]:
        field.add(name=info.name, data_type=getattr(pb.DataType, triton_dtype(info.dtype)), dims=info.dims)
    if max_batch:
        config.dynamic_batching.SetInParent()
    config.version_policy.latest.num_versions = 1
    for index, request in enumerate(warmup):  # one step per real sample, fed as a client sends it
        step = config.model_warmup.add(name=f"validation_sample_{index}", batch_size=1, count=1)
        for info in inputs:
            value = request[info.name]
            step.inputs[info.name].data_type = getattr(pb.DataType, triton_dtype(info.dtype))
            step.inputs[info.name].dims.extend(value.shape[1:] if max_batch else value.shape)  # max_batch_size 0: full dims
            step.inputs[info.name].input_data_file = _warmup_file(info.name, index)
    for key, value in sorted(parameters.items()):
        config.parameters[key].string_value = value
    return config


def _warmup_file(input_name: str, index: int) -> str:
    """A file name for an input's warm-up sample (input names may hold '/', e.g. 'image/pixels'); the
    hash keeps names that differ only in such characters apart."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", input_name)
    if safe != input_name:
        safe += "-" + hashlib.sha256(input_name.encode()).hexdigest()[:8]
    return f"{safe}_{index}"


def _warmup_files(model_dir: Path, warmup: List[Dict[str, np.ndarray]]) -> None:
    """Triton reads warm-up inputs as raw little-endian bytes from <model>/warmup/<file>."""
    folder = model_dir / "warmup"
    folder.mkdir(parents=True)
    for index, request in enumerate(warmup):
        for name, value in request.items():
            (folder / _warmup_file(name, index)).write_bytes(np.ascontiguousarray(value).tobytes())


def _instance_kind(device: Device):
    """Triton's instance-group kind for a build's device."""
    groups = model_config_pb2().ModelInstanceGroup
    return groups.KIND_GPU if device == Device.cuda else groups.KIND_CPU


def write_repositories(out: Path, name: str, engine_dir: Path, sidecar: dict, device: Device, gpus: List[int],
                       inputs: List[TensorInfo], outputs: List[TensorInfo], max_batch: int, batching: Batching, threads: int,
                       warmup: List[Dict[str, np.ndarray]], fingerprint: Dict[str, str], cuda_graphs: bool = False) -> Dict[str, Path]:
    """``out/native/<name>`` and ``out/python/<name>``; returns the config.pbtxt of each form."""
    kind = _instance_kind(device)
    written = {}
    native_dir = out / "native" / name

    if sidecar["backend"] == "aoti":
        # Triton's PyTorch backend loads TorchScript (and Python modules with torch.compile), not AOTInductor
        # packages: the Python form, which runs the package through torch, is the one to serve.
        native_dir.mkdir(parents=True)
        (native_dir / "NO_NATIVE_FORM.txt").write_text(
            "No native form: Triton's PyTorch backend loads TorchScript, not AOTInductor (.pt2) packages.\n"
            f"Serve ../../python/{name} from a Triton whose Python-backend environment has torch {sidecar['versions'].get('torch')}.\n",
            encoding="utf-8")
        return {"python": _python_form(out, name, engine_dir, sidecar, device, gpus, inputs, outputs, max_batch, batching, threads, warmup, fingerprint)}

    (native_dir / VERSION).mkdir(parents=True)
    native = _base_config(name, inputs, outputs, max_batch, warmup, fingerprint)
    artifact = engine_dir / sidecar["artifact"]
    if sidecar["backend"] == "onnxruntime":
        native.platform, native.backend = "onnxruntime_onnx", "onnxruntime"
        shutil.copyfile(artifact, native_dir / VERSION / "model.onnx")
        if threads:
            native.parameters["intra_op_thread_count"].string_value = str(threads)
    elif sidecar["backend"] == "openvino":
        # Triton's openvino backend: the IR, compiled with the build's properties (the precision above all).
        native.backend = "openvino"
        shutil.copyfile(artifact, native_dir / VERSION / "model.xml")
        shutil.copyfile(engine_dir / sidecar["weights"], native_dir / VERSION / "model.bin")
        for key, value in sidecar["properties"].items():
            native.parameters[key].string_value = value
        if threads:
            native.parameters["INFERENCE_NUM_THREADS"].string_value = str(threads)
    else:
        native.platform, native.backend = "tensorrt_plan", "tensorrt"
        shutil.copyfile(artifact, native_dir / VERSION / "model.plan")
        native.optimization.cuda.graphs = cuda_graphs
    native.instance_group.add(kind=kind, gpus=gpus if device == Device.cuda else [])
    batching.apply(native)
    _warmup_files(native_dir, warmup)
    write_config(native_dir / "config.pbtxt", native)
    written["native"] = native_dir / "config.pbtxt"
    written["python"] = _python_form(out, name, engine_dir, sidecar, device, gpus, inputs, outputs, max_batch, batching, threads, warmup, fingerprint)
    return written


def _python_form(out: Path, name: str, engine_dir: Path, sidecar: dict, device: Device, gpus: List[int], inputs: List[TensorInfo],
                 outputs: List[TensorInfo], max_batch: int, batching: Batching, threads: int, warmup: List[Dict[str, np.ndarray]],
                 fingerprint: Dict[str, str]) -> Path:
    """``out/python/<name>``: Triton's Python backend running the project's runner on the artifact; its config.pbtxt."""
    kind = _instance_kind(device)
    python_dir = out / "python" / name
    version_dir = python_dir / VERSION
    version_dir.mkdir(parents=True)
    shutil.copyfile(Path(__file__).with_name("triton_model.py"), version_dir / "model.py")
    for module in runner_modules(device, sidecar["backend"]):
        target = version_dir / "pipeline" / module
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE_ROOT / module, target)
    shutil.copytree(engine_dir, version_dir / "engine")
    # Per version (the config is per model, shared by every version): which build this version holds.
    (version_dir / "package.json").write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    wrapped = _base_config(name, inputs, outputs, max_batch, warmup, {**fingerprint, "intra_op_threads": str(threads)})
    wrapped.backend = "python"
    wrapped.instance_group.add(kind=kind, gpus=gpus if device == Device.cuda else [])
    batching.apply(wrapped)
    _warmup_files(python_dir, warmup)
    write_config(python_dir / "config.pbtxt", wrapped)
    return python_dir / "config.pbtxt"


def live_copy(package_model: Path, repository: Path, version: str, execution_env: Path, name: str = "") -> Path:
    """Copy a packaged Python-form model into a live repository as ``version`` (under ``name``, default
    its own), pointing its Python backend at this machine's serving environment (numpy < 2: numpy 2
    breaks the 2.51 stub)."""
    config = read_config(package_model / "config.pbtxt")
    config.name = name or config.name
    model_dir = repository / config.name
    model_dir.mkdir(parents=True, exist_ok=True)
    if (model_dir / version).exists():
        shutil.rmtree(model_dir / version)
    shutil.copytree(package_model / VERSION, model_dir / version)
    if (package_model / "warmup").is_dir() and not (model_dir / "warmup").exists():
        shutil.copytree(package_model / "warmup", model_dir / "warmup")
    config.parameters["EXECUTION_ENV_PATH"].string_value = str(execution_env.resolve())
    write_config(model_dir / "config.pbtxt", config)
    return model_dir
