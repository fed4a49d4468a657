"""deploy / rollback (project commands, not DVC stages): promote a packaged build into a live model
repository served by a running Triton server, checked against the build's own gates first."""
from __future__ import annotations

from pathlib import Path

from ..backends.onnxruntime_backend import load_onnx_runner
from ..console import console
from ..config.load import BuildContext
from ..data import load_dataset, make_splits
from ..evaluate.validate import check_gates, evaluate
from ..paths import model_paths
from ..serving import deploy as deployment
from ..serving.load_generator import closed_loop
from ..serving.server import serving_environment
from .serve_step import python_package


def deploy(ctx: BuildContext, repository: Path, http: str, grpc: str, name: str = "") -> dict:
    """Deploy the build's package as the next version of the served model ``name`` (default: the model's name)."""
    serving = ctx.config.serving
    package = python_package(ctx)  # first: a build this host cannot serve fails before anything loads
    dataset = load_dataset(ctx.entry.dataset, ctx.dataset, ctx.model.inputs)
    validation = make_splits(dataset, ctx.dataset).validation[: serving.agreement_samples]
    reference = load_onnx_runner(model_paths(ctx.config, ctx.entry.model).simplified)

    def smoke_check(candidate, grpc_url: str, model: str) -> list:
        metrics = evaluate(candidate, reference, dataset, validation, ctx.model, batch_size=ctx.model.batch_size(min(serving.max_batch_size, 16)))
        reasons = check_gates(metrics, ctx.model.gates)
        load = closed_loop(grpc_url, model, [dataset.load([i]) for i in validation], max(serving.concurrency), min(serving.seconds_per_level, 2.0))
        if load["errors"]:
            reasons.append(f"{load['errors']} failed requests under load ({load.get('first_error', '')})")
        if not load["p99_ms"] <= serving.p99_budget_ms:
            reasons.append(f"p99 = {load['p99_ms']:.1f} ms at concurrency {load['concurrency']}, limit <= {serving.p99_budget_ms:g} ms")
        console.print(f"  candidate {ctx.name}: {({k: metrics[k] for k in ('top1_agreement', 'cosine_mean', 'retrieval_agreement') if k in metrics})}, "
                      f"p99 {load['p99_ms']:.1f} ms -> {'fit' if not reasons else 'unfit: ' + '; '.join(reasons)}")
        return reasons

    return deployment.deploy(package, Path(repository), name or ctx.entry.model, http, grpc, serving_environment(), smoke_check)
