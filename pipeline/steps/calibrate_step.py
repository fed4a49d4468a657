"""calibrate: the precision-converted ONNX for one build (passthrough, AutoCast, calibrated Q/DQ
with an accuracy-aware search), with the manifest of the samples used."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..backends.onnxruntime_backend import load_onnx_runner
from ..cli import console, progress_bar
from ..config.load import BuildContext
from ..config.schema import ActivationRanges, Backend, Device, ElementType, PrecisionMode, as_plain
from ..data import calibration_indices, check_disjoint, load_dataset, make_manifest, make_splits, search_indices
from ..errors import PipelineError
from ..evaluate.host import host_cpu
from ..evaluate.validate import check_gates, evaluate, with_headroom
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
        source = _smooth(ctx, source, dataset, indices, alpha, report, seconds, scratch)
    quantize_to, layer_op_types = _quantizer(ctx, source, dataset, indices, dynamic, report, seconds, out, scratch)
    model_out = out / paths.calibrated.name
    excluded = list(calibration.exclude_nodes)
    sensitivity_feeds = [f for _, f in dataset.batches(used[: search.sensitivity_samples], ctx.model.batch_size(16))]
    layer_speed: list = []
    if ctx.target.quantization.min_layer_speedup is not None:
        timings, slow = _speed_guard(ctx, source, layer_op_types, sensitivity_feeds[0], quantize_to, scratch)
        # Host-dependent: which layers stayed float is in the artifact's report, the timings are metrics.
        report["kept_float_for_speed"] = slow
        seconds["layer_speed"] = timings
        layer_speed = timings.get("layers", [])
        excluded += [node for node in slow if node not in excluded]
    started = time.perf_counter()
    quantize_to(excluded, source, model_out)
    seconds["quantize_seconds"] = round(time.perf_counter() - started, 1)
    if search.enabled:
        started = time.perf_counter()
        excluded = _search_exclusions(ctx, reference_path, source, model_out, dataset, searched, sensitivity_feeds, excluded,
                                      lambda kept, dst: quantize_to(kept, source, dst), layer_speed, dynamic, out, scratch)
        seconds["search_seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / paths.exclusions.name, excluded)
    report["excluded_nodes"] = excluded
    report["qdq"] = qdq_summary(load_model(model_out))
    return {**report, **seconds}


def _smooth(ctx: BuildContext, source: Path, dataset, indices: list, alpha: float, report: dict, seconds: dict, scratch: Path) -> Path:
    """``source`` with SmoothQuant's channel scales from the calibration samples (the report says how many MatMuls)."""
    from ..onnx_tools.smoothing import smooth_matmuls

    started = time.perf_counter()
    smoothed = scratch / "smoothed.onnx"
    batches = (feeds for _, feeds in dataset.batches(indices, ctx.model.batch_size(ctx.config.calibration.batch_size)))
    with progress_bar() as progress:
        task = progress.add_task(f"smooth {ctx.name} (SmoothQuant, alpha {alpha})", total=len(indices))
        report["smoothquant"] = smooth_matmuls(source, smoothed, alpha, batches, scratch, on_batch=lambda count: progress.advance(task, count),
                                                  min_channel_ratio=ctx.model.smoothquant.min_channel_ratio)
    seconds["smoothing_seconds"] = round(time.perf_counter() - started, 1)
    return smoothed


