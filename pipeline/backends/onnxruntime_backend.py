"""ONNX Runtime backend: the embedded default (CPU), graph optimizations baked in offline."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..config.schema import TensorSpec
from ..errors import PipelineError
from ..files import require_file, sha256_file, write_json
from .base import SIDECAR, Backend, BuildRequest, Runner, RunnerPerShape, input_specs, ort_numpy_dtype, tensor_entries

ARTIFACT = "model.onnx"
_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise PipelineError("the onnxruntime backend needs onnxruntime: pip install onnxruntime") from exc
    onnxruntime.set_default_logger_severity(3)
    return onnxruntime


def session_options(threads: int = 0, level: str = "all"):
    ort = _ort()
    if level not in _LEVELS:
        raise PipelineError(f"graph_optimization_level '{level}' is not one of {sorted(_LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
    if threads:
        options.intra_op_num_threads = threads
    return options


def create_session(path: Path | str, threads: int = 0, level: str = "all", disabled_optimizers: Sequence[str] = ()):
    """An InferenceSession on the CPU with a clear error for files ONNX Runtime refuses."""
    ort = _ort()
    require_file(path, "ONNX model")
    try:
        return ort.InferenceSession(str(path), session_options(threads, level), providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(disabled_optimizers))
    except Exception as exc:  # ORT raises Fail/InvalidGraph/NotImplemented, all RuntimeError-like
        raise PipelineError(f"ONNX Runtime cannot load {path}: {exc}") from exc


class OnnxRuntimeRunner(Runner):
    def __init__(self, session, inputs: List[TensorSpec]):
        self.session = session
        self.inputs = inputs
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        self.check_feeds(feeds)
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs))


def specs_from_session(session, outputs: bool = False) -> List[TensorSpec]:
    """Input (or output) specs read from the model itself: symbolic or unknown dims become -1."""
    return [
        TensorSpec(name=i.name, shape=[d if isinstance(d, int) else -1 for d in i.shape], dtype=ort_numpy_dtype(i.type).name)
        for i in (session.get_outputs() if outputs else session.get_inputs())
    ]


def _specs_from_onnx(path: Path) -> tuple:
    import onnx

    from ..onnx_tools.inspect import numpy_dtype, real_inputs

    model = onnx.load(str(path), load_external_data=False)

    def spec(value) -> TensorSpec:
        return TensorSpec(name=value.name, shape=[d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim],
                          dtype=numpy_dtype(value.type.tensor_type.elem_type).name)

    return [spec(v) for v in real_inputs(model)], [spec(v) for v in model.graph.output]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def check_available(self, device: str = "cpu") -> None:
        ort = _ort()
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise PipelineError(
                f"the CUDA target needs onnxruntime-gpu (this onnxruntime {ort.__version__} offers {ort.get_available_providers()}): "
                "pip install onnxruntime-gpu==1.31.1 in place of onnxruntime"
            )
        if "CPUExecutionProvider" not in ort.get_available_providers():
            raise PipelineError("this onnxruntime build has no CPUExecutionProvider")

    def versions(self) -> Dict[str, str]:
        return {"onnxruntime": _ort().__version__}

    def build(self, request: BuildRequest) -> dict:
        ort = _ort()
        self.check_available()
        artifact = Path(request.out_dir) / ARTIFACT
        if request.target.device.value == "cuda":
            # The CUDA EP optimizes when it loads (fusions differ per provider, and the CPU EP has no
            # fp16 kernels to pre-optimize with): the artifact is the ONNX as calibrated.
            import shutil

            shutil.copyfile(request.onnx_path, artifact)
            inputs, outputs = _specs_from_onnx(artifact)
        else:
            options = session_options(request.target.build.intra_op_threads, request.target.build.graph_optimization_level.value)
            options.optimized_model_filepath = str(artifact)
            try:
                session = ort.InferenceSession(str(request.onnx_path), options, providers=["CPUExecutionProvider"],
                                               disabled_optimizers=list(request.target.build.disabled_optimizers))
            except Exception as exc:
                raise PipelineError(f"ONNX Runtime cannot build {request.onnx_path}: {exc}") from exc
            inputs, outputs = specs_from_session(session), specs_from_session(session, outputs=True)
        sidecar = {
            "backend": self.name,
            "artifact": ARTIFACT,
            "versions": {"onnxruntime": ort.__version__},
            "device": request.target.device.value,
            "cpu_isa": request.target.cpu_isa.value if request.target.cpu_isa else None,
            "target": request.target_name,
            "build": request.build_name,
            "precision": request.precision,
            "graph_optimization_level": request.target.build.graph_optimization_level.value,
            # Left out at build and again at load, where ONNX Runtime optimizes the artifact once more.
            "disabled_optimizers": list(request.target.build.disabled_optimizers),
            "config_hash": request.config_hash,
            **({"cuda_provider_options": dict(request.target.build.cuda_provider_options)} if request.target.device.value == "cuda" else {}),
            "onnx_sha256": sha256_file(request.onnx_path),
            "artifact_sha256": sha256_file(artifact),
            **tensor_entries(inputs, outputs),
        }
        write_json(Path(request.out_dir) / SIDECAR, sidecar)
        return sidecar

    def load(self, artifact_dir: Path, threads: int = 0, cuda_graph: bool = False, expect: Optional[Dict[str, str]] = None,
             gpu: int = 0, varying_shapes: bool = False) -> Runner:
        sidecar = self.read_sidecar(artifact_dir, expect)
        ort = _ort()
        inputs = input_specs(sidecar)
        path = Path(artifact_dir) / sidecar["artifact"]
        if sidecar.get("device") == "cuda":
            from .cuda_runners import OnnxRuntimeCudaRunner
            from .cuda_runtime import require_gpu

            require_gpu("the ONNX Runtime CUDA target")
            self.check_available("cuda")

            level = sidecar.get("graph_optimization_level", "all")  # the target's setting, applied when the CUDA EP loads

            # The CUDA provider sets its convolutions up for the input shape of the last run and again at
            # every change, timing each cuDNN algorithm the first time it meets a shape (seconds for
            # ResNet-50). Many shapes: a session per shape, algorithms by heuristics so loading stays quick.
            search = {"cudnn_conv_algo_search": "HEURISTIC"} if varying_shapes else {}
            session = cuda_session_factory(path, threads, level, {**sidecar.get("cuda_provider_options", {}), **search})

            def runner():
                return OnnxRuntimeCudaRunner(session, inputs, sidecar["outputs"], use_cuda_graph=cuda_graph, gpu=gpu)

            return RunnerPerShape(runner) if varying_shapes else runner()
        if sidecar["versions"]["onnxruntime"] != ort.__version__:
            # An offline-optimized model may use kernels of the version that wrote it.
            raise PipelineError(
                f"{artifact_dir} was optimized by onnxruntime {sidecar['versions']['onnxruntime']}, "
                f"this is {ort.__version__}: rerun the build stage (dvc repro)"
            )
        return OnnxRuntimeRunner(create_session(path, threads, disabled_optimizers=sidecar.get("disabled_optimizers", ())), inputs)


def load_onnx_runner(path: Path | str, threads: int = 0, level: str = "all", disabled_optimizers: Sequence[str] = ()) -> OnnxRuntimeRunner:
    """A runner straight on an ONNX file (the FP32 reference, plain-ORT baselines)."""
    session = create_session(path, threads, level, disabled_optimizers)
    return OnnxRuntimeRunner(session, specs_from_session(session))


def cuda_session_factory(path: Path | str, threads: int, level: str, provider_options: Dict[str, str]) -> Callable[[dict], object]:
    """What OnnxRuntimeCudaRunner makes its sessions with: the CUDA provider on ``path`` with
    ``provider_options`` (the target's, recorded at build), plus those the runner adds per session."""
    ort = _ort()

    def session(cuda_options: dict):
        return ort.InferenceSession(str(path), session_options(threads, level),
                                    providers=[("CUDAExecutionProvider", {**provider_options, **cuda_options}), "CPUExecutionProvider"])

    return session


def load_onnx_cuda_runner(path: Path | str, inputs: List[TensorSpec], output_names: List[str], provider_options: Optional[Dict[str, str]] = None,
                          gpu: int = 0) -> Runner:
    """A CUDA-provider runner straight on an ONNX file whose inputs and outputs are ``inputs`` and
    ``output_names`` (the FP32 reference a lower-precision CUDA build is timed against, with the target's
    provider options, as its FP32 build would run)."""
    from .cuda_runners import OnnxRuntimeCudaRunner
    from .cuda_runtime import require_gpu

    require_gpu("the FP32 reference on the GPU")
    return OnnxRuntimeCudaRunner(cuda_session_factory(path, 0, "all", dict(provider_options or {})), inputs, output_names, gpu=gpu)
