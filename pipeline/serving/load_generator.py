"""Light load generation through Triton's gRPC client: the load generator shares the CPU with the
server, so requests are issued from the client library's own callback threads, not Python workers."""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import threading
import time
from typing import Dict, List, Tuple

import numpy as np

from ..errors import PipelineError


def _client(url: str):
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as exc:
        raise PipelineError(f"serving needs tritonclient with grpcio ({exc}): run `make venv`") from exc
    return grpcclient, grpcclient.InferenceServerClient(url)


def infer_inputs(grpcclient, samples: List[Dict[str, np.ndarray]]) -> list:
    """Triton gRPC inputs for each sample's feeds (built once, reused by every request)."""
    from tritonclient.utils import np_to_triton_dtype

    built = []
    for feeds in samples:
        inputs = []
        for name, value in feeds.items():
            tensor = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(value))
            inputs.append(tensor)
        built.append(inputs)
    return built


def infer(url: str, model: str, samples: List[Dict[str, np.ndarray]], outputs: List[str]) -> List[Dict[str, np.ndarray]]:
    """One request per sample, one at a time; the served outputs, in order."""
    grpcclient, client = _client(url)
    try:
        results = []
        for inputs in infer_inputs(grpcclient, samples):
            result = client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
            results.append({name: result.as_numpy(name) for name in outputs})
        return results
    finally:
        client.close()


def server_counts(url: str, model: str) -> Dict[str, float]:
    """Triton's own statistics for ``model``: requests, batches executed, queue and compute time."""
    _, client = _client(url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    finally:
        client.close()
    infer = stats.get("inference_stats", {})

    def total(key: str, field: str) -> float:
        return float(infer.get(key, {}).get(field, 0))

    return {"inferences": float(stats.get("inference_count", 0)), "executions": float(stats.get("execution_count", 0)),
            "success": total("success", "count"), "failures": total("fail", "count"),
            "queue_ns": total("queue", "ns"), "compute_ns": total("compute_infer", "ns") + total("compute_input", "ns") + total("compute_output", "ns")}


def settled_counts(url: str, model: str, before: Dict[str, float], answered: int, timeout_s: float = 2.0) -> Dict[str, float]:
    """Triton's statistics once they include the ``answered`` requests of this window: the server
    records a request's statistics just after sending its response, so the last ones can lag."""
    deadline = time.monotonic() + timeout_s
    while True:
        after = server_counts(url, model)
        if after["inferences"] - before["inferences"] >= answered or time.monotonic() > deadline:
            return after
        time.sleep(0.02)


def closed_loop(url: str, model: str, samples: List[Dict[str, np.ndarray]], concurrency: int, seconds: float, processes: int = 1) -> dict:
    """``concurrency`` requests always in flight (each completion issues the next) for ``seconds``;
    client latency percentiles, throughput and errors, and the server's own view of the same window.
    ``processes`` > 1 splits the clients over that many processes started together: one Python client
    tops out near a few thousand requests/s, below what a GPU serves."""
    before = server_counts(url, model)
    if processes <= 1:
        latencies, errors, elapsed = _client_loop(url, model, samples, concurrency, seconds)
    else:
        shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
        shares = [share for share in shares if share]
        start_at = time.time() + 3.0  # after every process has imported the client and built its requests
        context = multiprocessing.get_context("spawn")  # no fork of a process holding gRPC threads
        with concurrent.futures.ProcessPoolExecutor(len(shares), mp_context=context) as pool:
            parts = list(pool.map(_client_loop, *zip(*[(url, model, samples, share, seconds, start_at) for share in shares])))
        latencies = [ms for part in parts for ms in part[0]]
        errors = [error for part in parts for error in part[1]]
        elapsed = max(part[2] for part in parts)
    after = settled_counts(url, model, before, len(latencies) + len(errors))
    return {"concurrency": concurrency, "client_processes": max(1, processes), **_summary(latencies, errors, elapsed, before, after)}


def _client_loop(url: str, model: str, samples: List[Dict[str, np.ndarray]], concurrency: int, seconds: float,
                 start_at: float = 0.0) -> Tuple[List[float], List[str], float]:
    """One client's closed loop (from ``start_at``, epoch seconds, if given): latencies in ms, errors, seconds."""
    grpcclient, client = _client(url)
    requests = infer_inputs(grpcclient, samples)
    latencies: List[float] = []
    errors: List[str] = []
    lock, finished = threading.Lock(), threading.Event()
    state = {"in_flight": 0, "next": 0}
    if start_at:
        time.sleep(max(0.0, start_at - time.time()))
    deadline = time.perf_counter() + seconds

    def issue() -> None:
        with lock:
            index = state["next"]
            state["next"] += 1
            state["in_flight"] += 1
        started = time.perf_counter()
        client.async_infer(model, requests[index % len(requests)], callback=lambda result, error: done(started, error))

    def done(started: float, error) -> None:
        now = time.perf_counter()
        with lock:
            state["in_flight"] -= 1
            if error is not None:
                errors.append(str(error))
            else:
                latencies.append((now - started) * 1000.0)
            more = now < deadline
            idle = state["in_flight"] == 0
        if more:
            issue()
        elif idle:
            finished.set()

    start = time.perf_counter()
    try:
        for _ in range(concurrency):
            issue()
        if not finished.wait(seconds + 120.0):
            raise PipelineError(f"load at concurrency {concurrency} did not drain within {seconds + 120:.0f} s")
    finally:
        client.close()
    return latencies, errors, time.perf_counter() - start


def _summary(latencies: List[float], errors: List[str], elapsed: float, before: dict, after: dict) -> dict:
    """Client percentiles and throughput over a window, with the server's counts for the same window."""
    delta = {key: after[key] - before[key] for key in after}
    ms = np.asarray(latencies) if latencies else np.asarray([np.nan])
    row = {
        "requests": len(latencies), "errors": len(errors), "seconds": elapsed, "throughput": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)), "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
        "server_batches": int(delta["executions"]), "server_requests": int(delta["inferences"]),
        "mean_batch_size": delta["inferences"] / delta["executions"] if delta["executions"] else 0.0,
        "server_queue_ms_per_request": delta["queue_ns"] / 1e6 / max(delta["success"], 1.0),
        # Triton charges each request the whole compute time of the batch it ran in.
        "server_compute_ms_per_request": delta["compute_ns"] / 1e6 / max(delta["success"], 1.0),
    }
    if errors:
        row["first_error"] = errors[0]
    return row


