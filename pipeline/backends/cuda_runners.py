"""The GPU runners on the device layer of cuda_runtime.py: a runner on one CUDA stream with transfers timed
or overlapped with compute, and the TensorRT and ONNX Runtime CUDA runners built on it."""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

import numpy as np

from ..config.schema import TensorSpec
from ..errors import PipelineError
from .base import Runner, ort_numpy_dtype
from .cuda_runtime import Buffer, CudaCallError, CudaDevice, CudaGraph, EventTimer


class StreamRunner(Runner):
    """A runner on one CUDA stream: inputs uploaded, computed, downloaded, each timed with events.

    ``run`` includes the transfers (end-to-end); ``compute_only`` replays the computation on inputs
    already on the device, which is what "transfers excluded" measures.
    """

    def __init__(self, inputs: List[TensorSpec], output_names: List[str], gpu: int = 0):
        self.device = CudaDevice(gpu)
        self.cuda = self.device.cuda
        self.stream = self.cuda.Stream()
        self.inputs, self.output_names = inputs, output_names
        self.timers = {stage: EventTimer(self.cuda) for stage in ("h2d", "compute", "d2h")}
        self.last_timing: Dict[str, float] = {}  # GPU ms per stage of the last run (CUDA events)
        self.last_enqueue_ms = 0.0
        self._shapes: Dict[str, tuple] = {}

    # Subclasses: bind buffers for these feeds (return output shapes), then enqueue the computation.
    def _prepare(self, feeds: Dict[str, np.ndarray]) -> Dict[str, tuple]:
        raise NotImplementedError

    def _compute(self) -> None:
        raise NotImplementedError

    def _buffer(self, name: str) -> Buffer:
        raise NotImplementedError

    # Overlapped transfers: the dtype of each tensor, and one computation on a slot's own buffers.
    def _dtype(self, name: str) -> np.dtype:
        raise NotImplementedError

    def _bind_slot(self, slot: "TransferSlot", input_shapes: Dict[str, tuple]) -> Dict[str, tuple]:
        """Point the computation at ``slot``'s device buffers (sized for ``input_shapes``); output shapes."""
        raise NotImplementedError

    def _compute_slot(self, slot: "TransferSlot") -> None:
        """Enqueue one computation on ``slot`` on this runner's stream, without waiting for it."""
        raise NotImplementedError

    def in_this_thread(self):
        """A context manager that lets another thread drive this runner (its CUDA context made current there)."""
        return self.device.current()

    def overlapped(self, input_shapes: Dict[str, tuple], slots: int = 2) -> "OverlappedTransfers":
        """A pipeline of batches of ``input_shapes`` with transfers overlapped with compute (see OverlappedTransfers)."""
        return OverlappedTransfers(self, input_shapes, slots)

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        self.check_feeds(feeds)
        self._shapes = self._prepare(feeds)
        timers = self.timers
        timers["h2d"].record_start(self.stream)
        for spec in self.inputs:
            self._buffer(spec.name).upload(feeds[spec.name], self.stream)
        timers["h2d"].record_end(self.stream)
        timers["compute"].record_start(self.stream)
        enqueue_start = time.perf_counter()
        self._compute()
        self.last_enqueue_ms = (time.perf_counter() - enqueue_start) * 1000.0  # host time to submit (ORT: until done)
        timers["compute"].record_end(self.stream)
        timers["d2h"].record_start(self.stream)
        hosts = {name: self._buffer(name).download(shape, self.stream) for name, shape in self._shapes.items()}
        timers["d2h"].record_end(self.stream)
        self.stream.synchronize()
        self.last_timing = {f"{stage}_ms": timer.elapsed_ms() for stage, timer in timers.items()}
        return {name: hosts[name].reshape(self._shapes[name]).copy() for name in self.output_names}

    def compute_only(self) -> float:
        """GPU milliseconds of one computation on the inputs of the last ``run``."""
        timer = self.timers["compute"]
        timer.record_start(self.stream)
        self._compute()
        timer.record_end(self.stream)
        return timer.elapsed_ms()

    def close(self) -> None:
        if getattr(self, "device", None) is not None:
            self.device.close()
            self.device = None


