"""serve: the build's Python-backend package on a real Triton server; correctness against the offline
engine, a closed-loop concurrency sweep, Triton's own statistics; gates fail the stage after writing
metrics. The server lives exactly as long as the ``with`` block."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

from ..backends import built_by
from ..console import console
from ..config.load import BuildContext
from ..data import load_dataset, make_splits
from ..errors import PipelineError
from ..files import scratch_dir, write_json
from ..paths import build_paths
from ..serving.load_generator import closed_loop, highest_rate_within, infer
from ..serving.repository import VERSION, live_copy, python_form_problem
from ..serving.server import TritonServer, serving_environment


def python_package(ctx: BuildContext) -> Path:
    """The build's Python-form package, or one error: a build this host cannot serve, or not packaged yet."""
    runtimes = ctx.target.candidate_runtimes  # one: known before anything is built; several: the one the build chose
    runtime = runtimes[0] if len(runtimes) == 1 else built_by(build_paths(ctx.config, ctx.name).engine_dir, runtimes).name
    problem = python_form_problem(runtime, ctx.target.device)
    if problem:
        raise PipelineError(f"{ctx.name} cannot be served here: {problem} ({build_paths(ctx.config, ctx.name).serving_dir / 'native'})")
    package = build_paths(ctx.config, ctx.name).serving_dir / "python" / ctx.name
    if not (package / "config.pbtxt").is_file():
        raise PipelineError(f"{ctx.name} is not packaged ({package / 'config.pbtxt'} not found): run `dvc repro package@{ctx.name}` first")
    return package


@contextlib.contextmanager
def served(ctx: BuildContext, http_port: Optional[int] = None, grpc_port: Optional[int] = None,
           metrics_port: Optional[int] = None) -> Iterator[Tuple[TritonServer, float]]:
    """The build's Python-form package in a fresh live repository on a Triton server, its model ready:
    (server, seconds from start to model-ready). The server and the repository go with the block."""
    package = python_package(ctx)
    env, timeout = serving_environment(), ctx.config.serving.startup_timeout_s
    with scratch_dir(build_paths(ctx.config, ctx.name).serve_metrics) as work:
        repository = work / "repository"
        live_copy(package, repository, VERSION, env)
        with TritonServer(repository, work / "tritonserver.log", http_port, grpc_port, metrics_port, startup_timeout_s=timeout,
                          max_http_body_bytes=int(ctx.config.serving.http_max_request_mb * 2**20)) as server:
            yield server, server.startup_seconds + server.wait_model_ready(ctx.name, timeout_s=timeout)


def serve(ctx: BuildContext) -> dict:
    cfg, serving = ctx.config, ctx.config.serving
    paths = build_paths(cfg, ctx.name)
    python_package(ctx)  # a build this host cannot serve, or one not packaged, fails before anything loads
    dataset = load_dataset(ctx.entry.dataset, ctx.dataset, ctx.model.inputs)
    validation = make_splits(dataset, ctx.dataset).validation[: serving.agreement_samples]
    samples = [dataset.load([index]) for index in validation]
    with built_by(paths.engine_dir, ctx.target.candidate_runtimes).load(paths.engine_dir, expect=ctx.artifact_identity()) as offline:
        expected = [offline.run(feeds) for feeds in samples]
        outputs = list(offline.output_names)
    with served(ctx) as (server, ready_seconds):
        console.print(f"  {ctx.name}: Triton ready in {ready_seconds:.1f} s (gRPC {server.grpc}, HTTP {server.http})")
        answers = infer(server.grpc, ctx.name, samples, outputs)
        agreement = _agreement(answers, expected, serving.agreement_atol, serving.agreement_rtol)
        rows = []
        for level in serving.concurrency:
            row = closed_loop(server.grpc, ctx.name, samples, level, serving.seconds_per_level)
            rows.append(row)
            console.print(f"  {ctx.name} concurrency {level:>3}: {row['throughput']:.1f} req/s  p50 {row['p50_ms']:.1f} ms  "
                          f"p99 {row['p99_ms']:.1f} ms  mean batch {row['mean_batch_size']:.1f}  errors {row['errors']}")
        scenario, start = None, max(r["throughput"] for r in rows)
        if serving.server_scenario.enabled and start > 0:  # MLPerf server scenario, from what the closed loop sustained
            scenario = highest_rate_within(server.grpc, ctx.name, samples, serving.p99_budget_ms, start, serving.server_scenario.probes,
                                           serving.server_scenario.seconds_per_rate, report=lambda r: console.print(
                                               f"  {ctx.name} Poisson {r['offered_rate']:.1f} req/s: p99 {r['p99_ms']:.1f} ms, "
                                               f"errors {r['errors']} -> {'within' if r['within_budget'] else 'over'} budget"))
            console.print(f"  {ctx.name}: highest arrival rate with p99 <= {serving.p99_budget_ms:g} ms: {scenario['max_rate_within_budget']:.1f} req/s")
    failures = list(agreement.pop("problems"))
    failures += [f"p99 at concurrency {r['concurrency']} = {r['p99_ms']:.1f} ms, limit <= {serving.p99_budget_ms:g} ms"
                 for r in rows if not r["p99_ms"] <= serving.p99_budget_ms]
    failures += [f"{r['errors']} failed requests at concurrency {r['concurrency']}, limit 0 ({r.get('first_error', '')})"
                 for r in rows if r["errors"]]
    metrics = {"ready_seconds": ready_seconds, "agreement": agreement, "gates_passed": not failures, "gate_failures": failures,
               **{f"concurrency_{r['concurrency']}": r for r in rows}}
    if scenario is not None:
        metrics["server_scenario"] = scenario
    write_json(paths.serve_metrics, metrics)
    if failures:
        raise PipelineError(f"serving gate failed for {ctx.name}: " + "; ".join(failures))
    return metrics


def _agreement(served: list, expected: list, atol: float, rtol: float) -> dict:
    worst, problems = 0.0, []
    for index, (got, want) in enumerate(zip(served, expected)):
        for name, value in want.items():
            if got[name].shape != value.shape:
                problems.append(f"served output '{name}' of sample {index} has shape {got[name].shape}; offline {value.shape}")
                continue
            excess = np.abs(got[name].astype(np.float64) - value) - (atol + rtol * np.abs(value))
            worst = max(worst, float(np.max(np.abs(got[name].astype(np.float64) - value))))
            if not np.all(excess <= 0):
                problems.append(f"served output '{name}' of sample {index} differs from the offline engine by {worst:.3g} (atol {atol}, rtol {rtol})")
    return {"samples": len(expected), "max_abs_difference": worst, "problems": problems[:5]}