def _quantizer(ctx: BuildContext, source: Path, dataset, indices: list, dynamic: bool, report: dict, seconds: dict,
               out: Path, scratch: Path) -> tuple:
    """(quantize_to(kept_float, src, dst), the op types of the layers it quantizes): dynamic ranges, or
    static Q/DQ from ranges collected here on the calibration samples (recorded in ``report``/``seconds``)."""
    from ..onnx_tools.quantize import (collect_ranges, dynamic_op_types, quantizable_op_types, quantize_dynamic_int8, quantize_qdq,
                                       trt_calibration_cache)

    calibration, quantization, op_types = ctx.config.calibration, ctx.target.quantization, ctx.model.quantize_op_types
    if dynamic:
        report.update({"method": "dynamic", "num_samples": 0, "quant_format": "ort_integer_ops", "calibrated_tensors": 0})

        def quantize_to(kept_float: list, src: Path, dst: Path) -> None:
            quantize_dynamic_int8(src, dst, op_types, quantization.per_channel, quantization.reduce_range, nodes_to_exclude=kept_float)

        return quantize_to, dynamic_op_types(op_types)
    started = time.perf_counter()
    chunks = (feeds for _, feeds in dataset.batches(indices, ctx.model.batch_size(calibration.batch_size)))
    with progress_bar() as progress:
        task = progress.add_task(f"calibrate {ctx.name} ({calibration.method.value})", total=len(indices))
        ranges = collect_ranges(
            source, chunks, calibration, symmetric=quantization.format.value == "trt_s8s8", op_types=op_types,
            on_chunk=lambda count: progress.advance(task, count), workdir=scratch,
        )
    seconds["statistics_seconds"] = round(time.perf_counter() - started, 1)
    if ctx.target.tensorrt_major == 10:
        # For TensorRT 10 tools that still take a calibrator cache (trtexec --calib); the pipeline
        # itself builds from the Q/DQ model on every TensorRT line, and 11 has no calibrators.
        cache = trt_calibration_cache(ranges, calibration.method, ctx.target.tensorrt_version)
        (out / build_paths(ctx.config, ctx.name).calibration_cache.name).write_text(cache, encoding="utf-8")
    report.update({"method": calibration.method.value, "num_samples": len(indices), "quant_format": quantization.format.value,
                   "calibrated_tensors": len(ranges)})

    def quantize_to(kept_float: list, src: Path, dst: Path) -> None:
        quantize_qdq(src, dst, ranges, quantization.format, quantization.per_channel, calibration.method,
                     nodes_to_exclude=kept_float, op_types=op_types, reduce_range=quantization.reduce_range,
                     quantize_outputs=ctx.model.quantize_outputs, element=ctx.precision.dtype.value, workdir=scratch)

    return quantize_to, list(op_types) or quantizable_op_types()


def _speed_guard(ctx: BuildContext, source: Path, op_types: list, feeds: dict, quantize_to, scratch: Path) -> tuple:
    """Layers not ``min_layer_speedup`` faster in INT8 alone, and not slower for the model in float, stay float.

    Timings on a host without the target's ISA would decide for the wrong CPU: the guard then keeps
    every layer quantized and says so (the benchmark's INT8-vs-FP32 gate still applies)."""
    from ..evaluate.layer_speed import confirm_in_model, layer_speedups, weighted_layers
    from ..onnx_tools.inspect import load_model

    limit = ctx.target.quantization.min_layer_speedup
    host = host_cpu()
    isa = ctx.target.cpu_isa.value if ctx.target.cpu_isa else None
    if not host.supports(isa):
        console.print(f"[yellow]  speed guard {ctx.name}: this host ({host.describe()}) lacks the target's ISA '{isa}'; "
                      "no layer timed, every layer stays quantized[/yellow]")
        return {"host": host.describe(), "skipped": f"host lacks {isa}"}, []
    layers = len(weighted_layers(load_model(source), op_types))
    with progress_bar() as progress:
        task = progress.add_task(f"time layers {ctx.name} (float vs int8)", total=layers)
        rows = layer_speedups(source, op_types, feeds, lambda src, dst: quantize_to([], src, dst), workdir=scratch,
                              on_layer=lambda: progress.advance(task))
    suspects = [row["node"] for row in rows if row["speedup"] < limit]
    confirmed = confirm_in_model(source, suspects, feeds, quantize_to, workdir=scratch,
                                 disabled_optimizers=ctx.target.build.disabled_optimizers) if suspects else []
    for row in confirmed:
        verdict = "stays float" if row["stays_float"] else "stays int8 (faster in the model)"
        console.print(f"  speed guard {ctx.name}: {row['node']} below {limit}x alone; model {row['model_layer_float_ms']:.1f} ms "
                      f"with it float vs {row['model_all_int8_ms']:.1f} ms all int8: {verdict}")
    slow = [row["node"] for row in confirmed if row["stays_float"]]
    return {"host": host.describe(), "min_layer_speedup": limit, "layers": rows, "in_model": confirmed}, slow


