"""The GPU device layer under the TensorRT and ONNX Runtime CUDA runners (cuda_runners.py): devices,
buffers, CUDA graphs, event timers, NVML.

pycuda (the ``[gpu]`` extra, imported only here and only when something runs on a GPU) provides
device buffers, page-locked host buffers, streams and events. It retains the device's *primary*
context, the one TensorRT, ONNX Runtime and cuda-python's runtime API use, instead of
pycuda.autoinit's private one. pycuda has no graph-capture API, so CUDA graphs are captured with
cuda-python (``cuda.bindings.runtime``) on the pycuda stream's handle. NVML (nvidia-ml-py) samples
utilisation while a benchmark runs.
"""
from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from typing import Callable, Dict, Optional

import numpy as np

from ..errors import PipelineError


def gpu_compute_capability() -> Optional[str]:
    """The first GPU's compute capability via the CUDA driver, or None without a driver/GPU."""
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            cuda = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return None
    if cuda.cuInit(0) != 0:
        return None
    major, minor, device = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    if cuda.cuDeviceGet(ctypes.byref(device), 0) != 0:
        return None
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)  # ..._MINOR
    return f"{major.value}.{minor.value}"


def require_gpu(what: str) -> str:
    capability = gpu_compute_capability()
    if capability is None:
        raise PipelineError(f"{what} needs an NVIDIA GPU and driver (libcuda); none found on this machine")
    return capability


def import_pycuda():
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise PipelineError(f"running on the GPU needs pycuda ({exc}): pip install 'pycuda==2026.1' (the [gpu] extra)") from exc
    return cuda


class CudaCallError(PipelineError):
    """A CUDA runtime call returned an error."""


def _check(result, call: str):
    """cuda-python returns (error, *values): raise with the failing call's name."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise CudaCallError(f"CUDA error in {call}: {error!r}")
    return values[0] if len(values) == 1 else values


class CudaDevice:
    """The primary context of GPU ``index`` (CUDA's numbering, after CUDA_VISIBLE_DEVICES), made
    current for the lifetime of this object."""

    def __init__(self, index: int = 0):
        self.cuda = import_pycuda()
        require_gpu("the CUDA runtime layer")
        self.cuda.init()
        visible = self.cuda.Device.count()
        if not 0 <= index < visible:
            raise PipelineError(f"GPU {index} does not exist: this process sees {visible} GPU(s), 0 to {visible - 1}")
        self.index = index
        self.context = self.cuda.Device(index).retain_primary_context()
        self.context.push()

    @contextlib.contextmanager
    def current(self):
        """This device's context current in the calling thread (a context is current per thread: a
        benchmark's worker thread has none until it is pushed)."""
        self.context.push()
        try:
            yield
        finally:
            self.context.pop()

    def close(self) -> None:
        if self.context is not None:
            self.context.pop()
            self.context = None


class Buffer:
    """A page-locked host array and a device allocation of the same size, grown on demand."""

    def __init__(self, cuda, dtype):
        self.cuda, self.dtype, self.capacity = cuda, np.dtype(dtype), 0
        self.host = self.device = None

    def ensure(self, shape) -> None:
        count = int(np.prod(shape))
        if count > self.capacity:
            self.host = self.cuda.pagelocked_empty(count, self.dtype)
            self.device = self.cuda.mem_alloc(max(1, count * self.dtype.itemsize))
            self.capacity = count

    @property
    def pointer(self) -> int:
        return int(self.device)

    def upload(self, array: np.ndarray, stream) -> None:
        """Stage ``array`` in the page-locked buffer and copy it asynchronously. The staging buffer
        is reused: synchronise ``stream`` before the next upload (runners do, once per run)."""
        array = np.ascontiguousarray(array, dtype=self.dtype)
        self.ensure(array.shape)
        self.host[: array.size] = array.ravel()
        self.cuda.memcpy_htod_async(self.device, self.host[: array.size], stream)

    def download(self, shape, stream) -> np.ndarray:
        size = int(np.prod(shape))
        self.cuda.memcpy_dtoh_async(self.host[:size], self.device, stream)
        return self.host[:size]


class CudaGraph:
    """Capture the work ``enqueue`` puts on ``stream`` once, then replay it with one launch."""

    def __init__(self, stream, enqueue: Callable[[], None]):
        from cuda.bindings import runtime

        self.runtime, self.handle = runtime, stream.handle
        _check(runtime.cudaStreamBeginCapture(self.handle, runtime.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture")
        try:
            enqueue()
        finally:
            graph = _check(runtime.cudaStreamEndCapture(self.handle), "cudaStreamEndCapture")
        self.graph = graph
        self.executable = _check(runtime.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def launch(self) -> None:
        _check(self.runtime.cudaGraphLaunch(self.executable, self.handle), "cudaGraphLaunch")

    def close(self) -> None:
        self.runtime.cudaGraphExecDestroy(self.executable)
        self.runtime.cudaGraphDestroy(self.graph)


class EventTimer:
    """GPU-side elapsed time between two points of a stream."""

    def __init__(self, cuda):
        self.start, self.end = cuda.Event(), cuda.Event()

    def record_start(self, stream) -> None:
        self.start.record(stream)

    def record_end(self, stream) -> None:
        self.end.record(stream)

    def elapsed_ms(self) -> float:
        self.end.synchronize()
        return self.end.time_since(self.start)


class NvmlSampler:
    """Samples SM and memory-bandwidth utilisation, memory used and SM clock on a thread."""

    def __init__(self, interval_s: float = 0.02, index: int = 0):
        self.interval_s, self.index, self.samples = interval_s, index, []  # index: NVML's, which ignores CUDA_VISIBLE_DEVICES
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self):
        try:
            import pynvml
        except ImportError as exc:
            raise PipelineError("GPU benchmarks sample NVML through nvidia-ml-py: pip install nvidia-ml-py") from exc
        pynvml.nvmlInit()
        self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(self.index)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        nvml, handle = self._nvml, self._handle
        while not self._stop.is_set():
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            self.samples.append((rates.gpu, rates.memory, nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20,
                                 nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)))
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._nvml.nvmlShutdown()

    def summary(self) -> Dict[str, float]:
        if not self.samples:
            return {}
        data = np.asarray(self.samples, dtype=np.float64)
        return {
            "sm_utilization_mean": float(data[:, 0].mean()), "sm_utilization_max": float(data[:, 0].max()),
            "memory_bandwidth_utilization_mean": float(data[:, 1].mean()),
            "memory_used_mib_max": float(data[:, 2].max()), "sm_clock_mhz_mean": float(data[:, 3].mean()),
            "nvml_samples": int(len(data)),
        }


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value  # older NVML bindings return bytes


def gpu_identity(index: int = 0) -> Optional[dict]:
    """Name, compute capability and driver of GPU ``index`` from NVML; None on a machine without one."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no nvidia-ml-py, or no driver: no GPU to tie an engine to
        return None
    try:
        if index >= pynvml.nvmlDeviceGetCount():
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        return {"name": _text(pynvml.nvmlDeviceGetName(handle)), "compute_capability": f"{major}.{minor}",
                "driver": _text(pynvml.nvmlSystemGetDriverVersion())}
    finally:
        pynvml.nvmlShutdown()
