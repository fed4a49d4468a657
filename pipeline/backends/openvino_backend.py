"""OpenVINO backend (CPU): the model calibrate wrote (the Q/DQ ONNX for INT8, the float model otherwise),
compiled by OpenVINO, which reads ONNX Q/DQ directly and runs INT8 on AMX / VNNI.

The artifact is OpenVINO's IR (``model.xml`` + ``model.bin``: the same bytes run after run, and not tied
to this host's CPU) with the compile properties in the sidecar; load compiles it for the host with those
properties. The inference precision is always set: left to itself OpenVINO runs FP32 models in BF16 on
an AMX CPU, and an fp32 build must compute in fp32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..config.schema import TensorSpec
from ..errors import PipelineError
from ..files import sha256_file, write_json
from .base import SIDECAR, Backend, BuildRequest, Runner, input_specs, tensor_entries

ARTIFACT, WEIGHTS = "model.xml", "model.bin"
# The precision OpenVINO computes in, per build precision (INT8 layers are Q/DQ in the model itself;
# bf16 builds compile the FP32 model to run on AMX-BF16).
INFERENCE_PRECISION = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}


def _ov():
    try:
        import openvino
    except ImportError as exc:
        raise PipelineError("the openvino backend needs OpenVINO: pip install openvino (pinned in requirements.lock)") from exc
    return openvino


def _spec(port) -> TensorSpec:
    shape = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
    return TensorSpec(name=port.get_any_name(), shape=shape, dtype=np.dtype(port.get_element_type().to_dtype()).name)


def compile_properties(precision: str, threads: int) -> Dict[str, str]:
    """OpenVINO's CPU properties for a build: latency mode (one stream; a batch is one request), the
    precision it computes in, and the thread count (0: OpenVINO's default, one per core)."""
    if precision not in INFERENCE_PRECISION:
        raise PipelineError(f"the openvino backend builds {sorted(INFERENCE_PRECISION)}, not '{precision}'")
    properties = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision]}
    if threads:
        properties["INFERENCE_NUM_THREADS"] = str(threads)
    return properties


class OpenVinoRunner(Runner):
    def __init__(self, compiled, inputs: List[TensorSpec]):
        self.compiled, self.inputs = compiled, inputs
        self.request = compiled.create_infer_request()
        self.output_names = [port.get_any_name() for port in compiled.outputs]

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        self.check_feeds(feeds)
        results = self.request.infer({spec.name: feeds[spec.name] for spec in self.inputs})
        # The request's output buffers are reused by its next run: hand out copies.
        return {name: np.array(results[port]) for name, port in zip(self.output_names, self.compiled.outputs)}


class OpenVinoBackend(Backend):
    name = "openvino"

    def check_available(self) -> None:
        if "CPU" not in _ov().Core().available_devices:
            raise PipelineError("this OpenVINO installation has no CPU plugin")

    def versions(self) -> Dict[str, str]:
        try:
            import openvino
        except ImportError:
            return {"openvino": "not installed"}
        return {"openvino": openvino.__version__.split("-")[0]}

    def build(self, request: BuildRequest) -> dict:
        ov = _ov()
        self.check_available()
        if request.target.device.value != "cpu":
            raise PipelineError(f"target '{request.target_name}': the openvino backend builds for the CPU, not {request.target.device.value}")
        properties = compile_properties(request.precision, request.target.build.intra_op_threads)
        core = ov.Core()
        try:
            model = core.read_model(str(request.onnx_path))
            core.compile_model(model, "CPU", properties)  # what load will do: a model OpenVINO cannot run fails the build
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with the frontend's reason
            raise PipelineError(f"OpenVINO cannot build {request.onnx_path}: {exc}") from exc
        out = Path(request.out_dir)
        ov.save_model(model, str(out / ARTIFACT), compress_to_fp16=False)
        sidecar = {
            "backend": self.name,
            "artifact": ARTIFACT,
            "weights": WEIGHTS,
            "versions": self.versions(),
            "device": "cpu",
            "cpu_isa": request.target.cpu_isa.value if request.target.cpu_isa else None,
            "target": request.target_name,
            "build": request.build_name,
            "precision": request.precision,
            "properties": properties,
            "config_hash": request.config_hash,
            "onnx_sha256": sha256_file(request.onnx_path),
            "artifact_sha256": sha256_file(out / ARTIFACT),
            "weights_sha256": sha256_file(out / WEIGHTS),
            **tensor_entries([_spec(port) for port in model.inputs], [_spec(port) for port in model.outputs]),
        }
        write_json(out / SIDECAR, sidecar)
        return sidecar

    def load(self, artifact_dir: Path, threads: int = 0, cuda_graph: bool = False, expect: Optional[Dict[str, str]] = None,
             gpu: int = 0, varying_shapes: bool = False) -> Runner:
        sidecar = self.read_sidecar(artifact_dir, expect)
        weights = Path(artifact_dir) / sidecar["weights"]
        if not weights.is_file() or sha256_file(weights) != sidecar["weights_sha256"]:
            raise PipelineError(f"{weights} is missing or not the file that was built: rebuild it (dvc repro)")
        properties = dict(sidecar["properties"])
        if threads:
            properties["INFERENCE_NUM_THREADS"] = str(threads)
        ov = _ov()
        try:
            compiled = ov.Core().compile_model(str(Path(artifact_dir) / sidecar["artifact"]), "CPU", properties)
        except Exception as exc:
            raise PipelineError(f"OpenVINO {ov.__version__} cannot load {artifact_dir} (built by {sidecar['versions']}): {exc}") from exc
        inputs = input_specs(sidecar)
        return OpenVinoRunner(compiled, inputs)
