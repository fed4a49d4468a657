"""GPU latency/throughput: CUDA-event timing, transfers in or out, CUDA graphs, N streams, NVML."""
from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List

import numpy as np

from ..backends.cuda_runtime import NvmlSampler, StreamRunner
from ..config.schema import BenchmarkConfig
from .benchmark import latency_stats


def gpu_benchmark_batch(make_runner: Callable[[], StreamRunner], feeds: Dict[str, np.ndarray], batch_size: int, cfg: BenchmarkConfig) -> dict:
    runners = [make_runner() for _ in range(max(1, cfg.streams))]
    try:
        for runner in runners:
            for _ in range(max(1, cfg.warmup)):
                runner.run(feeds)  # also uploads the inputs that compute_only reuses
        per_runner: List[List[float]] = [[] for _ in runners]
        stages: List[Dict[str, float]] = []
        enqueue: List[float] = []

        overlap = cfg.include_transfers and cfg.overlap_transfers and not cfg.cuda_graph
        pipelines = [_filled_pipeline(runner, feeds) for runner in runners] if overlap else []

        def timed_loop(index: int) -> None:
            runner = runners[index]
            if overlap:  # the inputs sit in each slot's page-locked memory, as a loader writing in place leaves them
                pipe = pipelines[index]
                for _ in range(cfg.iterations * cfg.repeats):
                    pipe.acquire()
                    pipe.submit()
                pipe.drain()
                per_runner[index].extend(pipe.latencies_ms[-cfg.iterations * cfg.repeats:])
                return
            for _ in range(cfg.iterations * cfg.repeats):
                if cfg.include_transfers:
                    runner.run(feeds)
                    per_runner[index].append(sum(runner.last_timing.values()))
                    if index == 0:
                        stages.append(dict(runner.last_timing))
                        enqueue.append(runner.last_enqueue_ms)
                else:
                    per_runner[index].append(runner.compute_only())

        with NvmlSampler(cfg.nvml_interval_ms / 1000.0) as nvml:
            start = time.perf_counter()
            threads = [threading.Thread(target=timed_loop, args=(i,)) for i in range(len(runners))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - start
        latencies = np.asarray(per_runner[0])
        medians = [float(np.median(chunk)) for chunk in np.array_split(latencies, max(1, cfg.repeats)) if len(chunk)]
        spread = (max(medians) - min(medians)) / min(medians) if len(medians) > 1 else 0.0
        total_samples = batch_size * sum(len(values) for values in per_runner)
        row = {"batch_size": batch_size, "runs": int(latencies.size), **latency_stats(latencies, batch_size)}
        row.update({
            # Overlapped batches are in flight together: throughput is what the wall clock saw.
            "throughput": total_samples / wall if len(runners) > 1 or overlap else row["throughput"],
            "wall_throughput": total_samples / wall,
            "transfers_included": cfg.include_transfers, "transfers_overlapped": overlap, "cuda_graph": cfg.cuda_graph, "streams": len(runners),
            "timer": "cuda_events", "graph_mode": getattr(runners[0], "graph_mode", "none"),
            "graph_fallback": getattr(runners[0], "graph_fallback", None), "repeat_spread": spread, "noisy": spread > cfg.spread_warning, **nvml.summary(),
        })
        if stages:
            row.update({f"{k}_p50": float(np.median([s[k] for s in stages])) for k in stages[0]})
            row["enqueue_ms_p50"] = float(np.median(enqueue))
        return row
    finally:
        for runner in runners:
            runner.close()


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
