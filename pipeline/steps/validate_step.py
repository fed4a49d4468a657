"""validate: accuracy and agreement with FP32 on the held-out split; gates fail the stage."""
from __future__ import annotations

from ..backends import built_by
from ..evaluate.host import isa_report
from ..backends.onnxruntime_backend import load_onnx_runner
from ..console import console, progress_bar
from ..config.schema import Device
from ..config.load import BuildContext
from ..data import load_dataset, make_splits
from ..errors import PipelineError
from ..evaluate.validate import check_gates, evaluate
from ..files import read_json, require_file, write_json
from ..paths import build_paths, model_paths


def validate(ctx: BuildContext) -> dict:
    """Metrics first, then the gates: a missed gate keeps its metrics and raises."""
    cfg = ctx.config
    paths = build_paths(cfg, ctx.name)
    dataset = load_dataset(ctx.entry.dataset, ctx.dataset, ctx.model.inputs)
    splits = make_splits(dataset, ctx.dataset)
    manifest = read_json(require_file(paths.manifest, "calibration manifest"))
    validation_ids = {dataset.ids[i] for i in splits.validation}
    for split in (manifest, manifest.get("search", {"samples": []})):
        overlap = {sample["id"] for sample in split["samples"]} & validation_ids
        if overlap:
            used_for = "the accuracy search" if split is not manifest else "calibration"
            raise PipelineError(f"{len(overlap)} validation samples were used for {used_for} (e.g. {sorted(overlap)[0]}); the splits must be disjoint")
    backend = built_by(paths.engine_dir, ctx.target.candidate_runtimes)
    reference = load_onnx_runner(model_paths(cfg, ctx.entry.model).simplified)
    with backend.load(paths.engine_dir, expect=ctx.artifact_identity()) as runner, progress_bar() as progress:
        task = progress.add_task(f"validate {ctx.name}", total=len(splits.validation))
        metrics = evaluate(runner, reference, dataset, splits.validation, ctx.model, batch_size=ctx.model.batch_size(64),
                           on_batch=lambda n: progress.advance(task, n))
    if ctx.target.device == Device.cpu:  # INT8 numerics depend on the ISA: say which one ran
        metrics["host"], warning = isa_report(ctx.entry.target, ctx.target.cpu_isa)
        if warning:
            console.print(f"  [yellow]{ctx.name}: {warning}[/]")
    failures = check_gates(metrics, ctx.model.gates)
    metrics["gates_passed"] = not failures
    metrics["gate_failures"] = failures
    write_json(paths.validate_metrics, metrics)
    if failures:
        raise PipelineError(f"validation gate failed for {ctx.name}: " + "; ".join(failures))
    return metrics