class TransferSlot:
    """One batch in flight: page-locked host and device buffers for every input and output, and the
    events that order its copy in, computation and copy out across streams."""

    def __init__(self, runner: StreamRunner, input_shapes: Dict[str, tuple]):
        cuda = runner.cuda
        self.buffers = {spec.name: Buffer(cuda, runner._dtype(spec.name)) for spec in runner.inputs}
        for name, shape in input_shapes.items():
            self.buffers[name].ensure(shape)
        self.input_shapes = dict(input_shapes)
        self.output_shapes = runner._bind_slot(self, input_shapes)
        for name, shape in self.output_shapes.items():
            self.buffers[name] = Buffer(cuda, runner._dtype(name))
            self.buffers[name].ensure(shape)
        runner._bind_slot(self, input_shapes)  # again, now that the output buffers exist
        self.started, self.copied_in, self.computed, self.copied_out = cuda.Event(), cuda.Event(), cuda.Event(), cuda.Event()
        self.in_flight = False

    def host_inputs(self) -> Dict[str, np.ndarray]:
        return {name: self.buffers[name].host[: int(np.prod(shape))].reshape(shape) for name, shape in self.input_shapes.items()}

    def outputs(self) -> Dict[str, np.ndarray]:
        return {name: self.buffers[name].host[: int(np.prod(shape))].reshape(shape).copy() for name, shape in self.output_shapes.items()}


class OverlappedTransfers:
    """Batches through a StreamRunner with host-device copies overlapped with compute.

    Each slot owns page-locked host buffers, so the caller writes a batch straight into the memory the
    copy engine reads (``acquire``), with no staging copy. ``submit`` returns at once after enqueuing
    the slot's upload on a copy-in stream, its computation on the runner's stream once that upload is
    done, and its download on a copy-out stream once the computation is done: while batch n computes,
    batch n+1 is uploaded and batch n-1 downloaded. With two slots the GPU always has the next batch.
    Outputs come back in submission order, from ``submit`` (those finished meanwhile) and ``drain``.
    """

    def __init__(self, runner: StreamRunner, input_shapes: Dict[str, tuple], slots: int = 2):
        if slots < 1:
            raise PipelineError(f"overlapped transfers need at least one slot, got {slots}")
        self.runner = runner
        self.copy_in, self.copy_out = runner.cuda.Stream(), runner.cuda.Stream()
        self.slots = [TransferSlot(runner, input_shapes) for _ in range(slots)]
        self.latencies_ms: List[float] = []  # per batch, GPU time from its upload's start to its download's end
        self._next = 0
        self._pending: List[TransferSlot] = []  # in flight, oldest first (slots are used in turn)
        self._ready: List[Dict[str, np.ndarray]] = []  # finished, not yet handed back

    def acquire(self) -> Dict[str, np.ndarray]:
        """The page-locked input arrays of the next free slot, to fill in place (waits for its last batch)."""
        slot = self.slots[self._next]
        if slot.in_flight:
            self._finish(slot)
        return slot.host_inputs()

    def submit(self) -> List[Dict[str, np.ndarray]]:
        """Enqueue the acquired slot; returns the outputs of earlier batches that have finished."""
        slot = self.slots[self._next]
        runner, cuda = self.runner, self.runner.cuda
        slot.started.record(self.copy_in)
        for name in slot.input_shapes:
            buffer = slot.buffers[name]
            cuda.memcpy_htod_async(buffer.device, buffer.host[: int(np.prod(slot.input_shapes[name]))], self.copy_in)
        slot.copied_in.record(self.copy_in)
        runner.stream.wait_for_event(slot.copied_in)
        runner._compute_slot(slot)
        slot.computed.record(runner.stream)
        self.copy_out.wait_for_event(slot.computed)
        for name, shape in slot.output_shapes.items():
            buffer = slot.buffers[name]
            cuda.memcpy_dtoh_async(buffer.host[: int(np.prod(shape))], buffer.device, self.copy_out)
        slot.copied_out.record(self.copy_out)
        slot.in_flight = True
        self._pending.append(slot)
        self._next = (self._next + 1) % len(self.slots)
        while self._pending[0] is not slot and self._pending[0].copied_out.query():
            self._finish(self._pending[0])
        done, self._ready = self._ready, []
        return done

    def __enter__(self) -> "OverlappedTransfers":
        return self

    def __exit__(self, *exc) -> None:
        while self._pending:  # nothing may still write into buffers about to be freed
            self._pending.pop(0).copied_out.synchronize()

    def drain(self) -> List[Dict[str, np.ndarray]]:
        """Wait for every batch in flight; the outputs not yet handed back, in submission order."""
        while self._pending:
            self._finish(self._pending[0])
        done, self._ready = self._ready, []
        return done

    def _finish(self, slot: TransferSlot) -> None:
        slot.copied_out.synchronize()
        self.latencies_ms.append(slot.copied_out.time_since(slot.started))
        slot.in_flight = False
        self._pending.remove(slot)
        self._ready.append(slot.outputs())


