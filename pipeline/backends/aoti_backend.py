"""PyTorch AOTInductor backend: the model's own PyTorch source compiled ahead of time into a ``.pt2``
package (C++ kernels on the CPU, Triton kernels on the GPU), loaded without Python model code.

It starts from the prepared checkpoint, not from the ONNX: ``torch.export`` with the profiles' dynamic
axes, then ``aoti_compile_and_package``. FP16/BF16 cast the weights (channels-last for convolutions);
the package takes and returns the model's own input and output types, as the other backends' artifacts
do, so validation and serving feed it the same arrays.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..config.schema import ModelConfig, ModelSource, TensorSpec
from ..errors import PipelineError
from ..files import require_file, sha256_file, write_json
from .base import SIDECAR, Backend, BuildRequest, Runner, cpuinfo, input_specs, tensor_entries

ARTIFACT = "model.pt2"
# What each precision compiles the weights and activations to (inputs and outputs keep their types).
PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# CPU targets: the -march Inductor's C++ compiler is given and the vector width of its kernels, so the
# package runs on every CPU of the target's kind, not only on the one that built it (Inductor's
# default is -march=native).
CPU_ISA_CODEGEN = {"x86_64": ("x86-64-v3", 256), "avx2": ("x86-64-v3", 256), "vnni": ("x86-64-v4", 512), "amx": ("sapphirerapids", 512)}
# The /proc/cpuinfo flags a CPU needs to run code compiled with each -march (the vector parts that matter).
MARCH_NEEDS = {
    "x86-64-v3": ("avx2", "fma", "bmi2", "f16c"),
    "x86-64-v4": ("avx2", "fma", "bmi2", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl"),
    "sapphirerapids": ("avx2", "fma", "bmi2", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16",
                       "amx_tile", "amx_int8", "amx_bf16"),
}


def missing_cpu_flags(march: str) -> List[str]:
    """The flags code compiled for ``march`` needs that this CPU lacks ([] off Linux: nothing to read)."""
    fields = cpuinfo()
    if not fields:
        return []
    flags = set(fields.get("flags", "").split())
    return [flag for flag in MARCH_NEEDS.get(march, ()) if flag not in flags]


def _torch():
    try:
        import torch
        import torch._inductor  # noqa: F401  (the AOTInductor entry points)
    except ImportError as exc:
        raise PipelineError("the aoti backend needs PyTorch: pip install torch") from exc
    return torch


@functools.lru_cache(maxsize=None)
def compiler_version() -> str:
    """The C++ compiler Inductor calls (its output is part of the package)."""
    compiler = os.environ.get("CXX", "g++")
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "not found"


# A dynamic axis no profile bounds (the package's kernels are compiled for a range).
UNBOUNDED_AXIS = 4096


def dynamic_ranges(model: ModelConfig) -> Dict[str, Dict[int, list]]:
    """Per input, each dynamic axis: [name, min, max], from the profiles (smallest min, largest max)."""
    ranges: Dict[str, Dict[int, list]] = {}
    for spec in model.inputs:
        for axis, size in enumerate(spec.shape):
            if size < 0:
                name = spec.axis_name(axis)
                lows = [p.min[name] for p in model.profiles if name in p.min]
                highs = [p.max[name] for p in model.profiles if name in p.max]
                # export specialises a dim whose range is a single 1: the package admits 2 at least
                ranges.setdefault(spec.name, {})[axis] = [name, min(lows) if lows else 1, max(max(highs) if highs else UNBOUNDED_AXIS, 2)]
    return ranges


def _dynamic_shapes(torch, model: ModelConfig, ranges: Dict[str, Dict[int, list]]) -> tuple:
    """torch.export's dynamic dims for the model's ``dynamic_ranges`` (axes of the same name share one Dim)."""
    dims: Dict[str, object] = {}
    shapes = []
    for spec in model.inputs:
        axes = {}
        for axis, (name, low, high) in ranges.get(spec.name, {}).items():
            axes[axis] = dims.setdefault(name, torch.export.Dim(name, min=low, max=high))
        shapes.append(axes or None)
    return tuple(shapes)


def _example(torch, model: ModelConfig, device: str, ranges: Dict[str, Dict[int, list]]) -> List:
    """One input per spec of the spec's dtype, each dynamic axis 2 long where its ``dynamic_ranges`` allow
    (export would fix an axis whose example is 1)."""
    tensors = []
    for spec in model.inputs:
        axes = ranges.get(spec.name, {})
        shape = [min(max(axes[axis][1], 2), axes[axis][2]) if axis in axes else size for axis, size in enumerate(spec.shape)]
        tensors.append(torch.ones(shape, dtype=getattr(torch, np.dtype(spec.dtype).name), device=device))
    return tensors


def _with_io_types(torch, module, dtype):
    """``module`` computing in ``dtype`` behind float inputs and outputs of their own types."""

    class KeepIoTypes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, *inputs):
            cast = [x.to(dtype) if x.is_floating_point() else x for x in inputs]
            outputs = self.inner(*cast)
            if isinstance(outputs, (tuple, list)):
                return tuple(o.float() if o.is_floating_point() else o for o in outputs)
            return outputs.float() if outputs.is_floating_point() else outputs

    return KeepIoTypes().eval()


@contextlib.contextmanager
def _private_inductor_cache(build_name: str):
    """A cache folder that is empty at the start of every compile and has the same path for every build of
    ``build_name`` (Inductor writes that path into the kernels it packages): a rebuild from unchanged
    inputs gives the same bytes. A lock keeps two processes from compiling the same build in it at once."""
    root = Path(tempfile.gettempdir()) / f"trt-pipeline-inductor-{os.getuid()}"
    root.mkdir(parents=True, exist_ok=True)
    folder = root / "".join(c if c.isalnum() or c in "-_." else "_" for c in build_name or "build")
    with open(root / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        shutil.rmtree(folder, ignore_errors=True)
        previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
        try:
            yield folder
        finally:
            if previous is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous
            shutil.rmtree(folder, ignore_errors=True)


def _specs(module, example: List, model: ModelConfig) -> List[TensorSpec]:
    """The output specs of ``module`` run on ``example`` (under the caller's no_grad)."""
    outputs = module(*example)
    outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
    if len(outputs) != len(model.outputs):
        raise PipelineError(f"the PyTorch model returns {len(outputs)} outputs; the model config names {len(model.outputs)}: {model.outputs}")
    # Output dims that follow the batch are dynamic, as in the exported ONNX.
    batch = example[0].shape[0] if model.inputs and model.inputs[0].batch else None
    return [TensorSpec(name=name, shape=[-1 if i == 0 and size == batch else int(size) for i, size in enumerate(out.shape)],
                       dtype=str(out.dtype).replace("torch.", "")) for name, out in zip(model.outputs, outputs)]


class AotiBackend(Backend):
    name = "aoti"

    def check_available(self, device: str = "cpu") -> None:
        torch = _torch()
        if device == "cuda" and not torch.cuda.is_available():
            raise PipelineError(f"the aoti backend on a CUDA target needs a GPU and a CUDA build of PyTorch (this is torch {torch.__version__})")
        if compiler_version() == "not found":
            raise PipelineError("AOTInductor compiles C++: install a C++ compiler (g++), or set CXX")

    def versions(self) -> Dict[str, str]:
        return {"torch": _torch().__version__, "cxx": compiler_version()}

    def build(self, request: BuildRequest) -> dict:
        torch = _torch()
        model = request.model
        device = request.target.device.value
        if model.source == ModelSource.onnx or request.checkpoint is None:
            raise PipelineError(f"aoti compiles a model's PyTorch source; {request.build_name or 'this model'} is an ONNX file "
                                "(source: onnx): use onnxruntime or another runtime of the target")
        if request.precision not in PRECISION_DTYPES:
            raise PipelineError(f"aoti builds {sorted(PRECISION_DTYPES)}, not {request.precision} (integer precisions live in the ONNX's Q/DQ)")
        self.check_available(device)
        from ..models import build_torch_model, load_checkpoint

        module = build_torch_model(model)
        module.load_state_dict(load_checkpoint(require_file(request.checkpoint, "prepared checkpoint")))
        dtype = getattr(torch, PRECISION_DTYPES[request.precision])
        channels_last = dtype != torch.float32 and any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in module.modules())
        module = module.eval().to(device=device, dtype=dtype)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)  # Tensor Core / AMX friendly convolutions
        wrapped = _with_io_types(torch, module, dtype)
        ranges = dynamic_ranges(model)
        example = _example(torch, model, device, ranges)
        options: Dict[str, object] = {"max_autotune": bool(request.target.build.inductor_max_autotune)}
        if device == "cpu":
            isa = request.target.cpu_isa.value if request.target.cpu_isa else "x86_64"
            options["cpp.march"], options["cpp.simdlen"] = CPU_ISA_CODEGEN[isa]
        artifact = Path(request.out_dir) / ARTIFACT
        try:
            with torch.no_grad():
                outputs = _specs(wrapped, example, model)
                exported = torch.export.export(wrapped, tuple(example), dynamic_shapes={"inputs": _dynamic_shapes(torch, model, ranges)})
            with _private_inductor_cache(request.build_name):
                torch._inductor.aoti_compile_and_package(exported, package_path=str(artifact), inductor_configs=options)
        except PipelineError:
            raise
        except Exception as exc:  # export and Inductor raise many types; the first line names the problem
            raise PipelineError(f"AOTInductor cannot compile {request.build_name or 'the model'}: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        sidecar = {
            "backend": self.name,
            "artifact": ARTIFACT,
            "versions": self.versions(),
            "device": device,
            "cpu_isa": request.target.cpu_isa.value if request.target.cpu_isa else None,
            "compute_capability": request.target.compute_capability if device == "cuda" else None,
            "target": request.target_name,
            "build": request.build_name,
            "precision": request.precision,
            "compute_dtype": PRECISION_DTYPES[request.precision],
            "channels_last": channels_last,
            "inductor_options": options,
            "config_hash": request.config_hash,
            "checkpoint_sha256": sha256_file(request.checkpoint),
            "artifact_sha256": sha256_file(artifact),
            **tensor_entries(model.inputs, outputs),
            # The kernels are compiled for these ranges: larger batches run in parts, other axes are refused.
            "dynamic_ranges": {name: {str(axis): r for axis, r in axes.items()} for name, axes in ranges.items()},
        }
        write_json(Path(request.out_dir) / SIDECAR, sidecar)
        return sidecar

    def load(self, artifact_dir: Path, threads: int = 0, cuda_graph: bool = False, expect: Optional[Dict[str, str]] = None,
             gpu: int = 0, varying_shapes: bool = False) -> Runner:
        sidecar = self.read_sidecar(artifact_dir, expect)
        torch = _torch()
        built_with = sidecar["versions"].get("torch")
        if built_with != torch.__version__:
            raise PipelineError(f"{artifact_dir} was compiled by torch {built_with}, this is {torch.__version__}: rerun the build stage (dvc repro)")
        device = sidecar.get("device", "cpu")
        if device == "cuda":
            self.check_available("cuda")
        else:  # kernels compiled for another CPU kind stop the process with an illegal instruction: refuse first
            march = sidecar.get("inductor_options", {}).get("cpp.march", "")
            missing = missing_cpu_flags(march)
            if missing:
                raise PipelineError(f"{artifact_dir} holds kernels compiled for -march={march} ({sidecar.get('cpu_isa') or 'x86_64'} target); "
                                    f"this CPU lacks {missing}: use a target this host runs (python -m pipeline cpu-target)")
        inputs = input_specs(sidecar)
        ranges = {name: {int(axis): r for axis, r in axes.items()} for name, axes in sidecar.get("dynamic_ranges", {}).items()}
        return AotiRunner(torch, Path(artifact_dir) / sidecar["artifact"], inputs, sidecar["outputs"], device, gpu, threads, ranges, cuda_graph)


