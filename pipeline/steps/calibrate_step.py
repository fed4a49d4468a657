"""calibrate: the precision-converted ONNX for one build (passthrough, AutoCast, calibrated Q/DQ
with an accuracy-aware search), with the manifest of the samples used."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..console import progress_bar
from ..config.load import BuildContext
from ..config.schema import ActivationRanges, Backend, Device, ElementType, PrecisionMode
from ..data import calibration_indices, check_disjoint, load_dataset, make_manifest, make_splits, search_indices
from ..errors import PipelineError
from ..files import atomic_dir, require_file, scratch_dir, write_json
from ..paths import build_paths, model_paths


def calibrate(ctx: BuildContext) -> dict:
    """Write the precision-converted ONNX for this build, with a manifest of the samples used."""
    cfg = ctx.config
    paths = build_paths(cfg, ctx.name)
    source = require_file(model_paths(cfg, ctx.entry.model).simplified, "simplified ONNX")
    mode = ctx.precision.mode
    with atomic_dir(paths.calibrated_dir) as out, scratch_dir(paths.calibrated_dir) as scratch:  # the output's lock first
        dataset = load_dataset(ctx.entry.dataset, ctx.dataset, ctx.model.inputs)
        splits = make_splits(dataset, ctx.dataset)
        _check_data_fits(ctx, source, dataset, splits)
        model_out, manifest_out = out / paths.calibrated.name, out / paths.manifest.name
        report: dict = {"build": ctx.name, "precision": ctx.precision_name, "mode": mode.value}
        if mode == PrecisionMode.qdq:
            report.update(_quantize(ctx, source, dataset, splits, out, scratch))
        else:
            report.update(_convert_float(ctx, source, model_out))
            write_json(manifest_out, {"dataset": ctx.entry.dataset, "split": "calibration", "num_samples": 0, "samples": []})
        # Durations differ run to run: they are metrics, so the artifact stays byte-identical and DVC
        # skips the build when nothing else changed.
        seconds = {key: report.pop(key) for key in [k for k in report if k.endswith("_seconds") or k == "layer_speed"]}
        write_json(out / paths.calibration_report.name, report)
    write_json(paths.calibrate_metrics, seconds)
    return {**report, **seconds}


def _convert_float(ctx: BuildContext, source: Path, model_out: Path) -> dict:
    """FP32 as exported, or FP16/BF16 (no calibration samples): what the report says about it."""
    mode = ctx.precision.mode
    # A CPU runtime computes a reduced float precision from the FP32 model (OpenVINO's inference
    # precision on AMX-BF16); an AutoCast graph would only add Casts around kernels it does not have.
    if mode == PrecisionMode.autocast and ctx.target.device == Device.cpu:
        shutil.copyfile(source, model_out)
        return {"converted_by_runtime": f"the FP32 model; the runtime computes in {ctx.precision.dtype.value}"}
    if mode == PrecisionMode.passthrough:
        shutil.copyfile(source, model_out)
        return {}
    if _fused_fp16_for_cuda(ctx):
        from ..onnx_tools.fusion import fuse_transformer_fp16_gpu

        fusions = ctx.model.transformer_fusions
        return {"transformer_fusions": fuse_transformer_fp16_gpu(source, model_out, fusions.model_type, fusions.num_heads,
                                                                 fusions.hidden_size, fusions.gelu_approximation),
                "converted_by": "ONNX Runtime's transformer optimizer (GPU fusions), then float16 with float32 inputs and outputs"}
    from ..onnx_tools.autocast import autocast_file

    return {"autocast": autocast_file(source, model_out, ctx.precision.dtype.value)}


def _check_data_fits(ctx: BuildContext, source: Path, dataset, splits) -> None:
    """The first training batch against the FP32 model, for every precision: a dataset that feeds
    other names, dtypes or shapes, or FP32 outputs that are not finite, fail here naming what was wrong."""
    from ..onnx_tools.byo import check_data_fits

    _, feeds = next(iter(dataset.batches(splits.train, ctx.model.batch_size(2))))
    check_data_fits(source, feeds, ctx.model, ctx.entry.model, ctx.entry.dataset)


def _fused_fp16_for_cuda(ctx: BuildContext) -> bool:
    """FP16 of a transformer for ONNX Runtime's CUDA provider: its own fused kernels, not generic AutoCast
    (TensorRT targets fuse for themselves and cannot parse the com.microsoft ops)."""
    return (ctx.model.transformer_fusions.model_type is not None and ctx.precision.dtype == ElementType.float16
            and ctx.target.device == Device.cuda and ctx.target.candidate_runtimes == [Backend.onnxruntime])


def _uses_dynamic_ranges(ctx: BuildContext) -> bool:
    """Dynamic activation ranges where the model asks for them and the target runs them: ONNX Runtime on the
    CPU, as its only runtime (its fused integer ops are ONNX Runtime's own; a target that also measures
    OpenVINO gets static Q/DQ, which both read)."""
    return (ctx.model.int8_activations == ActivationRanges.dynamic and ctx.target.candidate_runtimes == [Backend.onnxruntime]
            and ctx.target.device == Device.cpu and ctx.precision.dtype == ElementType.int8)


def _quantize(ctx: BuildContext, source: Path, dataset, splits, out: Path, scratch: Path) -> dict:
    from ..onnx_tools.inspect import load_model
    from ..onnx_tools.quantize import qdq_summary

    calibration, paths = ctx.config.calibration, build_paths(ctx.config, ctx.name)
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
    source = reference_path = scratch / "source.onnx"  # the FP32 reference stays the simplified graph
    report: dict = {}
    dynamic = _uses_dynamic_ranges(ctx)
    if dynamic and ctx.model.transformer_fusions.model_type:
        from ..onnx_tools.fusion import fuse_transformer

        fusions = ctx.model.transformer_fusions
        report["transformer_fusions"] = fuse_transformer(source, scratch / "fused.onnx", fusions.model_type, fusions.num_heads, fusions.hidden_size,
                                                         fusions.gelu_approximation)
        source = scratch / "fused.onnx"
    indices = calibration_indices(splits, calibration.num_samples, calibration.seed, dataset.name)
    check_disjoint(dataset, indices, splits.validation)
    search = calibration.search
    alpha = ctx.model.smoothquant.alpha
    # Dynamic ranges need no calibration pass: only the samples that time and rank layers are used
    # (and, with SmoothQuant, those its channel maxima come from).
    used = indices[: search.sensitivity_samples] if dynamic and alpha is None else indices
    manifest = make_manifest(dataset, used, "calibration", calibration.seed)
    searched: list = []
    if search.enabled:
        size = search.num_samples or len(splits.validation)
        searched = search_indices(splits, indices, size, calibration.seed, dataset.name)
        check_disjoint(dataset, searched, splits.validation)
        manifest["search"] = make_manifest(dataset, searched, "search", calibration.seed)
    write_json(out / paths.manifest.name, manifest)
    seconds: dict = {}
    if alpha is not None:
        source, report["smoothquant"], seconds["smoothing_seconds"] = _smooth(ctx, source, dataset, indices, alpha, scratch)
    quantizer = _quantizer(ctx, source, dataset, indices, dynamic, out, scratch)
    report.update(quantizer.report)
    seconds.update(quantizer.seconds)
    model_out = out / paths.calibrated.name
    excluded = list(calibration.exclude_nodes)
    sensitivity_feeds = [f for _, f in dataset.batches(used[: search.sensitivity_samples], ctx.model.batch_size(16))]
    layer_speed: list = []
    if ctx.target.quantization.min_layer_speedup is not None:
        from ..evaluate.layer_speed import speed_guard

        timings, slow = speed_guard(ctx.name, source, quantizer.op_types, sensitivity_feeds[0], quantizer.quantize_to,
                                    ctx.target.quantization.min_layer_speedup, ctx.target.cpu_isa.value if ctx.target.cpu_isa else None,
                                    ctx.target.build.disabled_optimizers, workdir=scratch)
        # Host-dependent: which layers stayed float is in the artifact's report, the timings are metrics.
        report["kept_float_for_speed"] = slow
        seconds["layer_speed"] = timings
        layer_speed = timings.get("layers", [])
        excluded += [node for node in slow if node not in excluded]
    started = time.perf_counter()
    quantizer.quantize_to(excluded, source, model_out)
    seconds["quantize_seconds"] = round(time.perf_counter() - started, 1)
    if search.enabled:
        from ..evaluate.precision_search import SearchInputs, search_failure, search_float_layers

        started = time.perf_counter()
        # ORT runs the artifact itself for ORT targets; for TensorRT targets it simulates the Q/DQ graph,
        # with basic optimizations only (its extended Q/DQ fusions mis-handle FP8 on the CPU).
        inputs = SearchInputs(reference=reference_path, source=source, quantized=model_out, dynamic=dynamic,
                              quantize=lambda kept, dst: quantizer.quantize_to(kept, source, dst),
                              level="all" if ctx.target.backend == Backend.onnxruntime else "basic")
        excluded, search_report, missed = search_float_layers(ctx.name, inputs, ctx.model, search, dataset, searched, sensitivity_feeds,
                                                              excluded, layer_speed, scratch)
        write_json(out / paths.search_report.name, search_report)
        if missed:
            raise search_failure(ctx.name, search, len(searched), search_report, missed)
        seconds["search_seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / paths.exclusions.name, excluded)
    report["excluded_nodes"] = excluded
    report["qdq"] = qdq_summary(load_model(model_out))
    return {**report, **seconds}


def _smooth(ctx: BuildContext, source: Path, dataset, indices: list, alpha: float, scratch: Path) -> tuple:
    """(``source`` with SmoothQuant's channel scales from the calibration samples, what it changed, seconds)."""
    from ..onnx_tools.smoothing import smooth_matmuls

    started = time.perf_counter()
    smoothed = scratch / "smoothed.onnx"
    batches = (feeds for _, feeds in dataset.batches(indices, ctx.model.batch_size(ctx.config.calibration.batch_size)))
    with progress_bar() as progress:
        task = progress.add_task(f"smooth {ctx.name} (SmoothQuant, alpha {alpha})", total=len(indices))
        summary = smooth_matmuls(source, smoothed, alpha, batches, scratch, on_batch=lambda count: progress.advance(task, count),
                                 min_channel_ratio=ctx.model.smoothquant.min_channel_ratio)
    return smoothed, summary, round(time.perf_counter() - started, 1)


@dataclass
class Quantizer:
    """How this build quantizes: ``quantize_to(kept_float, src, dst)``, the op types of the layers it
    quantizes, and what the report and metrics say about it."""

    quantize_to: Callable[[list, Path, Path], None]
    op_types: list
    report: dict
    seconds: dict


def _quantizer(ctx: BuildContext, source: Path, dataset, indices: list, dynamic: bool, out: Path, scratch: Path) -> Quantizer:
    """Dynamic ranges, or static Q/DQ from ranges collected here on the calibration samples."""
    from ..onnx_tools.quantize import (collect_ranges, dynamic_op_types, quantizable_op_types, quantize_dynamic_int8, quantize_qdq,
                                       trt_calibration_cache)

    calibration, quantization, op_types = ctx.config.calibration, ctx.target.quantization, ctx.model.quantize_op_types
    if dynamic:
        def quantize_dynamic(kept_float: list, src: Path, dst: Path) -> None:
            quantize_dynamic_int8(src, dst, op_types, quantization.per_channel, quantization.reduce_range, nodes_to_exclude=kept_float)

        return Quantizer(quantize_dynamic, dynamic_op_types(op_types),
                         {"method": "dynamic", "num_samples": 0, "quant_format": "ort_integer_ops", "calibrated_tensors": 0}, {})
    started = time.perf_counter()
    chunks = (feeds for _, feeds in dataset.batches(indices, ctx.model.batch_size(calibration.batch_size)))
    with progress_bar() as progress:
        task = progress.add_task(f"calibrate {ctx.name} ({calibration.method.value})", total=len(indices))
        ranges = collect_ranges(
            source, chunks, calibration, symmetric=quantization.format.value == "trt_s8s8", op_types=op_types,
            on_chunk=lambda count: progress.advance(task, count), workdir=scratch,
        )
    seconds = {"statistics_seconds": round(time.perf_counter() - started, 1)}
    if ctx.target.tensorrt_major == 10:
        # For TensorRT 10 tools that still take a calibrator cache (trtexec --calib); the pipeline
        # itself builds from the Q/DQ model on every TensorRT line, and 11 has no calibrators.
        cache = trt_calibration_cache(ranges, calibration.method, ctx.target.tensorrt_version)
        (out / build_paths(ctx.config, ctx.name).calibration_cache.name).write_text(cache, encoding="utf-8")
    report = {"method": calibration.method.value, "num_samples": len(indices), "quant_format": quantization.format.value,
              "calibrated_tensors": len(ranges)}

    def quantize_to(kept_float: list, src: Path, dst: Path) -> None:
        quantize_qdq(src, dst, ranges, quantization.format, quantization.per_channel, calibration.method,
                     nodes_to_exclude=kept_float, op_types=op_types, reduce_range=quantization.reduce_range,
                     quantize_outputs=ctx.model.quantize_outputs, element=ctx.precision.dtype.value, workdir=scratch)

    return Quantizer(quantize_to, list(op_types) or quantizable_op_types(), report, seconds)
