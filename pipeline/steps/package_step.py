"""package: Triton model repositories (native and Python-backend forms) for one build."""
from __future__ import annotations

from ..backends import get_backend
from ..config.load import BuildContext
from ..data import load_dataset, make_splits
from ..errors import PipelineError
from ..io import atomic_dir
from ..paths import build_paths
from ..serving.repository import TensorInfo, write_repositories


def package(ctx: BuildContext) -> dict:
    cfg, serving = ctx.config, ctx.config.serving
    paths = build_paths(cfg, ctx.name)
    sidecar = get_backend(ctx.target.backend).read_sidecar(paths.engine_dir, ctx.artifact_identity())
    if "output_specs" not in sidecar:
        raise PipelineError(f"{paths.engine_dir} has no output specs in its sidecar: rebuild it (dvc repro build@{ctx.name})")
    inputs = [TensorInfo(i["name"], i["dtype"], list(i["shape"][1:])) for i in sidecar["inputs"]]
    outputs = [TensorInfo(o["name"], o["dtype"], list(o["shape"][1:])) for o in sidecar["output_specs"]]
    batch_axes = {i["shape"][0] for i in sidecar["inputs"]}
    if batch_axes != {-1}:
        raise PipelineError(f"{ctx.name} has a fixed batch dimension {sorted(batch_axes)}; Triton's dynamic batching needs a dynamic batch axis")
    profile_max = min((p["max"][0] for profile in sidecar.get("profiles", []) for p in profile.values()), default=serving.max_batch_size)
    max_batch = min(serving.max_batch_size, profile_max)
    dataset = load_dataset(ctx.entry.dataset, ctx.dataset)
    warmup = dataset.load(make_splits(dataset, ctx.dataset).validation[: serving.warmup_samples]) if serving.warmup_samples else {}
    fingerprint = {"pipeline_build": ctx.name, "pipeline_precision": ctx.precision_name, "pipeline_target": ctx.entry.target,
                   "pipeline_config_hash": sidecar.get("config_hash", ""), "pipeline_artifact_sha256": sidecar["artifact_sha256"],
                   "pipeline_versions": ",".join(f"{k}={v}" for k, v in sorted(sidecar.get("versions", {}).items()))}
    with atomic_dir(paths.serving_dir) as out:
        written = write_repositories(out, ctx.name, paths.engine_dir, sidecar, ctx.target.device, [0], inputs, outputs, max_batch,
                                     serving, warmup, fingerprint)
    return {form: str(paths.serving_dir / path.relative_to(out)) for form, path in written.items()}