class TensorRTRunner(StreamRunner):
    """A TensorRT plan on one execution context and one stream, with optional CUDA-graph replay."""

    def __init__(self, trt, plan: bytes, inputs: List[TensorSpec], output_names: List[str], use_cuda_graph: bool = False, gpu: int = 0):
        super().__init__(inputs, output_names, gpu)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            self.close()
            raise PipelineError("TensorRT could not deserialize the engine (library version or GPU mismatch)")
        self.context = self.engine.create_execution_context()
        self.use_cuda_graph = use_cuda_graph
        self.buffers: Dict[str, Buffer] = {
            name: Buffer(self.cuda, trt.nptype(self.engine.get_tensor_dtype(name))) for name in [s.name for s in inputs] + output_names
        }
        self.graphs: Dict[tuple, CudaGraph] = {}
        self._key: tuple = ()

    def _buffer(self, name: str) -> Buffer:
        return self.buffers[name]

    def _prepare(self, feeds: Dict[str, np.ndarray]) -> Dict[str, tuple]:
        for spec in self.inputs:
            self.buffers[spec.name].ensure(feeds[spec.name].shape)
            self.context.set_input_shape(spec.name, feeds[spec.name].shape)
            self.context.set_tensor_address(spec.name, self.buffers[spec.name].pointer)
        shapes = {name: tuple(self.context.get_tensor_shape(name)) for name in self.output_names}
        for name, shape in shapes.items():
            self.buffers[name].ensure(shape)
            self.context.set_tensor_address(name, self.buffers[name].pointer)
        self._key = tuple(feeds[s.name].shape for s in self.inputs)
        return shapes

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise PipelineError("TensorRT execute_async_v3 failed")

    def _dtype(self, name: str) -> np.dtype:
        return self.buffers[name].dtype

    def _bind_slot(self, slot: TransferSlot, input_shapes: Dict[str, tuple]) -> Dict[str, tuple]:
        for name, shape in input_shapes.items():
            self.context.set_input_shape(name, shape)
            self.context.set_tensor_address(name, slot.buffers[name].pointer)
        shapes = {name: tuple(self.context.get_tensor_shape(name)) for name in self.output_names}
        for name in shapes:
            if name in slot.buffers:
                self.context.set_tensor_address(name, slot.buffers[name].pointer)
        return shapes

    def _compute_slot(self, slot: TransferSlot) -> None:
        self._bind_slot(slot, slot.input_shapes)  # addresses are read at enqueue: each slot its own
        self._enqueue()

    def _compute(self) -> None:
        if not self.use_cuda_graph:
            self._enqueue()
            return
        if self._key not in self.graphs:
            self._enqueue()  # a plain run first lets TensorRT finish shape-dependent set-up
            self.graphs[self._key] = CudaGraph(self.stream, self._enqueue)
        self.graphs[self._key].launch()

    def close(self) -> None:
        for graph in getattr(self, "graphs", {}).values():
            graph.close()
        self.graphs = {}
        super().close()


