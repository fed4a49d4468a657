"""TensorRT (10.x, 11.x) and TensorRT-RTX behind the build/load/run interface, one code path.

Both libraries expose the same strongly typed builder API; they differ in module name and in how the
target GPU is named at build time (TensorRT-RTX builds ahead of time for a compute capability, so
it runs on a machine with no GPU). Precision always comes from the ONNX (Q/DQ or AutoCast), never
from builder flags or calibrators (TensorRT 11 has neither; 10 still accepts the strongly typed
Q/DQ path), and is checked on the parsed network before building and in the engine inspector after.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..config.schema import HardwareCompatibility, TargetConfig
from ..errors import PipelineError
from ..files import atomic_path, sha256_bytes, sha256_file, write_json, write_text
from .base import SIDECAR, Backend, BuildRequest, Runner, input_specs
from .cuda_runtime import gpu_compute_capability

PLAN = "model.plan"
TIMING_CACHE = "timing.cache"
INSPECTION = "engine_inspection.json"
NETWORK_REPORT = "network.json"

# Which tensor data types prove a precision was applied (names of trt.DataType members).
EXPECTED_DTYPES = {"fp16": {"HALF"}, "bf16": {"BF16"}, "int8": {"INT8"}, "fp8": {"FP8"}, "fp32": {"FLOAT"}}


def _library_name(rtx: bool) -> str:
    return "tensorrt_rtx" if rtx else "tensorrt"


def import_tensorrt(rtx: bool):
    """The TensorRT module, or one clear error saying what to install."""
    try:
        if rtx:
            import tensorrt_rtx as trt
        else:
            import tensorrt as trt
    except ImportError as exc:
        hint = (
            "pip install tensorrt-rtx-cu13 (in requirements.lock)"
            if rtx
            else "install NVIDIA TensorRT 10.x or 11.x for this machine (pip install tensorrt-cu13 from NVIDIA's index, or JetPack on Jetson)"
        )
        raise PipelineError(f"target needs the {_library_name(rtx)} Python module, which is not importable here ({exc}); {hint}") from exc
    return trt


def parse_onnx(trt, onnx_path: Path):
    """Parse into a strongly typed network; a parser error names the failing node and op type."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for index in range(parser.num_errors):
            error = parser.get_error(index)
            errors.append(f"node '{error.node_name()}' ({error.node_operator()}): {error.desc()}")
        raise PipelineError(f"the TensorRT ONNX parser rejected {onnx_path}: " + "; ".join(errors or ["unknown error"]))
    return builder, network, parser, logger


def numpy_dtype_name(trt, dtype) -> str:
    """TensorRT DataType -> numpy dtype name (numpy has no bfloat16: ml_dtypes' name for it)."""
    if dtype.name == "BF16":
        return "bfloat16"
    return np.dtype(trt.nptype(dtype)).name


def network_precisions(network) -> dict:
    """Layer types and the data types of every layer output, read from the parsed network."""
    layer_types: Counter = Counter()
    dtypes: Counter = Counter()
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        layer_types[layer.type.name] += 1
        for output in range(layer.num_outputs):
            dtypes[layer.get_output(output).dtype.name] += 1
    return {"layer_types": dict(sorted(layer_types.items())), "tensor_dtypes": dict(sorted(dtypes.items()))}


def check_precision(found: dict, precision: str, where: str) -> None:
    """Fail when the requested precision left no trace (the silent-FP32 trap on TensorRT 11)."""
    expected = EXPECTED_DTYPES[precision]
    dtypes = found.get("tensor_dtypes", {})
    if not expected & set(dtypes):
        raise PipelineError(
            f"{precision} was requested but the {where} has no {'/'.join(sorted(expected))} tensors; "
            f"found tensor types {dtypes} and layers {found.get('layer_types', {})}. "
            f"Precision must come from the ONNX (Q/DQ for int8/fp8, AutoCast for fp16/bf16)"
        )
    if precision == "int8" and not found.get("layer_types", {}).get("QUANTIZE"):
        raise PipelineError(f"int8 was requested but the {where} has no Quantize layers; found {found.get('layer_types', {})}")


