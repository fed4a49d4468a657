"""Backends behind one build/load/run interface. Library imports happen lazily, inside each backend."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..config.schema import Backend as BackendKind
from ..config.schema import option_value
from ..errors import PipelineError
from ..files import read_json, require_file
from .base import SIDECAR, Backend, BuildRequest, Runner

__all__ = ["SIDECAR", "Backend", "BuildRequest", "Runner", "built_by", "get_backend"]


def built_by(artifact_dir: Path, runtimes: Sequence) -> Backend:
    """The backend that built the artifact in ``artifact_dir`` (its sidecar names it), which must be one of
    ``runtimes``, the target's candidates: a target that measures runtimes may have chosen any of them."""
    path = require_file(Path(artifact_dir) / SIDECAR, "artifact sidecar")
    try:
        built = read_json(path).get("backend")
    except (ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise PipelineError(f"malformed artifact sidecar {path}: {exc}; rebuild the artifact (dvc repro)") from exc
    allowed = [option_value(r) for r in runtimes]
    if built not in allowed:
        raise PipelineError(f"{artifact_dir} was built by '{built}', which is not a runtime of its target ({allowed}); rebuild it (dvc repro)")
    return get_backend(built)


def get_backend(kind: BackendKind | str) -> Backend:
    kind = BackendKind(kind)
    if kind == BackendKind.onnxruntime:
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    if kind == BackendKind.aoti:
        from .aoti_backend import AotiBackend

        return AotiBackend()
    if kind == BackendKind.openvino:
        from .openvino_backend import OpenVinoBackend

        return OpenVinoBackend()
    from .tensorrt_backend import TensorRTBackend

    return TensorRTBackend(rtx=kind == BackendKind.tensorrt_rtx)
