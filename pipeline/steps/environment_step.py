"""environment: what a target's artifacts are tied to, as a file that changes only when that does.

DVC cannot see a library upgrade or another GPU: this stage runs on every `dvc repro` (it takes well
under a second) and rewrites the file with the same bytes unless something changed, so the stages
that depend on it (calibrate onwards) rerun exactly when the quantizer's or the engine library's
version, or the device the engine is tied to, changes, and a result pulled from a machine with
another environment is rebuilt rather than trusted.
"""
from __future__ import annotations

from importlib import metadata

from ..backends import get_backend
from ..config.schema import Backend, Device, PipelineConfig
from ..evaluate.host import host_cpu
from ..files import write_json
from ..paths import environment_file

# calibrate converts precision with these for every target (Q/DQ with ONNX Runtime, AutoCast with ModelOpt).
QUANTIZER_DISTRIBUTIONS = ("onnx", "onnxruntime", "nvidia-modelopt")


def _installed(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def engine_environment(cfg: PipelineConfig, target_name: str) -> dict:
    target = cfg.target[target_name]
    environment = {
        "target": target_name,
        "quantizer": {name: _installed(name) for name in QUANTIZER_DISTRIBUTIONS},
        "engine": {"backend": target.backend.value, **get_backend(target.backend).versions()},
    }
    if target.runtimes:  # every runtime the build may choose: a new wheel of any of them rebuilds
        environment["engine"]["runtimes"] = [r.value for r in target.runtimes]
        for runtime in target.runtimes:
            environment["engine"].update(get_backend(runtime).versions())
    if target.device == Device.cpu:
        isa = target.cpu_isa.value if target.cpu_isa else None
        # An ONNX Runtime artifact runs on any CPU; whether this host has the target's ISA decides what
        # the speed guard measured and whether validate/benchmark figures are the target's.
        environment["device"] = {"cpu_isa": isa, "host_runs_it": host_cpu().supports(isa)}
    elif target.backend == Backend.tensorrt_rtx:
        # Built ahead of time for the target's compute capability: no local GPU is involved.
        environment["device"] = {"compute_capability": target.compute_capability}
    else:
        from ..backends.cuda_runtime import gpu_identity

        environment["device"] = {"gpu": gpu_identity(), "target_compute_capability": target.compute_capability}
    return environment


def environment(cfg: PipelineConfig, target_name: str) -> dict:
    found = engine_environment(cfg, target_name)
    write_json(environment_file(cfg, target_name), found)
    return found