def _search_exclusions(ctx, reference_path, source, model_out, dataset, search_samples, sensitivity_feeds, excluded, quantize,
                       layer_speed, dynamic, out, scratch) -> list:
    """Accuracy-aware precision: keep in float the layers that buy the most accuracy (per millisecond
    they cost, when layers were timed) until the gates pass.

    Candidates are judged with ONNX Runtime on the CPU (for TensorRT targets the same Q/DQ graph
    simulates the engine's quantization) against the model's validate gates on the search split,
    which neither calibration nor validate uses: validate's metrics stay an independent check.
    """
    from ..evaluate.layer_speed import weighted_layers
    from ..evaluate.validate import CachedRunner
    from ..onnx_tools.inspect import load_model
    from ..onnx_tools.quantize import dynamic_op_types
    from ..evaluate.sensitivity import layer_sensitivity, leave_one_out, leave_one_out_requantized, rank_by_cost

    search = ctx.config.calibration.search
    reference = CachedRunner(load_onnx_runner(reference_path))

    # ORT runs the artifact itself for ORT targets; for TensorRT targets it simulates the Q/DQ graph,
    # with basic optimizations only (its extended Q/DQ fusions mis-handle FP8 on the CPU).
    level = "all" if ctx.target.backend == Backend.onnxruntime else "basic"

    target_gates = with_headroom(ctx.model.gates, search.headroom)

    def judge() -> tuple:
        metrics = evaluate(load_onnx_runner(model_out, level=level), reference, dataset, search_samples, ctx.model,
                           batch_size=ctx.model.batch_size(64))
        summary = {k: metrics[k] for k in ("accuracy_drop", "top1_agreement", "cosine_mean", "retrieval_agreement", "topk_agreement") if k in metrics}
        return summary, check_gates(metrics, target_gates)

    metrics, failures = judge()
    steps_taken = [{"excluded": list(excluded), "metrics": metrics, "gate_failures": failures}]
    console.print(f"  search {ctx.name}: plain int8 {metrics} {'passes' if not failures else 'misses: ' + '; '.join(failures)}")
    ranking: list = []
    layer_errors: list = []
    if failures:
        output = ctx.model.outputs[0]
        if dynamic:  # no Q/DQ pairs to bypass: quantize again without each candidate
            candidates = [(n.name, n.op_type) for n in weighted_layers(load_model(source), dynamic_op_types(ctx.model.quantize_op_types))
                          if n.name not in excluded]
            ranking = leave_one_out_requantized(source, candidates, sensitivity_feeds, output,
                                                lambda kept, dst: quantize(kept, dst), excluded, workdir=scratch)
        else:
            layer_errors = layer_sensitivity(source, model_out, sensitivity_feeds, workdir=scratch)  # intermediate-tensor errors, for the report
            ranking = leave_one_out(source, model_out, sensitivity_feeds, output, ctx.model.quantize_op_types, workdir=scratch)
        ranking = rank_by_cost(ranking, layer_speed)
        for layer in [r for r in ranking if r["node"] not in excluded][: search.max_excluded]:
            excluded.append(layer["node"])
            quantize(excluded, model_out)
            metrics, failures = judge()
            steps_taken.append({"excluded": list(excluded), "added": layer, "metrics": metrics, "gate_failures": failures})
            console.print(f"  search {ctx.name}: + keep {layer['node']} ({layer['op']}) in float -> {metrics}")
            if not failures:
                break
    write_json(out / build_paths(ctx.config, ctx.name).search_report.name, {"gates": as_plain(ctx.model.gates), "searched_for": as_plain(target_gates),
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
