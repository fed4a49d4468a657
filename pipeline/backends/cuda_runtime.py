"""GPU execution of TensorRT plans with pycuda: device and pinned host buffers, one stream per
execution context, ``execute_async_v3`` with tensor addresses, input shapes set per batch.

pycuda is an optional extra (``pip install .[gpu]``), imported only here, only when an engine runs.
It shares the device's primary context with TensorRT (not pycuda.autoinit's private one).
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from ..config.schema import TensorSpec
from ..errors import PipelineError
from .base import Runner


def import_pycuda():
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise PipelineError(f"running engines on the GPU needs pycuda ({exc}): pip install 'pycuda==2026.1' (the [gpu] extra)") from None
    return cuda


class _Buffer:
    """A pinned host array and a device allocation, grown on demand."""

    def __init__(self, cuda, dtype: np.dtype):
        self.cuda, self.dtype, self.capacity = cuda, dtype, 0
        self.host = self.device = None

    def ensure(self, shape) -> None:
        count = int(np.prod(shape))
        if count > self.capacity:
            self.host = self.cuda.pagelocked_empty(count, self.dtype)
            self.device = self.cuda.mem_alloc(max(1, count * self.dtype.itemsize))
            self.capacity = count


class TensorRTRunner(Runner):
    def __init__(self, trt, plan: bytes, inputs: List[TensorSpec], output_names: List[str]):
        cuda = import_pycuda()
        cuda.init()
        self.cuda = cuda
        self.context_handle = cuda.Device(0).retain_primary_context()
        self.context_handle.push()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            self.close()
            raise PipelineError("TensorRT could not deserialize the engine (library version or GPU mismatch)")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.inputs, self.output_names = inputs, output_names
        self.buffers: Dict[str, _Buffer] = {
            name: _Buffer(cuda, np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))))
            for name in [s.name for s in inputs] + output_names
        }

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        self.check_feeds(feeds)
        cuda = self.cuda
        for spec in self.inputs:
            array = np.ascontiguousarray(feeds[spec.name], dtype=self.buffers[spec.name].dtype)
            buffer = self.buffers[spec.name]
            buffer.ensure(array.shape)
            buffer.host[: array.size] = array.ravel()
            cuda.memcpy_htod_async(buffer.device, buffer.host[: array.size], self.stream)
            self.context.set_input_shape(spec.name, array.shape)
            self.context.set_tensor_address(spec.name, int(buffer.device))
        shapes = {}
        for name in self.output_names:
            shapes[name] = tuple(self.context.get_tensor_shape(name))
            self.buffers[name].ensure(shapes[name])
            self.context.set_tensor_address(name, int(self.buffers[name].device))
        if not self.context.execute_async_v3(self.stream.handle):
            raise PipelineError("TensorRT execute_async_v3 failed")
        results = {}
        for name in self.output_names:
            buffer, size = self.buffers[name], int(np.prod(shapes[name]))
            cuda.memcpy_dtoh_async(buffer.host[:size], buffer.device, self.stream)
            results[name] = buffer.host[:size]
        self.stream.synchronize()
        return {name: results[name].reshape(shapes[name]).copy() for name in self.output_names}

    def close(self) -> None:
        if getattr(self, "context_handle", None) is not None:
            self.context_handle.pop()
            self.context_handle = None
