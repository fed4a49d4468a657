"""Value checks the type schema cannot express: ranges, consistent combinations, paths.

The schema (schema.py) makes a wrong key or type fail; these make a wrong *value* fail when the
config is composed (and again when a stage loads params.yaml), with every problem named at once,
instead of surfacing as a traceback, a division by zero or silently accepted garbage mid-pipeline.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List

from ..errors import PipelineError
from .schema import ElementType, PipelineConfig, PrecisionMode, option_value

# What each precision mode converts to: the element types that make sense for it.
_MODE_TYPES = {
    PrecisionMode.passthrough: {ElementType.float32},
    PrecisionMode.autocast: {ElementType.float16, ElementType.bfloat16},
    PrecisionMode.qdq: {ElementType.int8, ElementType.float8e4m3fn},
}
_OPTION_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# Dataset sources whose samples carry task labels (tests/test_data.py checks this against the data layer).
LABELLED_SOURCES = {"sklearn_digits"}



def config_problems(cfg: PipelineConfig) -> List[str]:
    """Every out-of-range or inconsistent value, as 'key = value: what is allowed'."""
    problems: List[str] = []

    def need(ok: bool, key: str, value, allowed: str) -> None:
        if not ok:
            problems.append(f"{key} = {value!r}: {allowed}")

    cal = cfg.calibration
    need(cal.num_samples >= 1, "calibration.num_samples", cal.num_samples, "must be >= 1")
    need(cal.batch_size >= 1, "calibration.batch_size", cal.batch_size, "must be >= 1")
    need(0 < cal.percentile <= 100, "calibration.percentile", cal.percentile, "must be in (0, 100]")
    need(cal.num_bins >= 128, "calibration.num_bins", cal.num_bins, "must be >= 128 (entropy compares 128-bin quantized histograms)")
    need(cal.search.max_excluded >= 0, "calibration.search.max_excluded", cal.search.max_excluded, "must be >= 0")
    need(cal.search.sensitivity_samples >= 1, "calibration.search.sensitivity_samples", cal.search.sensitivity_samples, "must be >= 1")
    need(cal.search.num_samples is None or cal.search.num_samples >= 1, "calibration.search.num_samples", cal.search.num_samples,
         "must be null (the validation split's size) or >= 1")
    need(0 <= cal.search.headroom < 1, "calibration.search.headroom", cal.search.headroom, "must be in [0, 1)")

    bench = cfg.benchmark
    need(bool(bench.batch_sizes) and all(b >= 1 for b in bench.batch_sizes), "benchmark.batch_sizes", bench.batch_sizes,
         "must be a non-empty list of sizes >= 1")
    need(bench.warmup >= 0, "benchmark.warmup", bench.warmup, "must be >= 0")
    need(bench.iterations >= 1, "benchmark.iterations", bench.iterations, "must be >= 1")
    need(bench.repeats >= 1, "benchmark.repeats", bench.repeats, "must be >= 1")
    need(bench.max_seconds_per_batch > 0, "benchmark.max_seconds_per_batch", bench.max_seconds_per_batch, "must be > 0")
    need(bench.spread_warning >= 0, "benchmark.spread_warning", bench.spread_warning, "must be >= 0")
    need(bench.min_quantized_speedup is None or bench.min_quantized_speedup > 0, "benchmark.min_quantized_speedup",
         bench.min_quantized_speedup, "must be null or > 0")
    need(bench.threads >= 0, "benchmark.threads", bench.threads, "must be >= 0 (0: one per core)")
    need(bench.streams >= 1, "benchmark.streams", bench.streams, "must be >= 1")
    need(bench.nvml_interval_ms >= 1, "benchmark.nvml_interval_ms", bench.nvml_interval_ms, "must be >= 1")

    serve = cfg.serving
    need(serve.max_batch_size >= 1, "serving.max_batch_size", serve.max_batch_size, "must be >= 1")
    need(all(1 <= b <= serve.max_batch_size for b in serve.preferred_batch_sizes), "serving.preferred_batch_sizes",
         serve.preferred_batch_sizes, f"sizes in [1, serving.max_batch_size={serve.max_batch_size}]")
    need(serve.max_queue_delay_us >= 0, "serving.max_queue_delay_us", serve.max_queue_delay_us, "must be >= 0")
    need(serve.instances >= 1, "serving.instances", serve.instances, "must be >= 1")
    need(bool(serve.gpus) and all(g >= 0 for g in serve.gpus), "serving.gpus", serve.gpus, "a non-empty list of GPU indices >= 0")
    need(serve.intra_op_threads >= 0, "serving.intra_op_threads", serve.intra_op_threads, "must be >= 0")
    need(serve.warmup_samples >= 0, "serving.warmup_samples", serve.warmup_samples, "must be >= 0")
    need(serve.startup_timeout_s > 0, "serving.startup_timeout_s", serve.startup_timeout_s, "must be > 0")
    need(serve.agreement_samples >= 1, "serving.agreement_samples", serve.agreement_samples, "must be >= 1")
    need(serve.agreement_atol >= 0 and serve.agreement_rtol >= 0, "serving.agreement_atol/rtol", (serve.agreement_atol, serve.agreement_rtol), "must be >= 0")
    need(bool(serve.concurrency) and all(c >= 1 for c in serve.concurrency), "serving.concurrency", serve.concurrency, "a non-empty list of levels >= 1")
    need(serve.seconds_per_level > 0, "serving.seconds_per_level", serve.seconds_per_level, "must be > 0")
    need(serve.p99_budget_ms > 0, "serving.p99_budget_ms", serve.p99_budget_ms, "must be > 0")
    search = serve.search
    need(bool(search.instances) and all(i >= 1 for i in search.instances), "serving.search.instances", search.instances,
         "a non-empty list of counts >= 1")
    need(bool(search.max_queue_delay_us) and all(d >= 0 for d in search.max_queue_delay_us), "serving.search.max_queue_delay_us",
         search.max_queue_delay_us, "a non-empty list of delays >= 0")
    need(bool(search.preferred_batch_sizes) and all(1 <= b <= serve.max_batch_size for sizes in search.preferred_batch_sizes for b in sizes),
         "serving.search.preferred_batch_sizes", search.preferred_batch_sizes,
         f"a non-empty list of lists ([] allowed) of sizes in [1, serving.max_batch_size={serve.max_batch_size}]")
    need(bool(search.concurrency) and all(c >= 1 for c in search.concurrency), "serving.search.concurrency", search.concurrency,
         "a non-empty list of levels >= 1")
    need(search.seconds_per_trial > 0, "serving.search.seconds_per_trial", search.seconds_per_trial, "must be > 0")
    need(serve.server_scenario.probes >= 1, "serving.server_scenario.probes", serve.server_scenario.probes, "must be >= 1")
    need(serve.server_scenario.seconds_per_rate > 0, "serving.server_scenario.seconds_per_rate", serve.server_scenario.seconds_per_rate, "must be > 0")
    for name, data in cfg.dataset.items():  # warm-up and agreement draw from each dataset's validation split
        for key in ("agreement_samples", "warmup_samples"):
            need(getattr(serve, key) <= data.num_validation, f"serving.{key}", getattr(serve, key),
                 f"at most dataset.{name}.num_validation={data.num_validation} (served builds use validation samples)")

    for name, data in cfg.dataset.items():
        key = f"dataset.{name}"
        need(data.num_samples >= 2, f"{key}.num_samples", data.num_samples, "must be >= 2")
        need(1 <= data.num_validation < data.num_samples, f"{key}.num_validation", data.num_validation,
             f"must be between 1 and num_samples - 1 ({data.num_samples - 1})")
        need(data.image_size >= 1, f"{key}.image_size", data.image_size, "must be >= 1")
        need(data.max_length >= 2, f"{key}.max_length", data.max_length, "must be >= 2")

    for name, model in cfg.model.items():
        key = f"model.{name}"
        need(7 <= model.opset <= 23, f"{key}.opset", model.opset, "must be between 7 and 23")
        need(model.num_classes >= 1, f"{key}.num_classes", model.num_classes, "must be >= 1")
        need(bool(model.inputs), f"{key}.inputs", model.inputs, "must name at least one input")
        need(bool(model.outputs), f"{key}.outputs", model.outputs, "must name at least one output")
        for index, spec in enumerate(model.inputs):
            need(all(d == -1 or d >= 1 for d in spec.shape), f"{key}.inputs[{index}].shape", spec.shape, "dims are -1 (dynamic) or >= 1")
            need(bool(spec.shape) and spec.shape[0] in (-1, 1), f"{key}.inputs[{index}].shape", spec.shape,
                 "axis 0 is the batch: -1 (dynamic) or 1 (a model fixed to one sample, run one at a time)")
        data = cfg.dataset.get(model.dataset)
        if data is not None and model.gates.max_accuracy_drop is not None and option_value(data.source) not in LABELLED_SOURCES:
            problems.append(f"{key}.gates.max_accuracy_drop = {model.gates.max_accuracy_drop!r}: dataset '{model.dataset}' "
                            f"({option_value(data.source)}) has no labels to measure accuracy on; set it to null and gate on "
                            f"min_top1_agreement / min_cosine (agreement with the FP32 reference)")
        fusions = model.transformer_fusions
        need(fusions.num_heads >= 0 and fusions.hidden_size >= 0 and (fusions.num_heads == 0 or fusions.hidden_size % fusions.num_heads == 0),
             f"{key}.transformer_fusions", f"num_heads={fusions.num_heads}, hidden_size={fusions.hidden_size}",
             "both >= 0 (0: read from the graph), hidden_size a multiple of num_heads")
        if fusions.model_type is not None:
            from onnxruntime.transformers.optimizer import MODEL_TYPES

            need(fusions.model_type in MODEL_TYPES, f"{key}.transformer_fusions.model_type", fusions.model_type,
                 f"one of ONNX Runtime's transformer model types {sorted(MODEL_TYPES)}")
        smooth = model.smoothquant
        need(smooth.alpha is None or 0.0 < smooth.alpha < 1.0, f"{key}.smoothquant.alpha", smooth.alpha,
             "null (off) or strictly between 0 and 1 (0.5-0.8 is usual)")
        need(smooth.min_channel_ratio >= 0.0, f"{key}.smoothquant.min_channel_ratio", smooth.min_channel_ratio, "must be >= 0 (0: every MatMul)")
        need(model.bn_recalibration_batches >= 0, f"{key}.bn_recalibration_batches", model.bn_recalibration_batches, "must be >= 0")
        if model.train is not None:
            need(model.train.epochs >= 1 and model.train.batch_size >= 1 and model.train.learning_rate > 0, f"{key}.train",
                 model.train, "epochs and batch_size >= 1, learning_rate > 0")
        gates = model.gates
        for gate, low, high in (("max_accuracy_drop", 0.0, 100.0), ("min_top1_agreement", 0.0, 1.0), ("min_cosine", -1.0, 1.0),
                                ("min_retrieval_agreement", 0.0, 1.0)):
            value = getattr(gates, gate)
            need(value is None or low <= value <= high, f"{key}.gates.{gate}", value, f"must be null or in [{low}, {high}]")
        for index, profile in enumerate(model.profiles):
            for axis in sorted(set(profile.min) | set(profile.opt) | set(profile.max)):
                values = [profile.min.get(axis), profile.opt.get(axis), profile.max.get(axis)]
                need(None not in values and 1 <= values[0] <= values[1] <= values[2], f"{key}.profiles[{index}].{axis}",
                     values, "min, opt and max all set, with 1 <= min <= opt <= max")

    for name, target in cfg.target.items():
        key = f"target.{name}"
        need((target.cpu_isa is not None) == (option_value(target.device) == "cpu"), f"{key}.cpu_isa", option_value(target.cpu_isa) if target.cpu_isa else None,
             "set on CPU targets (x86_64, avx2, vnni or amx), null on GPU targets")
        min_layer_speedup = target.quantization.min_layer_speedup
        need(min_layer_speedup is None or (min_layer_speedup > 0 and option_value(target.backend) == "onnxruntime"
                                           and option_value(target.device) == "cpu"),
             f"{key}.quantization.min_layer_speedup", min_layer_speedup, "null, or > 0 on ONNX Runtime CPU targets (layers are timed on this host)")
        build = target.build
        need(0 <= build.builder_optimization_level <= 5, f"{key}.build.builder_optimization_level", build.builder_optimization_level, "must be 0-5")
        need(build.workspace_mib >= 1, f"{key}.build.workspace_mib", build.workspace_mib, "must be >= 1")
        need(build.intra_op_threads >= 0, f"{key}.build.intra_op_threads", build.intra_op_threads, "must be >= 0")
        need(target.tensorrt_version is None or re.fullmatch(r"\d+\.\d+(\.\d+)?", target.tensorrt_version) is not None,
             f"{key}.tensorrt_version", target.tensorrt_version, "null or a release such as 10.3.0")
        need(target.compute_capability is None or re.fullmatch(r"\d+\.\d+", target.compute_capability) is not None,
             f"{key}.compute_capability", target.compute_capability, "null or such as 8.9")

    for name, precision in cfg.precision.items():
        allowed = sorted(t.value for t in _MODE_TYPES[precision.mode])
        need(precision.dtype in _MODE_TYPES[precision.mode], f"precision.{name}.dtype", getattr(precision.dtype, "value", precision.dtype),
             f"precision mode {precision.mode.value} converts to {allowed}")

    for group in ("model", "target", "precision", "dataset"):
        for option in getattr(cfg, group):
            need(_OPTION_NAME.match(option) is not None, f"{group} option", option, "names are letters, digits, '_', '-' and '.' (no paths)")
    return problems


def check_config(cfg: PipelineConfig) -> None:
    problems = config_problems(cfg)
    if problems:
        raise PipelineError("invalid config values: " + "; ".join(problems))


def check_out_dirs(cfg: PipelineConfig, project_root: Path) -> None:
    """Everything the pipeline writes stays inside the project (DVC tracks nothing outside it)."""
    root = Path(os.path.realpath(project_root))
    outside = []
    for key in ("artifacts_dir", "metrics_dir", "plots_dir"):
        value = getattr(cfg, key)
        resolved = Path(os.path.realpath(root / value))
        if resolved != root and root not in resolved.parents:
            outside.append(f"{key} = {value!r} resolves to {resolved}")
    if outside:
        raise PipelineError(f"output folders must be inside the project {root}: " + "; ".join(outside))