class OnnxRuntimeCudaRunner(StreamRunner):
    """ONNX Runtime's CUDA execution provider on our stream, inputs and outputs bound to pycuda
    device buffers through IOBinding.

    CUDA graphs: the runner captures one ``Run`` on its own stream (ORT's end-of-run synchronisation
    off) and replays it with a bare ``cudaGraphLaunch``, skipping ORT's per-run host work. If ORT
    does something a capture cannot hold, it falls back to ORT's own graph mode (``enable_cuda_graph``).
    ``graph_mode`` says which one ran.
    """

    def __init__(self, session_factory: Callable[[dict], object], inputs: List[TensorSpec], output_names: List[str], use_cuda_graph: bool = False,
                 gpu: int = 0):
        super().__init__(inputs, output_names, gpu)
        self._session_factory = session_factory
        self.session = self._new_session(ort_graph=False)
        self.graph_mode = "none"
        self.graph_fallback: Optional[str] = None  # why stream capture was abandoned, if it was
        self._graph: Optional[CudaGraph] = None
        import onnxruntime

        self._capture_options = onnxruntime.RunOptions()
        self._capture_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        if "CUDAExecutionProvider" not in self.session.get_providers():
            self.close()
            raise PipelineError("ONNX Runtime did not enable its CUDA execution provider (is onnxruntime-gpu installed, matching this CUDA?)")
        self.io = self.session.io_binding()
        self.buffers: Dict[str, Buffer] = {}
        self.use_cuda_graph = use_cuda_graph
        self._bound_shapes: Dict[str, tuple] = {}
        self._dtypes = {v.name: ort_numpy_dtype(v.type) for v in list(self.session.get_inputs()) + list(self.session.get_outputs())}
        self._output_dims = {o.name: o.shape for o in self.session.get_outputs()}
        self._slot_bindings: Dict[int, object] = {}  # overlapped transfers: one IOBinding per slot

    def _new_session(self, ort_graph: bool):
        options = {"device_id": str(self.device.index), "user_compute_stream": str(self.stream.handle), "enable_cuda_graph": "1" if ort_graph else "0"}
        return self._session_factory(options)

    def _buffer(self, name: str) -> Buffer:
        if name not in self.buffers:
            self.buffers[name] = Buffer(self.cuda, self._dtypes[name])
        return self.buffers[name]

    def _output_shapes(self, input_shapes: Dict[str, tuple]) -> Dict[str, tuple]:
        symbols: Dict[str, int] = {}
        for value in self.session.get_inputs():
            for dim, size in zip(value.shape, input_shapes[value.name]):
                if isinstance(dim, str):
                    symbols[dim] = size
        shapes = {}
        for name, dims in self._output_dims.items():
            unknown = [d for d in dims if not isinstance(d, int) and d not in symbols]
            if unknown:
                raise PipelineError(f"output '{name}' has dims {dims}; {unknown} cannot be derived from the inputs' shapes")
            shapes[name] = tuple(d if isinstance(d, int) else symbols[d] for d in dims)
        return shapes

    def _prepare(self, feeds: Dict[str, np.ndarray]) -> Dict[str, tuple]:
        shapes = self._output_shapes({name: tuple(array.shape) for name, array in feeds.items()})
        bound = {**{n: tuple(f.shape) for n, f in feeds.items()}, **shapes}
        if bound != self._bound_shapes:  # rebinding changes addresses: a captured graph is replayed only on a fixed binding
            if self.use_cuda_graph and self._bound_shapes:
                raise PipelineError("ORT CUDA-graph mode needs one fixed input shape per runner; create a runner per batch size")
            self.io.clear_binding_inputs()
            self.io.clear_binding_outputs()
            for name, shape in bound.items():
                buffer = self._buffer(name)
                buffer.ensure(shape)
                bind = self.io.bind_input if name in feeds else self.io.bind_output
                bind(name, "cuda", 0, self._dtypes[name], list(shape), buffer.pointer)
            self._bound_shapes = bound
        return shapes

    def _dtype(self, name: str) -> np.dtype:
        return np.dtype(self._dtypes[name])

    def _bind_slot(self, slot: TransferSlot, input_shapes: Dict[str, tuple]) -> Dict[str, tuple]:
        shapes = self._output_shapes(input_shapes)
        if id(slot) not in self._slot_bindings:
            self._slot_bindings[id(slot)] = self.session.io_binding()
        io = self._slot_bindings[id(slot)]
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        for name, shape in {**input_shapes, **shapes}.items():
            if name in slot.buffers:
                bind = io.bind_input if name in input_shapes else io.bind_output
                bind(name, "cuda", 0, self._dtypes[name], list(shape), slot.buffers[name].pointer)
        return shapes

    def _compute_slot(self, slot: TransferSlot) -> None:
        # Without ORT's end-of-run synchronisation the call returns once the work is enqueued.
        self.session.run_with_iobinding(self._slot_bindings[id(slot)], self._capture_options)

    def _compute(self) -> None:
        if not self.use_cuda_graph:
            self.session.run_with_iobinding(self.io)
        elif self._graph is not None:
            self._graph.launch()
        elif self.graph_mode == "onnxruntime":
            self.session.run_with_iobinding(self.io)  # ORT captures on an early run, then replays
        else:
            # Warm with the capture's own options: without ORT's end-of-run sync its arena keeps
            # more buffers alive, and every allocation must happen before the capture.
            for _ in range(3):
                self.session.run_with_iobinding(self.io, self._capture_options)
                self.stream.synchronize()
            from onnxruntime.capi.onnxruntime_pybind11_state import EPFail, Fail, RuntimeException

            try:
                self._graph = CudaGraph(self.stream, lambda: self.session.run_with_iobinding(self.io, self._capture_options))
                self.graph_mode = "stream_capture"
                self._graph.launch()
            except (CudaCallError, EPFail, Fail, RuntimeException) as exc:
                # ORT synchronised or allocated inside the capture: use its own graphs, and say so
                # (graph_mode and graph_fallback land in the benchmark metrics).
                self.graph_fallback = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                self._graph = None
                self.graph_mode = "onnxruntime"
                self.stream = self.cuda.Stream()  # the failed capture may have left the old one unusable
                self.session = self._new_session(ort_graph=True)
                self.io, self._bound_shapes = self.session.io_binding(), {}
                raise _Rebind()

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        try:
            return super().run(feeds)
        except _Rebind:
            return super().run(feeds)

    def close(self) -> None:
        if self._graph is not None:
            self._graph.close()
            self._graph = None
        super().close()


class _Rebind(Exception):
    """The session was replaced (graph-mode fallback): bind and run again."""
