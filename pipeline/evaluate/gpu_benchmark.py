"""GPU latency/throughput at one batch size: the figures of ``benchmark.gpu`` (a captured CUDA graph
replayed, eager launches, host transfers overlapped or in turn), each timed with CUDA events for a
bounded time, NVML sampled while the headline figure runs."""
from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List, Tuple

import numpy as np

from ..backends.cuda_runners import StreamRunner
from ..backends.cuda_runtime import NvmlSampler
from ..config.schema import GpuBenchmarkConfig, GpuFigure
from ..errors import PipelineError
from .benchmark import TimeBudget, latency_stats, repeat_spread, timed_until

# Where a figure's inputs are: on the GPU already (transfers excluded) or in host memory.
ON_DEVICE = (GpuFigure.graph, GpuFigure.eager)
# NVML's utilisation counters refresh every 1/6 s or faster; polling faster only repeats values.
NVML_SLOWEST_S, NVML_FASTEST_S = 0.1, 0.005


def gpu_batch_sizes(wanted: List[int], largest: int) -> List[int]:
    """The sweep's sizes up to the model's largest profile batch (that batch itself where the list jumps past it)."""
    sizes = sorted({size for size in wanted if size <= largest})
    if any(size > largest for size in wanted) and largest not in sizes:
        sizes.append(largest)
    return sizes


def nvml_interval_s(seconds: float, min_samples: int) -> float:
    """A sampling period giving at least ``min_samples`` samples over a run of ``seconds``."""
    if min_samples <= 0 or seconds <= 0:
        return NVML_SLOWEST_S
    return min(NVML_SLOWEST_S, max(NVML_FASTEST_S, seconds / (min_samples * 1.25)))  # a quarter spare for the poll's own time


def gpu_benchmark_batch(load: Callable[[bool], StreamRunner], feeds: Dict[str, np.ndarray], batch_size: int, cfg: GpuBenchmarkConfig,
                        repeats: int = 3, spread_warning: float = 0.10) -> dict:
    """One row of the sweep: the first figure of ``cfg.figures`` that runs is the headline (its figures at
    the row's top level), every later one is timed beside it under its own name. ``load(cuda_graph)``
    makes a runner; runners are made per figure kind and closed before returning."""
    runners: Dict[bool, List[StreamRunner]] = {}

    def runner_set(graph: bool, count: int) -> List[StreamRunner]:
        made = runners.setdefault(graph, [])
        while len(made) < count:
            made.append(load(graph))
            for _ in range(cfg.warmup):
                made[-1].run(feeds)  # uploads the inputs the on-device figures reuse; a graph is captured here
        return made[:count]

    row: dict = {"batch_size": batch_size}
    headline_done = False
    try:
        for figure in cfg.figures:
            headline = not headline_done
            budget = TimeBudget(cfg.min_seconds, cfg.min_iterations, cfg.max_seconds) if headline else TimeBudget(cfg.beside_seconds, 1, cfg.max_seconds)
            try:
                chosen = runner_set(figure == GpuFigure.graph, cfg.streams if headline else 1)
            except Exception as exc:  # a capture fails in the runtime's own error types too (ONNX Runtime's)
                if figure != GpuFigure.graph:
                    raise
                for runner in runners.pop(True, []):
                    runner.close()
                row["graph_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"  # the next figure heads the row
                continue
            if headline:
                with NvmlSampler(nvml_interval_s(cfg.min_seconds, cfg.nvml_min_samples)) as nvml:
                    result = _measure(figure, chosen, feeds, batch_size, budget)
                spread = repeat_spread(result.pop("latencies_ms"), repeats)
                row.update(result, repeat_spread=spread, noisy=spread > spread_warning, **nvml.summary())
                if row.get("nvml_samples", 0) < cfg.nvml_min_samples:
                    row["nvml_note"] = (f"{row.get('nvml_samples', 0)} NVML samples in {result['seconds']:.2f} s, fewer than "
                                        f"benchmark.gpu.nvml_min_samples={cfg.nvml_min_samples}: utilisation is not a measurement here")
                headline_done = True
            else:
                try:
                    beside = _measure(figure, chosen, feeds, batch_size, budget)
                except PipelineError as exc:  # a runtime without this figure (no overlapped-transfer pipeline) says so
                    row[f"{figure.value}_error"] = str(exc).splitlines()[0]
                    continue
                row[figure.value] = {key: beside[key] for key in ("p50_ms", "p99_ms", "mean_ms", "throughput", "runs", "seconds")}
        if not headline_done:
            raise PipelineError(f"no figure of benchmark.gpu.figures={[f.value for f in cfg.figures]} ran at batch {batch_size}: {row.get('graph_error')}")
        graphed = runners.get(True, [None])[0]
        row["graph_mode"] = getattr(graphed, "graph_mode", "none") if graphed is not None else "none"
        if graphed is not None and getattr(graphed, "graph_fallback", None):
            row["graph_fallback"] = graphed.graph_fallback
        if "eager" in row and row.get("figure") == GpuFigure.graph.value:
            row["graph_vs_eager"] = row["throughput"] / row["eager"]["throughput"]
        return row
    finally:
        for made in runners.values():
            for runner in made:
                runner.close()


def _measure(figure: GpuFigure, runners: List[StreamRunner], feeds: Dict[str, np.ndarray], batch_size: int, budget: TimeBudget) -> dict:
    """Time ``figure`` on each runner at once (one thread each) for ``budget``."""
    results: List[Tuple[List[float], dict]] = [([], {}) for _ in runners]
    errors: List[BaseException] = []

    def loop(index: int) -> None:
        try:
            with runners[index].in_this_thread():
                results[index] = _FIGURES[figure](runners[index], feeds, budget)
        except BaseException as exc:  # surfaced below, in the caller's thread
            errors.append(exc)

    start = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(runners))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    latencies = np.asarray(results[0][0])
    total = batch_size * sum(len(values) for values, _ in results)
    row = {"figure": figure.value, "runs": int(latencies.size), "seconds": wall, **latency_stats(latencies, batch_size), **results[0][1],
           "timer": "cuda_events", "cuda_graph": figure == GpuFigure.graph, "transfers_included": figure not in ON_DEVICE,
           "transfers_overlapped": figure == GpuFigure.overlapped, "streams": len(runners), "latencies_ms": latencies.tolist()}
    if len(runners) > 1 or figure == GpuFigure.overlapped:
        row["throughput"] = total / wall  # batches in flight together: what the wall clock saw
    row["wall_throughput"] = total / wall
    return row


