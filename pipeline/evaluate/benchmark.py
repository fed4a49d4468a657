"""Latency and throughput over a batch-size sweep: warm-up, repeated timed loops, percentiles."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Sequence

import numpy as np

from ..backends import Runner
from ..config.schema import BenchmarkConfig


def latency_stats(latencies_ms: np.ndarray, batch_size: int) -> Dict[str, float]:
    mean = float(latencies_ms.mean())
    return {
        "p50_ms": float(np.percentile(latencies_ms, 50)),
        "p90_ms": float(np.percentile(latencies_ms, 90)),
        "p95_ms": float(np.percentile(latencies_ms, 95)),
        "p99_ms": float(np.percentile(latencies_ms, 99)),
        "mean_ms": mean,
        "min_ms": float(latencies_ms.min()),
        "throughput": batch_size * 1000.0 / mean,  # samples per second
    }


def median_spread(groups: Iterable[Sequence[float]]) -> float:
    """How far apart the medians of the (non-empty) ``groups`` of timings are, as a fraction of the smallest:
    drift on a noisy machine shows here."""
    medians = [float(np.median(group)) for group in groups if len(group)]
    return (max(medians) - min(medians)) / min(medians) if len(medians) > 1 else 0.0


def repeat_spread(latencies_ms: Sequence[float], parts: int) -> float:
    """``median_spread`` of one timed loop cut into ``parts`` consecutive chunks."""
    return median_spread(np.array_split(np.asarray(latencies_ms, dtype=np.float64), max(1, parts)))


@dataclass(frozen=True)
class TimeBudget:
    """How long a timed loop runs: until it has lasted ``min_seconds`` and done ``min_runs`` (whichever
    comes later), and never past ``max_seconds`` (after at least one run)."""

    min_seconds: float
    min_runs: int
    max_seconds: float

    def done(self, elapsed_s: float, runs: int) -> bool:
        return runs >= 1 and (elapsed_s >= self.max_seconds or (elapsed_s >= self.min_seconds and runs >= self.min_runs))


def timed_until(step: Callable[[], float], budget: TimeBudget) -> List[float]:
    """Call ``step``, which returns the milliseconds it measured, until ``budget`` is met."""
    values: List[float] = []
    start = time.perf_counter()
    while not budget.done(time.perf_counter() - start, len(values)):
        values.append(step())
    return values


def benchmark_batch(runner: Runner, feeds: Dict[str, np.ndarray], batch_size: int, cfg: BenchmarkConfig) -> dict:
    """Time ``runner.run(feeds)``: ``cfg.repeats`` loops of ``cfg.iterations`` after ``cfg.warmup`` runs."""
    for _ in range(cfg.warmup):
        runner.run(feeds)
    deadline = time.perf_counter() + cfg.max_seconds_per_batch
    repeats: List[List[float]] = []
    for _ in range(cfg.repeats):
        loop: List[float] = []
        for _ in range(cfg.iterations):
            start = time.perf_counter()
            runner.run(feeds)
            loop.append((time.perf_counter() - start) * 1000.0)
            if time.perf_counter() > deadline and len(loop) >= 3:
                break
        repeats.append(loop)
        if time.perf_counter() > deadline:
            break
    all_ms = np.asarray([ms for loop in repeats for ms in loop])
    spread = median_spread(repeats)
    row = {"batch_size": batch_size, "runs": int(all_ms.size), "repeats": len(repeats), **latency_stats(all_ms, batch_size)}
    row["repeat_spread"] = float(spread)
    row["noisy"] = bool(spread > cfg.spread_warning)
    return row


def side_by_side(runners: Dict[str, Runner], feeds: Dict[str, np.ndarray], rounds: int = 3, block: int = 3,
                 block_seconds: float = 0.25) -> Dict[str, float]:
    """Median latency (ms) of each runner on the same feeds, timed in alternating blocks (A A A, B B B,
    A A A, ...) so drift on a noisy machine hits all alike. A block is at least ``block`` runs and
    ``block_seconds`` long, after an untimed run: the previous session's thread pool spins for a
    while after its last run, which would otherwise weigh on a fast model's first few runs."""
    times: Dict[str, List[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            runner.run(feeds)
            started, runs = time.perf_counter(), 0
            while runs < block or time.perf_counter() - started < block_seconds:
                start = time.perf_counter()
                runner.run(feeds)
                times[name].append((time.perf_counter() - start) * 1000.0)
                runs += 1
    return {name: float(np.median(values)) for name, values in times.items()}


def tokens_per_sample(feeds: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Sequence models: real (unpadded) and padded tokens per sample, from the attention mask."""
    mask = feeds.get("attention_mask")
    if mask is None or mask.ndim != 2:
        return {}
    return {"tokens": float(mask.sum(axis=1).mean()), "padded_tokens": float(mask.shape[1])}


def sweep(
    runner: Runner,
    make_feeds: Callable[[int], Dict[str, np.ndarray]],
    cfg: BenchmarkConfig,
    on_row: Callable[[dict], None] = lambda _: None,
) -> List[dict]:
    rows = []
    for batch_size in cfg.batch_sizes:
        feeds = make_feeds(batch_size)
        row = benchmark_batch(runner, feeds, batch_size, cfg)
        tokens = tokens_per_sample(feeds)
        if tokens:  # tokens/s beside samples/s; padding counted apart, as it is work but not text
            row["tokens_per_s"] = row["throughput"] * tokens["tokens"]
            row["padded_tokens_per_s"] = row["throughput"] * tokens["padded_tokens"]
        rows.append(row)
        on_row(row)
    return rows


def length_bucketed(runner: Runner, load: Callable[[List[int]], Dict[str, np.ndarray]], indices: List[int], batch_size: int,
                    repeats: int = 3) -> dict:
    """One pass over real text as a server with length bucketing sees it: ``indices`` sorted by token
    count, cut into batches of ``batch_size``, each padded only to its longest sentence. Median of
    ``repeats`` timed passes after an untimed one."""
    lengths = load(list(indices))["attention_mask"].sum(axis=1)
    ordered = [indices[i] for i in np.argsort(lengths, kind="stable")]
    batches = [load(ordered[start:start + batch_size]) for start in range(0, len(ordered), batch_size)]
    tokens = float(sum(b["attention_mask"].sum() for b in batches))
    padded = float(sum(b["attention_mask"].size for b in batches))
    passes = []
    for attempt in range(repeats + 1):
        started = time.perf_counter()
        for feeds in batches:
            runner.run(feeds)
        if attempt:  # the first pass warms every shape up
            passes.append(time.perf_counter() - started)
    seconds = float(np.median(passes))
    return {"batch_size": batch_size, "samples": len(ordered), "batches": len(batches), "seconds": seconds,
            "throughput": len(ordered) / seconds, "tokens_per_s": tokens / seconds, "padded_tokens_per_s": padded / seconds,
            "mean_tokens": tokens / len(ordered), "mean_padded_tokens": padded / len(ordered)}
