"""Backends behind one build/load/run interface. Library imports happen lazily, inside each backend."""
from __future__ import annotations

from ..config.schema import Backend as BackendKind
from .base import SIDECAR, Backend, BuildRequest, Runner

__all__ = ["SIDECAR", "Backend", "BuildRequest", "Runner", "get_backend"]


def get_backend(kind: BackendKind | str) -> Backend:
    kind = BackendKind(kind)
    if kind == BackendKind.onnxruntime:
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    if kind == BackendKind.openvino:
        from .openvino_backend import OpenVinoBackend

        return OpenVinoBackend()
    from .tensorrt_backend import TensorRTBackend

    return TensorRTBackend(rtx=kind == BackendKind.tensorrt_rtx)
