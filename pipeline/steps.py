"""What each DVC stage does, as plain functions of the composed config (the top layer).

stages/*.py only parse arguments, load params.yaml and call one function here.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from .backends import BuildRequest, get_backend
from .backends.onnxruntime_backend import load_onnx_runner
from .cli import console, progress_bar
from .config.load import BuildContext, ModelContext
from .config.schema import Backend, Device, ElementType, ModelSource, PipelineConfig, PrecisionMode, as_plain
from .data import calibration_indices, check_disjoint, load_dataset, make_manifest, make_splits, search_indices
from .errors import PipelineError
from .evaluate.benchmark import sweep
from .evaluate.validate import check_gates, evaluate
from .io import atomic_dir, read_json, require_file, sha256_json, write_json
from .paths import build_paths, model_metrics, model_paths


# --- per model -------------------------------------------------------------------------------

def prepare(cfg: PipelineConfig, ctx: ModelContext) -> None:
    """Train (digits_cnn), instantiate + re-estimate BatchNorm (torchvision), load (Hugging Face)
    into a checkpoint; or take in a bring-your-own ONNX file as it is."""
    paths = model_paths(cfg, ctx.name)
    with atomic_dir(paths.prepared) as out:
        if ctx.model.source == ModelSource.onnx:
            from .data.resources import resolve_path
            from .onnx_tools.inspect import load_model

            if not ctx.model.weights_path:
                raise PipelineError(f"model.{ctx.name}.weights_path is not set: point it at your ONNX file")
            source = resolve_path(ctx.model.weights_path)
            load_model(source, "bring-your-own ONNX")  # fail here, clearly, on a broken file
            shutil.copyfile(source, out / paths.source_onnx.name)
            return
        from .models import prepare_checkpoint

        dataset = load_dataset(ctx.dataset_name, ctx.dataset)
        splits = make_splits(dataset, ctx.dataset)
        prepare_checkpoint(ctx.model, dataset, splits, out / paths.checkpoint.name, progress=lambda line: console.print(f"  {line}"))


def export(cfg: PipelineConfig, ctx: ModelContext) -> None:
    from .models import build_torch_model, load_checkpoint
    from .onnx_tools.export import export_onnx

    paths = model_paths(cfg, ctx.name)
    if ctx.model.source == ModelSource.onnx:
        from .onnx_tools.byo import import_onnx

        changes = import_onnx(require_file(paths.source_onnx, "prepared ONNX"), ctx.model, ctx.name, paths.exported)
        console.print(f"  imported {ctx.model.weights_path}: {changes or 'no changes needed'}")
        return
    model = build_torch_model(ctx.model)
    model.load_state_dict(load_checkpoint(paths.checkpoint))
    export_onnx(model, ctx.model, paths.exported)


def simplify(cfg: PipelineConfig, ctx: ModelContext) -> dict:
    from .onnx_tools.simplify import simplify_file

    paths = model_paths(cfg, ctx.name)
    metrics = simplify_file(paths.exported, paths.simplified)
    write_json(model_metrics(cfg, ctx.name) / "simplify.json", metrics)
    return metrics


# --- per build -------------------------------------------------------------------------------

def calibrate(ctx: BuildContext) -> dict:
    """Write the precision-converted ONNX for this build, with a manifest of the samples used."""
    cfg = ctx.config
    paths = build_paths(cfg, ctx.name)
    source = require_file(model_paths(cfg, ctx.entry.model).simplified, "simplified ONNX")
    mode = ctx.precision.mode
    with atomic_dir(paths.calibrated_dir) as out:
        model_out, manifest_out = out / paths.calibrated.name, out / paths.manifest.name
        report: dict = {"build": ctx.name, "precision": ctx.precision_name, "mode": mode.value}
        if mode == PrecisionMode.passthrough:
            shutil.copyfile(source, model_out)
            write_json(manifest_out, {"dataset": ctx.entry.dataset, "split": "calibration", "num_samples": 0, "samples": []})
        elif mode == PrecisionMode.autocast:
            from .onnx_tools.autocast import autocast_file

            report["autocast"] = autocast_file(source, model_out, ctx.precision.dtype.value)
            write_json(manifest_out, {"dataset": ctx.entry.dataset, "split": "calibration", "num_samples": 0, "samples": []})
        else:
            report.update(_quantize(ctx, source, out))
        # Durations differ run to run: they are metrics, so the artifact stays byte-identical and DVC
        # skips the build when nothing else changed.
        seconds = {key: report.pop(key) for key in [k for k in report if k.endswith("_seconds")]}
        write_json(out / "report.json", report)
    write_json(paths.calibrate_metrics, seconds)
    return {**report, **seconds}


def _quantize(ctx: BuildContext, source: Path, out: Path) -> dict:
    from .onnx_tools.inspect import load_model
    from .onnx_tools.quantize import collect_ranges, qdq_summary, quantize_qdq, trt_calibration_cache

    calibration = ctx.config.calibration
    element = ctx.precision.dtype  # int8 or float8e4m3fn: the config checks tie qdq to those
    if element == ElementType.float8e4m3fn and ctx.target.quantization.format.value != "trt_s8s8":
        raise PipelineError(f"fp8 Q/DQ is made for TensorRT targets; target '{ctx.entry.target}' quantizes as {ctx.target.quantization.format.value}")
    graph_nodes = {node.name for node in load_model(source).graph.node}
    unknown = sorted(set(calibration.exclude_nodes) - graph_nodes)
    if unknown:
        raise PipelineError(f"calibration.exclude_nodes names {unknown}, which {source} does not have; "
                            f"its nodes include {sorted(graph_nodes)[:8]}")
    dataset = load_dataset(ctx.entry.dataset, ctx.dataset)
    splits = make_splits(dataset, ctx.dataset)
    indices = calibration_indices(splits, calibration.num_samples, calibration.seed, dataset.name)
    check_disjoint(dataset, indices, splits.validation)
    manifest = make_manifest(dataset, indices, "calibration", calibration.seed)
    searched: list = []
    if calibration.search.enabled:
        searched = search_indices(splits, indices, calibration.search.num_samples, calibration.seed, dataset.name)
        check_disjoint(dataset, searched, splits.validation)
        manifest["search"] = make_manifest(dataset, searched, "search", calibration.seed)
    write_json(out / "manifest.json", manifest)
    started = time.perf_counter()
    chunks = (feeds for _, feeds in dataset.batches(indices, calibration.batch_size))
    quantization = ctx.target.quantization
    with progress_bar() as progress:
        task = progress.add_task(f"calibrate {ctx.name} ({calibration.method.value})", total=len(indices))
        ranges = collect_ranges(
            source, chunks, calibration, symmetric=quantization.format.value == "trt_s8s8", op_types=ctx.model.quantize_op_types,
            on_chunk=lambda count: progress.advance(task, count),
        )
    collect_seconds = time.perf_counter() - started
    if ctx.target.tensorrt_major == 10:
        # For TensorRT 10 tools that still take a calibrator cache (trtexec --calib); the pipeline
        # itself builds from the Q/DQ model on every TensorRT line, and 11 has no calibrators.
        cache = trt_calibration_cache(ranges, calibration.method, ctx.target.tensorrt_version)
        (out / "calibration.cache").write_text(cache, encoding="utf-8")
    model_out = out / "model.onnx"

    def quantize(excluded: list) -> None:
        quantize_qdq(source, model_out, ranges, quantization.format, quantization.per_channel, calibration.method,
                     nodes_to_exclude=excluded, op_types=ctx.model.quantize_op_types, reduce_range=quantization.reduce_range,
                     quantize_outputs=ctx.model.quantize_outputs, element=element.value)

    excluded = list(calibration.exclude_nodes)
    started = time.perf_counter()
    quantize(excluded)
    quantize_seconds = time.perf_counter() - started
    report = {
        "method": calibration.method.value,
        "num_samples": len(indices),
        "quant_format": quantization.format.value,
        "calibrated_tensors": len(ranges),
        "statistics_seconds": round(collect_seconds, 1),
        "quantize_seconds": round(quantize_seconds, 1),
    }
    if calibration.search.enabled:
        started = time.perf_counter()
        excluded = _search_exclusions(ctx, source, model_out, dataset, searched, indices, excluded, quantize, out)
        report["search_seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / "exclusions.json", excluded)
    report["excluded_nodes"] = excluded
    report["qdq"] = qdq_summary(load_model(model_out))
    return report


def _search_exclusions(ctx, source, model_out, dataset, search_samples, calibration_samples, excluded, quantize, out) -> list:
    """Accuracy-aware precision: exclude the layers that add the most error until the gates pass.

    Candidates are judged with ONNX Runtime on the CPU (for TensorRT targets the same Q/DQ graph
    simulates the engine's quantization) against the model's validate gates on the search split,
    which neither calibration nor validate uses: validate's metrics stay an independent check.
    """
    from .evaluate.validate import CachedRunner
    from .onnx_tools.sensitivity import layer_sensitivity, leave_one_out

    search = ctx.config.calibration.search
    reference = CachedRunner(load_onnx_runner(source))

    # ORT runs the artifact itself for ORT targets; for TensorRT targets it simulates the Q/DQ graph,
    # with basic optimizations only (its extended Q/DQ fusions mis-handle FP8 on the CPU).
    level = "all" if ctx.target.backend == Backend.onnxruntime else "basic"

    def judge() -> tuple:
        metrics = evaluate(load_onnx_runner(model_out, level=level), reference, dataset, search_samples, ctx.model.task)
        summary = {k: metrics[k] for k in ("accuracy_drop", "top1_agreement", "cosine_mean", "retrieval_agreement") if k in metrics}
        return summary, check_gates(metrics, ctx.model.gates)

    metrics, failures = judge()
    steps_taken = [{"excluded": list(excluded), "metrics": metrics, "gate_failures": failures}]
    console.print(f"  search {ctx.name}: plain int8 {metrics} {'passes' if not failures else 'misses: ' + '; '.join(failures)}")
    ranking: list = []
    layer_errors: list = []
    if failures:
        feeds = [f for _, f in dataset.batches(calibration_samples[: search.sensitivity_samples], 16)]
        layer_errors = layer_sensitivity(source, model_out, feeds)  # intermediate-tensor errors, for the report
        ranking = leave_one_out(source, model_out, feeds, ctx.model.outputs[0], ctx.model.quantize_op_types)
        for layer in [r for r in ranking if r["node"] not in excluded][: search.max_excluded]:
            excluded.append(layer["node"])
            quantize(excluded)
            metrics, failures = judge()
            steps_taken.append({"excluded": list(excluded), "added": layer, "metrics": metrics, "gate_failures": failures})
            console.print(f"  search {ctx.name}: + keep {layer['node']} ({layer['op']}) in float -> {metrics}")
            if not failures:
                break
    write_json(out / "search.json", {"gates": as_plain(ctx.model.gates), "budget": search.max_excluded, "steps": steps_taken,
                                 "ranking": ranking[:50], "layer_errors": layer_errors[:50]})
    if failures:
        raise PipelineError(
            f"accuracy search for {ctx.name} spent its budget of {search.max_excluded} float layers and still misses: "
            + "; ".join(failures) + "; steps: " + " | ".join(f"{len(s['excluded'])} in float: {s['metrics']}" for s in steps_taken)
            + ". Raise calibration.search.max_excluded or relax the gate"
        )
    return excluded


def build(ctx: BuildContext) -> dict:
    cfg = ctx.config
    paths = build_paths(cfg, ctx.name)
    backend = get_backend(ctx.target.backend)
    backend.check_available()  # the library that builds; running on the device is checked at load
    source = require_file(paths.calibrated, "calibrated ONNX")
    # Every build starts from an empty timing cache: a cache shared between builds would make engine
    # bytes depend on build order, an input DVC cannot see. The build's own cache is in its artifact.
    with atomic_dir(paths.engine_dir) as out:
        request = BuildRequest(
            onnx_path=source, out_dir=out, target_name=ctx.entry.target, target=ctx.target, model=ctx.model,
            precision=ctx.precision_name, config_hash=sha256_json(ctx.config_fingerprint()), build_name=ctx.name,
        )
        sidecar = backend.build(request)
    return sidecar


def validate(ctx: BuildContext) -> dict:
    """Metrics first, then the gates: a missed gate keeps its metrics and raises."""
    cfg = ctx.config
    paths = build_paths(cfg, ctx.name)
    dataset = load_dataset(ctx.entry.dataset, ctx.dataset)
    splits = make_splits(dataset, ctx.dataset)
    manifest = read_json(require_file(paths.manifest, "calibration manifest"))
    validation_ids = {dataset.ids[i] for i in splits.validation}
    for split in (manifest, manifest.get("search", {"samples": []})):
        overlap = {sample["id"] for sample in split["samples"]} & validation_ids
        if overlap:
            used_for = "the accuracy search" if split is not manifest else "calibration"
            raise PipelineError(f"{len(overlap)} validation samples were used for {used_for} (e.g. {sorted(overlap)[0]}); the splits must be disjoint")
    backend = get_backend(ctx.target.backend)
    reference = load_onnx_runner(model_paths(cfg, ctx.entry.model).simplified)
    with backend.load(paths.engine_dir, expect=ctx.artifact_identity()) as runner, progress_bar() as progress:
        task = progress.add_task(f"validate {ctx.name}", total=len(splits.validation))
        metrics = evaluate(runner, reference, dataset, splits.validation, ctx.model.task, on_batch=lambda n: progress.advance(task, n))
    failures = check_gates(metrics, ctx.model.gates)
    metrics["gates_passed"] = not failures
    metrics["gate_failures"] = failures
    write_json(paths.validate_metrics, metrics)
    if failures:
        raise PipelineError(f"validation gate failed for {ctx.name}: " + "; ".join(failures))
    return metrics


def benchmark(ctx: BuildContext) -> list:
    cfg = ctx.config
    paths = build_paths(cfg, ctx.name)
    dataset = load_dataset(ctx.entry.dataset, ctx.dataset)
    validation = make_splits(dataset, ctx.dataset).validation

    def feeds(batch_size: int) -> dict:
        return dataset.fixed_batch(validation, batch_size)

    def report(row: dict) -> None:
        note = "  [yellow]noisy: repeat medians differ by {:.0%}[/]".format(row["repeat_spread"]) if row["noisy"] else ""
        console.print(f"  {ctx.name} batch {row['batch_size']:>4}: p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  {row['throughput']:.1f}/s{note}")

    backend = get_backend(ctx.target.backend)
    if ctx.target.device == Device.cuda:
        from .evaluate.gpu_benchmark import gpu_benchmark_batch

        rows = []
        for batch_size in cfg.benchmark.batch_sizes:
            make_runner = lambda: backend.load(paths.engine_dir, cuda_graph=cfg.benchmark.cuda_graph, expect=ctx.artifact_identity())  # noqa: E731
            rows.append(gpu_benchmark_batch(make_runner, feeds(batch_size), batch_size, cfg.benchmark))
            report(rows[-1])
    else:
        with backend.load(paths.engine_dir, threads=cfg.benchmark.threads, expect=ctx.artifact_identity()) as runner:
            rows = sweep(runner, feeds, cfg.benchmark, on_row=report)
    write_json(paths.benchmark_metrics, {f"batch_{row['batch_size']}": row for row in rows})
    write_json(paths.latency_plot, [{"build": ctx.name, **row} for row in rows])
    return rows
