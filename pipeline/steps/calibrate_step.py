"""calibrate: the precision-converted ONNX for one build (passthrough, AutoCast, calibrated Q/DQ
with an accuracy-aware search), with the manifest of the samples used."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..backends.onnxruntime_backend import load_onnx_runner
from ..cli import console, progress_bar
from ..config.load import BuildContext
from ..config.schema import Backend, ElementType, PrecisionMode, as_plain
from ..data import calibration_indices, check_disjoint, load_dataset, make_manifest, make_splits, search_indices
from ..errors import PipelineError
from ..evaluate.validate import check_gates, evaluate, with_headroom
from ..io import atomic_dir, require_file, scratch_dir, write_json
from ..paths import build_paths, model_paths


def calibrate(ctx: BuildContext) -> dict:
    """Write the precision-converted ONNX for this build, with a manifest of the samples used."""
    cfg = ctx.config
    paths = build_paths(cfg, ctx.name)
    source = require_file(model_paths(cfg, ctx.entry.model).simplified, "simplified ONNX")
    mode = ctx.precision.mode
    with atomic_dir(paths.calibrated_dir) as out, scratch_dir(paths.calibrated_dir) as scratch:
        model_out, manifest_out = out / paths.calibrated.name, out / paths.manifest.name
        report: dict = {"build": ctx.name, "precision": ctx.precision_name, "mode": mode.value}
        if mode == PrecisionMode.passthrough:
            shutil.copyfile(source, model_out)
            write_json(manifest_out, {"dataset": ctx.entry.dataset, "split": "calibration", "num_samples": 0, "samples": []})
        elif mode == PrecisionMode.autocast:
            from ..onnx_tools.autocast import autocast_file

            report["autocast"] = autocast_file(source, model_out, ctx.precision.dtype.value)
            write_json(manifest_out, {"dataset": ctx.entry.dataset, "split": "calibration", "num_samples": 0, "samples": []})
        else:
            report.update(_quantize(ctx, source, out, scratch))
        # Durations differ run to run: they are metrics, so the artifact stays byte-identical and DVC
        # skips the build when nothing else changed.
        seconds = {key: report.pop(key) for key in [k for k in report if k.endswith("_seconds")]}
        write_json(out / "report.json", report)
    write_json(paths.calibrate_metrics, seconds)
    return {**report, **seconds}


def _quantize(ctx: BuildContext, source: Path, out: Path, scratch: Path) -> dict:
    from ..onnx_tools.inspect import load_model
    from ..onnx_tools.quantize import collect_ranges, qdq_summary, quantize_qdq, trt_calibration_cache

    calibration = ctx.config.calibration
    element = ctx.precision.dtype  # int8 or float8e4m3fn: the config checks tie qdq to those
    if element == ElementType.float8e4m3fn and ctx.target.quantization.format.value != "trt_s8s8":
        raise PipelineError(f"fp8 Q/DQ is made for TensorRT targets; target '{ctx.entry.target}' quantizes as {ctx.target.quantization.format.value}")
    graph_nodes = {node.name for node in load_model(source).graph.node}
    unknown = sorted(set(calibration.exclude_nodes) - graph_nodes)
    if unknown:
        raise PipelineError(f"calibration.exclude_nodes names {unknown}, which {source} does not have; "
                            f"its nodes include {sorted(graph_nodes)[:8]}")
    # ORT's calibrator and quantizer write shape-inferred copies next to the model they read: give
    # them a private copy, so nothing lands in (or races on) the simplify stage's output folder.
    shutil.copyfile(source, scratch / "source.onnx")
    source = scratch / "source.onnx"
    dataset = load_dataset(ctx.entry.dataset, ctx.dataset)
    splits = make_splits(dataset, ctx.dataset)
    indices = calibration_indices(splits, calibration.num_samples, calibration.seed, dataset.name)
    check_disjoint(dataset, indices, splits.validation)
    manifest = make_manifest(dataset, indices, "calibration", calibration.seed)
    searched: list = []
    if calibration.search.enabled:
        size = calibration.search.num_samples or len(splits.validation)
        searched = search_indices(splits, indices, size, calibration.seed, dataset.name)
        check_disjoint(dataset, searched, splits.validation)
        manifest["search"] = make_manifest(dataset, searched, "search", calibration.seed)
    write_json(out / "manifest.json", manifest)
    started = time.perf_counter()
    chunks = (feeds for _, feeds in dataset.batches(indices, ctx.model.batch_size(calibration.batch_size)))
    quantization = ctx.target.quantization
    with progress_bar() as progress:
        task = progress.add_task(f"calibrate {ctx.name} ({calibration.method.value})", total=len(indices))
        ranges = collect_ranges(
            source, chunks, calibration, symmetric=quantization.format.value == "trt_s8s8", op_types=ctx.model.quantize_op_types,
            on_chunk=lambda count: progress.advance(task, count), workdir=scratch,
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
                     quantize_outputs=ctx.model.quantize_outputs, element=element.value, workdir=scratch)

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
        excluded = _search_exclusions(ctx, source, model_out, dataset, searched, indices, excluded, quantize, out, scratch)
        report["search_seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / "exclusions.json", excluded)
    report["excluded_nodes"] = excluded
    report["qdq"] = qdq_summary(load_model(model_out))
    return report


def _search_exclusions(ctx, source, model_out, dataset, search_samples, calibration_samples, excluded, quantize, out, scratch) -> list:
    """Accuracy-aware precision: exclude the layers that add the most error until the gates pass.

    Candidates are judged with ONNX Runtime on the CPU (for TensorRT targets the same Q/DQ graph
    simulates the engine's quantization) against the model's validate gates on the search split,
    which neither calibration nor validate uses: validate's metrics stay an independent check.
    """
    from ..evaluate.validate import CachedRunner
    from ..onnx_tools.sensitivity import layer_sensitivity, leave_one_out

    search = ctx.config.calibration.search
    reference = CachedRunner(load_onnx_runner(source))

    # ORT runs the artifact itself for ORT targets; for TensorRT targets it simulates the Q/DQ graph,
    # with basic optimizations only (its extended Q/DQ fusions mis-handle FP8 on the CPU).
    level = "all" if ctx.target.backend == Backend.onnxruntime else "basic"

    target_gates = with_headroom(ctx.model.gates, search.headroom)

    def judge() -> tuple:
        metrics = evaluate(load_onnx_runner(model_out, level=level), reference, dataset, search_samples, ctx.model.task,
                           batch_size=ctx.model.batch_size(64))
        summary = {k: metrics[k] for k in ("accuracy_drop", "top1_agreement", "cosine_mean", "retrieval_agreement") if k in metrics}
        return summary, check_gates(metrics, target_gates)

    metrics, failures = judge()
    steps_taken = [{"excluded": list(excluded), "metrics": metrics, "gate_failures": failures}]
    console.print(f"  search {ctx.name}: plain int8 {metrics} {'passes' if not failures else 'misses: ' + '; '.join(failures)}")
    ranking: list = []
    layer_errors: list = []
    if failures:
        feeds = [f for _, f in dataset.batches(calibration_samples[: search.sensitivity_samples], ctx.model.batch_size(16))]
        layer_errors = layer_sensitivity(source, model_out, feeds, workdir=scratch)  # intermediate-tensor errors, for the report
        ranking = leave_one_out(source, model_out, feeds, ctx.model.outputs[0], ctx.model.quantize_op_types, workdir=scratch)
        for layer in [r for r in ranking if r["node"] not in excluded][: search.max_excluded]:
            excluded.append(layer["node"])
            quantize(excluded)
            metrics, failures = judge()
            steps_taken.append({"excluded": list(excluded), "added": layer, "metrics": metrics, "gate_failures": failures})
            console.print(f"  search {ctx.name}: + keep {layer['node']} ({layer['op']}) in float -> {metrics}")
            if not failures:
                break
    write_json(out / "search.json", {"gates": as_plain(ctx.model.gates), "searched_for": as_plain(target_gates),
                                     "num_samples": len(search_samples), "budget": search.max_excluded, "steps": steps_taken,
                                     "ranking": ranking[:50], "layer_errors": layer_errors[:50]})
    if failures:
        raise PipelineError(
            f"accuracy search for {ctx.name} spent its budget of {search.max_excluded} float layers and still misses "
            f"(gates with headroom {search.headroom}, on {len(search_samples)} search samples): "
            + "; ".join(failures) + "; steps: " + " | ".join(f"{len(s['excluded'])} in float: {s['metrics']}" for s in steps_taken)
            + ". Raise calibration.search.max_excluded or relax the gate"
        )
    return excluded
