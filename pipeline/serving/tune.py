"""Batching tuned to a latency budget, in the spirit of Triton Model Analyzer: every candidate
(instance count x max queue delay x preferred batch sizes) is loaded on one real server in explicit
model-control mode and put under a closed-loop concurrency sweep; the winner is the candidate and
level with the highest throughput whose p99 meets the budget with no failed request."""
from __future__ import annotations

import itertools
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

from ..config.schema import BatchingSearch
from ..errors import PipelineError
from .load_generator import closed_loop
from .repository import VERSION, Batching, live_copy, read_config
from .server import TritonServer


def candidates(search: BatchingSearch) -> List[Batching]:
    return [Batching(i, d, list(p)) for i, d, p in itertools.product(search.instances, search.max_queue_delay_us, search.preferred_batch_sizes)]


def search_batching(package_model: Path, work: Path, execution_env: Path, samples: List[Dict[str, np.ndarray]], search: BatchingSearch,
                    p99_budget_ms: float, startup_timeout_s: float, report: Callable[[dict], None] = lambda row: None) -> dict:
    """Every candidate on one server (reloaded per candidate); ``{"winner": ..., "trials": [...]}``.
    Raises, naming the best p99 seen, when no candidate meets the budget."""
    repository = work / "repository"
    model_dir = live_copy(package_model, repository, VERSION, execution_env)
    base, name = read_config(model_dir / "config.pbtxt"), model_dir.name
    trials = []
    with TritonServer(repository, work / "tritonserver.log", explicit_models=True, startup_timeout_s=startup_timeout_s) as server:
        for candidate in candidates(search):
            config = type(base)()
            config.CopyFrom(base)
            candidate.apply(config)
            server.load_model(name, config, timeout_s=startup_timeout_s)
            for level in sorted(search.concurrency):
                row = {**asdict(candidate), **closed_loop(server.grpc, name, samples, level, search.seconds_per_trial)}
                row["within_budget"] = bool(row["p99_ms"] <= p99_budget_ms and row["errors"] == 0)
                trials.append(row)
                report(row)
                if not row["within_budget"]:
                    break  # more clients only queue longer
    passing = [t for t in trials if t["within_budget"]]
    if not passing:
        best = min(trials, key=lambda t: t["p99_ms"])
        raise PipelineError(f"no batching configuration meets serving.p99_budget_ms={p99_budget_ms:g}: the lowest p99 was "
                            f"{best['p99_ms']:.1f} ms ({_candidate(best)}); raise the budget or search lower concurrency")
    winner = max(passing, key=lambda t: t["throughput"])
    return {"winner": {key: winner[key] for key in ("instances", "max_queue_delay_us", "preferred_batch_sizes", "concurrency",
                                                    "throughput", "p99_ms", "mean_batch_size")},
            "p99_budget_ms": p99_budget_ms, "trials": trials}


def _candidate(row: dict) -> str:
    return (f"{row['instances']} instance(s), max queue delay {row['max_queue_delay_us']} us, preferred batches "
            f"{row['preferred_batch_sizes'] or 'any'}, concurrency {row['concurrency']}")


def describe(row: dict) -> str:
    """One line for progress output."""
    return (f"{_candidate(row)}: {row['throughput']:.1f} req/s, p99 {row['p99_ms']:.1f} ms, mean batch "
            f"{row['mean_batch_size']:.1f}{'' if row['within_budget'] else '  (over budget)'}")
