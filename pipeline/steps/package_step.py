"""package: Triton model repositories (native and Python-backend forms) for one build, with the
batching configured, or found by the batching search when serving.batching_search.enabled."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..backends import built_by
from ..console import console
from ..config.load import BuildContext
from ..data import load_dataset, make_splits
from ..errors import PipelineError
from ..files import atomic_dir, scratch_dir, write_json
from ..paths import build_paths
from ..serving.repository import Batching, TensorInfo, python_form_problem, read_config, write_config, write_repositories
from ..serving.server import serving_environment
from ..serving.tune import describe, search_batching


def package(ctx: BuildContext) -> dict:
    cfg, serving = ctx.config, ctx.config.serving
    paths = build_paths(cfg, ctx.name)
    backend = built_by(paths.engine_dir, ctx.target.candidate_runtimes)  # the runtime the build chose
    sidecar = backend.read_sidecar(paths.engine_dir, ctx.artifact_identity())
    if "output_specs" not in sidecar:
        raise PipelineError(f"{paths.engine_dir} has no output specs in its sidecar: rebuild it (dvc repro build@{ctx.name})")
    batched = {spec.name for spec in ctx.model.inputs if spec.batch}
    batch_axes = {i["shape"][0] for i in sidecar["inputs"] if i["name"] in batched and i["shape"]}
    if batch_axes and batch_axes not in ({-1}, {1}):
        raise PipelineError(f"{ctx.name} has batch dimensions {sorted(batch_axes)}; Triton serves a dynamic batch axis, or a model fixed to one sample")
    if ctx.model.one_sample_at_a_time:  # one sample per request, nothing to batch: Triton's max_batch_size 0 with the full dims
        max_batch, cut = 0, 0
    else:
        profile_max = min((p["max"][0] for profile in sidecar.get("profiles", []) for p in profile.values()), default=serving.max_batch_size)
        max_batch, cut = min(serving.max_batch_size, profile_max), 1
    inputs = [TensorInfo(i["name"], i["dtype"], list(i["shape"][cut:])) for i in sidecar["inputs"]]
    outputs = [TensorInfo(o["name"], o["dtype"], list(o["shape"][cut:])) for o in sidecar["output_specs"]]
    dataset = load_dataset(ctx.entry.dataset, ctx.dataset, ctx.model.inputs)
    validation = make_splits(dataset, ctx.dataset).validation
    warmup = [dataset.load([index]) for index in validation[: serving.warmup_samples]]  # one request each
    fingerprint = {"pipeline_build": ctx.name, "pipeline_precision": ctx.precision_name, "pipeline_target": ctx.entry.target,
                   "pipeline_config_hash": sidecar.get("config_hash", ""), "pipeline_artifact_sha256": sidecar["artifact_sha256"],
                   "pipeline_versions": ",".join(f"{k}={v}" for k, v in sorted(sidecar.get("versions", {}).items()))}
    if sidecar.get("preprocess"):  # how the server's clients must prepare images (the sidecar's record)
        fingerprint["pipeline_preprocess"] = json.dumps(sidecar["preprocess"], sort_keys=True)
    configured = Batching.configured(serving)
    with atomic_dir(paths.serving_dir) as out:
        written = write_repositories(out, ctx.name, paths.engine_dir, sidecar, ctx.target.device, serving.gpus, inputs, outputs,
                                     max_batch, configured, serving.intra_op_threads, warmup, fingerprint, cuda_graphs=serving.cuda_graphs)
        batching = {"searched": False, "batching": asdict(configured)}
        unservable = python_form_problem(backend.name, ctx.target.device)
        if serving.batching_search.enabled and unservable:  # searched on a host that serves it; here the configured values
            console.print(f"  {ctx.name}: batching not searched here: {unservable}")
            batching["not_searched"] = unservable
        elif serving.batching_search.enabled:
            batching = _search(ctx, out / "python" / ctx.name, [dataset.load([i]) for i in validation[: serving.agreement_samples]])
            chosen = Batching(**{k: batching["winner"][k] for k in ("instances", "max_queue_delay_us", "preferred_batch_sizes")})
            for config_path in written.values():  # the winner is what both forms carry
                config = read_config(config_path)
                chosen.apply(config)
                write_config(config_path, config)
            batching["batching"] = asdict(chosen)
    write_json(paths.batching_metrics, batching)
    return {form: str(paths.serving_dir / path.relative_to(out)) for form, path in written.items()}


def _search(ctx: BuildContext, python_form: Path, samples: list) -> dict:
    serving = ctx.config.serving
    console.print(f"  {ctx.name}: searching batching under p99 <= {serving.p99_budget_ms:g} ms")
    with scratch_dir(build_paths(ctx.config, ctx.name).batching_metrics) as work:
        result = search_batching(python_form, work, serving_environment(), samples, serving.batching_search, serving.p99_budget_ms,
                                 serving.startup_timeout_s, report=lambda row: console.print(f"    {describe(row)}"))
    console.print(f"  {ctx.name}: chosen {describe({**result['winner'], 'within_budget': True})}")
    return {"searched": True, **result}