def _profile_shapes(network, request: BuildRequest) -> List[dict]:
    """min/opt/max per dynamic input axis from the model's profiles (axis 0 is 'batch')."""
    profiles = []
    for configured in request.model.profiles:
        shapes = {}
        for index in range(network.num_inputs):
            tensor = network.get_input(index)
            dims = list(tensor.shape)
            chosen = {}
            for which, values in (("min", configured.min), ("opt", configured.opt), ("max", configured.max)):
                shape = []
                for axis, dim in enumerate(dims):
                    if dim >= 0:
                        shape.append(dim)
                        continue
                    axis_name = "batch" if axis == 0 else (tensor.get_dimension_name(axis) or f"{tensor.name}_dim{axis}")
                    if axis_name not in values:
                        raise PipelineError(
                            f"profile has no {which} value for dynamic axis '{axis_name}' of input '{tensor.name}'; "
                            f"configured axes: {sorted(values)}"
                        )
                    shape.append(int(values[axis_name]))
                chosen[which] = shape
            shapes[tensor.name] = chosen
        profiles.append(shapes)
    return profiles


def _configure(trt, builder, target: TargetConfig, rtx: bool):
    settings = target.build
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    config.builder_optimization_level = settings.builder_optimization_level
    config.profiling_verbosity = getattr(trt.ProfilingVerbosity, settings.profiling_verbosity.value.upper())
    if settings.hardware_compatibility != HardwareCompatibility.none:
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, settings.hardware_compatibility.value.upper())
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if rtx and target.compute_capability:
        _set_rtx_compute_capability(trt, config, target.compute_capability)
    cache = None
    if not rtx:  # TensorRT-RTX times nothing at build time: its timing-cache calls are no-ops
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return config, cache


def _set_rtx_compute_capability(trt, config, compute_capability: str) -> None:  # TensorRT-RTX only
    """Ahead-of-time build for the target's SM: no GPU needed on the build machine."""
    sm = "SM" + compute_capability.replace(".", "")
    if not hasattr(trt.ComputeCapability, sm):
        allowed = [n for n in dir(trt.ComputeCapability) if n.startswith("SM")]
        raise PipelineError(f"TensorRT-RTX cannot build for compute capability {compute_capability}; it supports {allowed}")
    config.num_compute_capabilities = 1
    config.set_compute_capability(getattr(trt.ComputeCapability, sm), 0)


def inspect_engine(trt, plan: bytes) -> Optional[dict]:
    """Engine inspector JSON (needs a GPU that can deserialize the plan), or None without one."""
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        return None
    inspector = engine.create_engine_inspector()
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def inspection_precisions(inspection: dict) -> dict:
    """Tensor types named in the inspector's per-layer JSON (e.g. 'Int8', 'Half'), as trt.DataType names."""
    names = {"Int8": "INT8", "Half": "HALF", "Float": "FLOAT", "BFloat16": "BF16", "FP8": "FP8", "Int32": "INT32"}
    dtypes: Counter = Counter()
    for entry in inspection.get("Layers", []):  # JSON dicts, not TensorRT objects
        for io in entry.get("Inputs", []) + entry.get("Outputs", []) if isinstance(entry, dict) else []:
            fmt = str(io.get("Format/Datatype", ""))
            for key, value in names.items():
                if key in fmt:
                    dtypes[value] += 1
    return {"tensor_dtypes": dict(dtypes), "layer_types": {"QUANTIZE": dtypes.get("INT8", 0)}}