def open_loop(url: str, model: str, samples: List[Dict[str, np.ndarray]], rate: float, seconds: float, seed: int = 0) -> dict:
    """MLPerf's server scenario at one rate: requests arrive at random (Poisson, ``rate`` per second,
    fixed seed) whether or not earlier ones have finished. Latency counts from each request's scheduled
    arrival, so a client that falls behind shows up as latency instead of hiding it."""
    grpcclient, client = _client(url)
    requests = infer_inputs(grpcclient, samples)
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, size=max(1, int(rate * seconds * 2) + 16)))
    arrivals = arrivals[arrivals < seconds]
    latencies: List[float] = []
    errors: List[str] = []
    lock, finished = threading.Lock(), threading.Event()
    pending = {"count": len(arrivals)}

    def done(scheduled: float, error) -> None:
        now = time.perf_counter()
        with lock:
            if error is not None:
                errors.append(str(error))
            else:
                latencies.append((now - scheduled) * 1000.0)
            pending["count"] -= 1
            if pending["count"] == 0:
                finished.set()

    before = server_counts(url, model)
    start = time.perf_counter()
    try:
        for index, offset in enumerate(arrivals):
            scheduled = start + float(offset)
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            client.async_infer(model, requests[index % len(requests)], callback=lambda result, error, at=scheduled: done(at, error))
        if len(arrivals) and not finished.wait(seconds + 120.0):
            raise PipelineError(f"load at {rate:.1f} requests/s did not drain within {seconds + 120:.0f} s")
    finally:
        client.close()
    elapsed = time.perf_counter() - start
    return {"offered_rate": rate, **_summary(latencies, errors, elapsed, before, settled_counts(url, model, before, len(latencies) + len(errors)))}


def highest_rate_within(url: str, model: str, samples: List[Dict[str, np.ndarray]], p99_budget_ms: float, start_rate: float,
                        probes: int, seconds: float, report=lambda row: None) -> dict:
    """MLPerf's server-scenario figure: the highest Poisson arrival rate whose p99 meets the budget with
    no failed request, from ``probes`` runs: doubling from ``start_rate`` until one misses, then bisecting."""
    good, bad, rows = 0.0, None, []
    rate = start_rate
    for probe in range(probes):
        row = open_loop(url, model, samples, rate, seconds, seed=probe)
        row["within_budget"] = bool(row["p99_ms"] <= p99_budget_ms and row["errors"] == 0)
        rows.append(row)
        report(row)
        if row["within_budget"]:
            good = rate
        else:
            bad = rate
        rate = rate * 2.0 if bad is None else (good + bad) / 2.0
    # Without a missed rate the figure is a lower bound: more probes (or a longer run) would go higher.
    return {"max_rate_within_budget": good, "lowest_rate_over_budget": bad, "p99_budget_ms": p99_budget_ms, "probes": rows}