class AotiRunner(Runner):
    """An AOTInductor package on the CPU or one GPU; numpy in, numpy out. Its kernels hold for the dynamic
    ranges it was compiled for: a larger batch runs in parts of the largest it admits (the ONNX runtimes take
    any batch, and callers such as validate count on that); any other axis out of range is refused."""

    def __init__(self, torch, package: Path, inputs: List[TensorSpec], output_names: List[str], device: str, gpu: int = 0, threads: int = 0,
                 ranges: Optional[Dict[str, Dict[int, list]]] = None, use_cuda_graph: bool = False):
        self._torch, self.inputs, self.output_names = torch, inputs, output_names
        self.ranges = ranges or {}
        batch_limits = [r[2] for spec in inputs if spec.batch for axis, r in self.ranges.get(spec.name, {}).items() if axis == 0]
        self.max_batch = min(batch_limits) if batch_limits else None
        self.device = torch.device(f"cuda:{gpu}") if device == "cuda" else torch.device("cpu")
        self.on_gpu, self.use_cuda_graph = device == "cuda", use_cuda_graph and device == "cuda"
        self.graph_mode, self.last_timing, self.last_enqueue_ms = "none", {}, 0.0
        self._graph, self._last_args, self._graph_args = None, None, None
        if threads and device == "cpu":
            torch.set_num_threads(threads)  # the package's OpenMP kernels use PyTorch's pool size
        # The loader warns when this host's best vector ISA differs from the one compiled for, which is the point
        # of compiling for the target's ISA (load checked the host has it).
        quiet = logging.getLogger("torch.export.pt2_archive._package")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            # A package run from a captured graph must not synchronise between its own threads.
            self.model = torch._inductor.aoti_load_package(str(package), run_single_threaded=self.use_cuda_graph,
                                                           device_index=gpu if device == "cuda" else -1)
        except Exception as exc:
            raise PipelineError(f"cannot load the AOTInductor package {package}: {type(exc).__name__}: {exc}") from exc
        finally:
            quiet.setLevel(level)

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        self.check_feeds(feeds)
        self._check_ranges(feeds)
        batch = next((len(feeds[spec.name]) for spec in self.inputs if spec.batch), 0)
        if self.max_batch is None or batch <= self.max_batch:
            return self._run(feeds)
        parts = [self._run({spec.name: feeds[spec.name][start:start + self.max_batch] if spec.batch else feeds[spec.name] for spec in self.inputs})
                 for start in range(0, batch, self.max_batch)]
        return {name: np.concatenate([part[name] for part in parts]) for name in self.output_names}

    def _check_ranges(self, feeds: Dict[str, np.ndarray]) -> None:
        for spec in self.inputs:
            for axis, (name, low, high) in self.ranges.get(spec.name, {}).items():
                size = feeds[spec.name].shape[axis]
                if size < low or (size > high and not (axis == 0 and spec.batch)):
                    raise PipelineError(f"input '{spec.name}' axis {axis} ('{name}') is {size}; this AOTInductor package was compiled "
                                        f"for {low} to {high} (the model's profiles): widen the profile and rebuild")

    def _run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        torch = self._torch
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)] if self.on_gpu else []
        if events:
            events[0].record()
        args = []
        for spec in self.inputs:
            # Fresh tensors: the kernels assume row-major strides on every axis, and numpy calls an array
            # contiguous whatever the stride of a length-1 axis (a batch of images sliced from a stack).
            array = feeds[spec.name]
            tensor = torch.empty(array.shape, dtype=getattr(torch, array.dtype.name), device=self.device)
            args.append(tensor.copy_(torch.from_numpy(array)))
        self._last_args = args
        if events:
            events[1].record()
        outputs = self._call(args)
        if events:
            events[2].record()
        result = {name: out.detach().cpu().numpy() for name, out in zip(self.output_names, outputs)}
        if events:
            events[3].record()
            events[3].synchronize()
            self.last_timing = {f"{stage}_ms": start.elapsed_time(end) for stage, start, end in zip(("h2d", "compute", "d2h"), events, events[1:])}
        if self.use_cuda_graph and self._graph is None:  # captured on the first run's shapes, replayed by compute_only
            self._capture()
        return result

    def _call(self, args: List) -> List:
        with self._torch.inference_mode():
            outputs = self.model(*args)
        return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

    # GPU benchmark figures (pipeline/evaluate/gpu_benchmark.py): compute alone on the last run's inputs,
    # replayed from a CUDA graph when the runner was loaded with one.
    def compute_only(self) -> float:
        torch = self._torch
        if not self.on_gpu or self._last_args is None:
            raise PipelineError("compute_only times a GPU runner after a first run")
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        if self._graph is not None:
            self._graph.replay()
        else:
            self._call(self._last_args)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def _capture(self) -> None:
        torch = self._torch
        static = [arg.clone() for arg in self._last_args]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # allocations happen before the capture
                    self._call(static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._call(static)
        except Exception as exc:  # torch raises RuntimeError types of its own
            raise PipelineError(f"the AOTInductor package could not be captured in a CUDA graph: {type(exc).__name__}: {exc}") from exc
        self._graph, self._graph_args, self.graph_mode = graph, static, "torch_cuda_graph"

    def in_this_thread(self):
        """Another thread drives this runner on its GPU (torch's current device is per thread)."""
        return self._torch.cuda.device(self.device) if self.on_gpu else contextlib.nullcontext()

    def overlapped(self, input_shapes, slots: int = 2):
        raise PipelineError("the aoti runner has no overlapped-transfer pipeline; its 'serial' figure times transfers")

    def close(self) -> None:
        self._graph, self._last_args, self._graph_args = None, None, None