def _on_device(runner: StreamRunner, feeds: Dict[str, np.ndarray], budget: TimeBudget) -> Tuple[List[float], dict]:
    """Compute only, on the inputs the warm-up left on the GPU (a graph replay where the runner has one)."""
    return timed_until(runner.compute_only, budget), {}


def _serial(runner: StreamRunner, feeds: Dict[str, np.ndarray], budget: TimeBudget) -> Tuple[List[float], dict]:
    """Upload, compute and download one after another; each stage's median beside the total."""
    stages: List[Dict[str, float]] = []
    enqueue: List[float] = []

    def step() -> float:
        runner.run(feeds)
        stages.append(dict(runner.last_timing))
        enqueue.append(runner.last_enqueue_ms)
        return sum(runner.last_timing.values())

    latencies = timed_until(step, budget)
    extra = {f"{key}_p50": float(np.median([s[key] for s in stages])) for key in stages[0]}
    extra["enqueue_ms_p50"] = float(np.median(enqueue))
    return latencies, extra


def _overlapped(runner: StreamRunner, feeds: Dict[str, np.ndarray], budget: TimeBudget) -> Tuple[List[float], dict]:
    """Batches written in place into page-locked slots, uploads and downloads overlapped with compute."""
    with _filled_pipeline(runner, feeds) as pipe:
        submitted, start = 0, time.perf_counter()
        while not budget.done(time.perf_counter() - start, submitted):
            pipe.acquire()
            pipe.submit()
            submitted += 1
        pipe.drain()
        return pipe.latencies_ms[-submitted:], {}


_FIGURES = {GpuFigure.graph: _on_device, GpuFigure.eager: _on_device, GpuFigure.serial: _serial, GpuFigure.overlapped: _overlapped}


def _filled_pipeline(runner: StreamRunner, feeds: Dict[str, np.ndarray]):
    """An overlapped-transfer pipeline whose slots hold ``feeds``, warmed by one pass through each slot."""
    pipe = runner.overlapped({name: tuple(array.shape) for name, array in feeds.items()})
    for _ in pipe.slots:
        for name, host in pipe.acquire().items():
            np.copyto(host, feeds[name], casting="same_kind")
        pipe.submit()
    pipe.drain()
    pipe.latencies_ms.clear()
    return pipe