class TensorRTBackend(Backend):
    def __init__(self, rtx: bool = False):
        self.rtx = rtx
        self.name = _library_name(rtx)

    def check_available(self) -> None:
        import_tensorrt(self.rtx)

    def versions(self) -> Dict[str, str]:
        try:
            return {_library_name(self.rtx): import_tensorrt(self.rtx).__version__}
        except PipelineError:
            return {_library_name(self.rtx): "not installed"}

    def build(self, request: BuildRequest) -> dict:
        trt = import_tensorrt(self.rtx)
        out = Path(request.out_dir)
        builder, network, _parser, _logger = parse_onnx(trt, request.onnx_path)
        found = network_precisions(network)
        check_precision(found, request.precision, "parsed network")
        write_json(out / NETWORK_REPORT, found)
        config, cache = _configure(trt, builder, request.target, self.rtx)
        profiles = _profile_shapes(network, request)
        for shapes in profiles:
            profile = builder.create_optimization_profile()
            for name, chosen in shapes.items():
                profile.set_shape(name, chosen["min"], chosen["opt"], chosen["max"])
            config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise PipelineError(f"{self.name} failed to build an engine from {request.onnx_path} (see the builder log above)")
        plan_bytes = bytes(plan)
        with atomic_path(out / PLAN) as tmp:
            tmp.write_bytes(plan_bytes)
        cache_out = None
        if cache is not None:  # the tactic timings, reusable by trtexec --timingCacheFile
            cache_out = bytes(cache.serialize())
            with atomic_path(out / TIMING_CACHE) as tmp:
                tmp.write_bytes(cache_out)
        inspected = None
        if gpu_compute_capability() == request.target.compute_capability:
            inspection = inspect_engine(trt, plan_bytes)
            if inspection is not None:
                write_text(out / INSPECTION, json.dumps(inspection, indent=2, sort_keys=True))
                inspected = inspection_precisions(inspection)
                check_precision(inspected, request.precision, "built engine")
        sidecar = {
            "backend": self.name,
            "artifact": PLAN,
            "versions": {self.name: trt.__version__},
            "compute_capability": request.target.compute_capability,
            "target": request.target_name,
            "build": request.build_name,
            "precision": request.precision,
            "config_hash": request.config_hash,
            "onnx_sha256": sha256_file(request.onnx_path),
            "artifact_sha256": sha256_bytes(plan_bytes),
            "timing_cache_sha256": sha256_bytes(cache_out) if cache_out is not None else None,
            "profiles": profiles,
            "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": numpy_dtype_name(trt, t.dtype)} for t in map(network.get_input, range(network.num_inputs))],
            "outputs": [network.get_output(i).name for i in range(network.num_outputs)],
            "output_specs": [{"name": t.name, "shape": list(t.shape), "dtype": numpy_dtype_name(trt, t.dtype)}
                             for t in map(network.get_output, range(network.num_outputs))],
            "precisions_found": {"network": found, "engine": inspected},
            "engine_inspected": inspected is not None,
        }
        write_json(out / SIDECAR, sidecar)
        return sidecar

    def load(self, artifact_dir: Path, threads: int = 0, cuda_graph: bool = False, expect: Optional[Dict[str, str]] = None,
             gpu: int = 0, varying_shapes: bool = False) -> Runner:  # tactics were chosen at build: nothing is timed per shape
        sidecar = self.read_sidecar(artifact_dir, expect)
        trt = import_tensorrt(self.rtx)
        built_with = sidecar["versions"][self.name]
        if built_with != trt.__version__:
            raise PipelineError(f"{artifact_dir} was built with {self.name} {built_with}; this is {trt.__version__}: rebuild it (dvc repro)")
        device_cc = gpu_compute_capability()
        if device_cc is None:
            raise PipelineError(f"running a {self.name} engine needs an NVIDIA GPU and driver (libcuda); none found on this machine")
        if sidecar["compute_capability"] and device_cc != sidecar["compute_capability"]:
            raise PipelineError(f"{artifact_dir} was built for compute capability {sidecar['compute_capability']}; this GPU is {device_cc}")
        from .cuda_runners import TensorRTRunner

        plan = (Path(artifact_dir) / sidecar["artifact"]).read_bytes()
        inputs = input_specs(sidecar)
        return TensorRTRunner(trt, plan, inputs, sidecar["outputs"], use_cuda_graph=cuda_graph, gpu=gpu)



