"""Value checks the type schema cannot express: ranges, consistent combinations, paths.

The schema (schema.py) makes a wrong key or type fail; these make a wrong *value* fail when the
config is composed (and again when a stage loads params.yaml), with every problem named at once,
instead of surfacing as a traceback, a division by zero or silently accepted garbage mid-pipeline.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import List, Optional

from ..errors import PipelineError
from .schema import ElementType, GpuFigure, ModelConfig, PipelineConfig, Precision, PrecisionMode, Preprocess, TargetConfig, TensorSpec, Task, option_value

# What each precision mode converts to: the element types that make sense for it.
_MODE_TYPES = {
    PrecisionMode.passthrough: {ElementType.float32},
    PrecisionMode.autocast: {ElementType.float16, ElementType.bfloat16},
    PrecisionMode.qdq: {ElementType.int8, ElementType.float8e4m3fn},
}
_OPTION_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# Dataset sources whose samples carry task labels (tests/test_data.py checks this against the data layer);
# the user's images and tensors carry them when `labels` is set.
LABELLED_SOURCES = {"sklearn_digits"}
USER_SOURCES = {"image_folder", "tensor_files", "text_lines"}
# Input dtypes a dataset can feed and every backend takes (numpy names).
INPUT_DTYPES = {"float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"}
# Where each runtime builds, and the precisions a runtime computes on a device where it cannot compute
# every precision its target lists (OpenVINO's bf16 is its inference precision on AMX-BF16; ONNX Runtime's CPU
# kernels have no fast fp16/bf16 path; AOTInductor compiles float PyTorch, integer precisions live in Q/DQ ONNX).
RUNTIME_DEVICES = {"onnxruntime": ("cpu", "cuda"), "openvino": ("cpu",), "tensorrt": ("cuda",), "tensorrt_rtx": ("cuda",), "aoti": ("cpu", "cuda")}
RUNTIME_PRECISIONS = {
    ("onnxruntime", "cpu"): ["fp32", "int8"], ("openvino", "cpu"): ["fp32", "int8", "bf16"],
    ("aoti", "cpu"): ["fp32", "bf16"], ("aoti", "cuda"): ["fp32", "fp16", "bf16"], ("onnxruntime", "cuda"): ["fp32", "fp16", "int8"],
}
# Runtimes that compile the model's PyTorch source rather than its ONNX (a bring-your-own ONNX has none).
PYTORCH_SOURCE_RUNTIMES = ("aoti",)
# What the embedded Triton's Python backend runs, per device (.venv-serving: requirements-serving-env.lock).
PYTHON_FORM_RUNTIMES = {"cpu": ("onnxruntime", "openvino"), "cuda": ("onnxruntime",)}


def unrunnable_precision(target: TargetConfig, precision, model: Optional[ModelConfig] = None) -> str:
    """Why none of the target's runtimes builds ``precision`` of ``model`` ('' when one does)."""
    if runtimes_for(target, precision, model):
        return ""
    runtimes = [option_value(r) for r in target.candidate_runtimes]
    reasons = [_refusal(r, option_value(target.device), option_value(precision), model) for r in runtimes]
    return f"none of its runtimes {runtimes} builds {option_value(precision)} here (" + "; ".join(reasons) + ")"


def _refusal(runtime: str, device: str, precision: str, model: Optional[ModelConfig]) -> str:
    """Why ``runtime`` cannot build ``precision`` (of ``model``, where given) on ``device``; '' when it can.
    A runtime missing from RUNTIME_PRECISIONS computes every precision its target lists."""
    computed = RUNTIME_PRECISIONS.get((runtime, device))
    if computed is not None and precision not in computed:
        return f"{runtime}: {computed}"
    if model is not None and runtime in PYTORCH_SOURCE_RUNTIMES and option_value(model.source) == "onnx":
        return f"{runtime}: PyTorch models only, this one is an ONNX file"
    return ""


def runtimes_for(target: TargetConfig, precision, model: Optional[ModelConfig] = None) -> List[str]:
    """The target's candidate runtimes that can build ``precision`` (of ``model``, where given: runtimes that
    compile PyTorch need a PyTorch source)."""
    return [r for r in (option_value(r) for r in target.candidate_runtimes)
            if not _refusal(r, option_value(target.device), option_value(precision), model)]


def has_labels(data) -> bool:
    source = option_value(data.source)
    return source in LABELLED_SOURCES or (source in ("image_folder", "tensor_files") and data.labels is not None)



def bound_problems(node, key: str = "") -> List[str]:
    """'key = value: allowed range' for every field of ``node`` (a schema dataclass, recursively, through
    dicts of them such as target.<name>) whose value is outside the Bound its setting(...) declares."""
    problems = []
    for spec in dataclasses.fields(node):
        value, path = getattr(node, spec.name), f"{key}.{spec.name}" if key else spec.name
        bound = spec.metadata.get("bound")
        if bound is not None and not bound.allows(value):
            problems.append(f"{path} = {value!r}: {bound.describe()}")
        if dataclasses.is_dataclass(value):
            problems += bound_problems(value, path)
        elif isinstance(value, dict):
            problems += [p for name, item in value.items() if dataclasses.is_dataclass(item) for p in bound_problems(item, f"{path}.{name}")]
    return problems


def config_problems(cfg: PipelineConfig) -> List[str]:
    """Every out-of-range or inconsistent value, as 'key = value: what is allowed'."""
    problems: List[str] = []

    def need(ok: bool, key: str, value, allowed: str) -> None:
        if not ok:
            problems.append(f"{key} = {value!r}: {allowed}")

    problems += bound_problems(cfg)  # every field declared with setting(...): its range, from the schema
    gpu = cfg.benchmark.gpu
    for key, values in (("benchmark.batch_sizes", cfg.benchmark.batch_sizes), ("benchmark.gpu.batch_sizes", gpu.batch_sizes)):
        need(bool(values) and all(v >= 1 for v in values), key, values, "must be a non-empty list of sizes >= 1")
    need(bool(gpu.figures) and len(set(gpu.figures)) == len(gpu.figures), "benchmark.gpu.figures", [f.value for f in gpu.figures],
         f"a non-empty list without repeats of {[f.value for f in GpuFigure]}")
    need(gpu.max_seconds >= max(gpu.min_seconds, gpu.beside_seconds) and gpu.max_seconds > 0, "benchmark.gpu.max_seconds", gpu.max_seconds,
         f"must be > 0 and >= benchmark.gpu.min_seconds ({gpu.min_seconds}) and beside_seconds ({gpu.beside_seconds})")

    serve = cfg.serving
    need(all(1 <= b <= serve.max_batch_size for b in serve.preferred_batch_sizes), "serving.preferred_batch_sizes",
         serve.preferred_batch_sizes, f"sizes in [1, serving.max_batch_size={serve.max_batch_size}]")
    need(bool(serve.gpus) and all(g >= 0 for g in serve.gpus), "serving.gpus", serve.gpus, "a non-empty list of GPU indices >= 0")
    need(bool(serve.concurrency) and all(c >= 1 for c in serve.concurrency), "serving.concurrency", serve.concurrency, "a non-empty list of levels >= 1")
    search = serve.batching_search
    need(bool(search.instances) and all(i >= 1 for i in search.instances), "serving.batching_search.instances", search.instances,
         "a non-empty list of counts >= 1")
    need(bool(search.max_queue_delay_us) and all(d >= 0 for d in search.max_queue_delay_us), "serving.batching_search.max_queue_delay_us",
         search.max_queue_delay_us, "a non-empty list of delays >= 0")
    need(bool(search.preferred_batch_sizes) and all(1 <= b <= serve.max_batch_size for sizes in search.preferred_batch_sizes for b in sizes),
         "serving.batching_search.preferred_batch_sizes", search.preferred_batch_sizes,
         f"a non-empty list of lists ([] allowed) of sizes in [1, serving.max_batch_size={serve.max_batch_size}]")
    need(bool(search.concurrency) and all(c >= 1 for c in search.concurrency), "serving.batching_search.concurrency", search.concurrency,
         "a non-empty list of levels >= 1")
    for name, data in cfg.dataset.items():  # warm-up and agreement draw from each dataset's validation split
        for key in ("agreement_samples", "warmup_samples"):
            need(getattr(serve, key) <= data.num_validation, f"serving.{key}", getattr(serve, key),
                 f"at most dataset.{name}.num_validation={data.num_validation} (served builds use validation samples)")

    for name, data in cfg.dataset.items():
        key = f"dataset.{name}"
        source = option_value(data.source)
        if source in USER_SOURCES:
            need(bool(data.path), f"{key}.path", data.path, f"required for {source}: the file or folder of your data")
            need(data.num_samples is None or data.num_samples >= 2, f"{key}.num_samples", data.num_samples, "null (every file) or >= 2")
            need(data.num_validation >= 1, f"{key}.num_validation", data.num_validation, "must be >= 1")
            need(source != "image_folder" or data.labels is None or data.labels == "subfolders" or data.labels.endswith(".csv"),
                 f"{key}.labels", data.labels, "null, subfolders (class folders) or a .csv of file,label rows")
            need(source != "text_lines" or data.labels is None, f"{key}.labels", data.labels, "text_lines has no labels: null")
        else:
            need(data.num_samples is not None and data.num_samples >= 2, f"{key}.num_samples", data.num_samples, "must be >= 2")
            need(data.num_samples is None or 1 <= data.num_validation < data.num_samples, f"{key}.num_validation", data.num_validation,
                 f"must be between 1 and num_samples - 1 ({(data.num_samples or 2) - 1})")
            need(data.path is None, f"{key}.path", data.path, f"built-in source {source} reads no path; user data: source image_folder, "
                                                             f"tensor_files or text_lines")
        if source == "image_folder":
            fed = [(m, spec) for m, model in cfg.model.items() if model.dataset == name for spec in model.inputs if spec.name == data.input_name]
            problems += preprocess_problems(data.preprocess, f"{key}.preprocess")
            for model_name, spec in fed:
                problems += [f"{p} (model.{model_name})" for p in preprocess_fit_problems(data.preprocess, f"{key}.preprocess", spec)]
        need(data.max_length >= 2, f"{key}.max_length", data.max_length, "must be >= 2")

    for name, model in cfg.model.items():
        key = f"model.{name}"
        need(7 <= model.opset <= 23, f"{key}.opset", model.opset, "must be between 7 and 23")
        need(model.num_classes >= 1, f"{key}.num_classes", model.num_classes, "must be >= 1")
        need(bool(model.inputs), f"{key}.inputs", model.inputs, "must name at least one input")
        need(bool(model.outputs), f"{key}.outputs", model.outputs, "must name at least one output")
        for index, spec in enumerate(model.inputs):
            need(all(d == -1 or d >= 1 for d in spec.shape), f"{key}.inputs[{index}].shape", spec.shape, "dims are -1 (dynamic) or >= 1")
            need(not spec.batch or (bool(spec.shape) and spec.shape[0] in (-1, 1)), f"{key}.inputs[{index}].shape", spec.shape,
                 "axis 0 is the batch: -1 (dynamic) or 1 (a model fixed to one sample, run one at a time); an input without a batch "
                 "axis (a state, a scalar: shape []) sets batch: false")
            need(spec.dtype in INPUT_DTYPES, f"{key}.inputs[{index}].dtype", spec.dtype, f"one of {sorted(INPUT_DTYPES)}")
        need(model.top_k >= 1, f"{key}.top_k", model.top_k, "must be >= 1")
        need(model.score_output is None or model.score_output in model.outputs, f"{key}.score_output", model.score_output,
             f"null or one of the model's outputs {list(model.outputs)}")
        need(model.task != Task.detection or model.gates.min_topk_agreement is None or model.score_output is not None,
             f"{key}.gates.min_topk_agreement", model.gates.min_topk_agreement, f"needs {key}.score_output (the output whose top-k is compared)")
        unknown_outputs = sorted(set(model.gates.outputs) - set(model.outputs))
        need(not unknown_outputs, f"{key}.gates.outputs", unknown_outputs, f"keys are output names: {list(model.outputs)}")
        data = cfg.dataset.get(model.dataset)
        if data is not None and model.gates.max_accuracy_drop is not None and not has_labels(data):
            problems.append(f"{key}.gates.max_accuracy_drop = {model.gates.max_accuracy_drop!r}: dataset '{model.dataset}' "
                            f"({option_value(data.source)}) has no labels to measure accuracy on; set it to null and gate on "
                            f"min_top1_agreement / min_cosine (agreement with the FP32 reference), or give the dataset labels")
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
                                ("min_retrieval_agreement", 0.0, 1.0), ("min_topk_agreement", 0.0, 1.0)):
            value = getattr(gates, gate)
            need(value is None or low <= value <= high, f"{key}.gates.{gate}", value, f"must be null or in [{low}, {high}]")
        for output, gate in [("every_output", gates.every_output)] + [(f"outputs.{n}", g) for n, g in gates.outputs.items()]:
            need(gate.min_cosine is None or -1.0 <= gate.min_cosine <= 1.0, f"{key}.gates.{output}.min_cosine", gate.min_cosine, "null or in [-1, 1]")
            for bound in ("max_rel_l2", "max_abs_error"):
                need(getattr(gate, bound) is None or getattr(gate, bound) >= 0, f"{key}.gates.{output}.{bound}", getattr(gate, bound), "null or >= 0")
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
        device = option_value(target.device)
        runtimes = [option_value(r) for r in target.candidate_runtimes]
        for runtime in runtimes:
            need(device in RUNTIME_DEVICES[runtime], f"{key}.runtimes", runtimes,
                 f"runtimes that build for {device}: {[r for r, devices in RUNTIME_DEVICES.items() if device in devices]}")
        need(len(set(runtimes)) == len(runtimes), f"{key}.runtimes", runtimes, "each runtime once")
        need(option_value(target.backend) not in PYTORCH_SOURCE_RUNTIMES, f"{key}.backend", option_value(target.backend),
             "the runtime calibrate prepares the ONNX for; aoti compiles the PyTorch checkpoint: list it in runtimes instead")
        if device == "cpu":
            need(option_value(Precision.bf16) not in [option_value(p) for p in target.precisions] or option_value(target.cpu_isa) == "amx",
                 f"{key}.precisions", "bf16", "bf16 on CPU targets with cpu_isa amx only (AMX-BF16 tiles)")
        selection = target.selection
        need(bool(selection.batch_sizes) and all(b >= 1 for b in selection.batch_sizes), f"{key}.selection.batch_sizes",
             list(selection.batch_sizes), "one or more batch sizes, each >= 1")
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


def preprocess_problems(pre: Preprocess, key: str) -> List[str]:
    """What is wrong with a preprocess block on its own."""
    problems = []
    if len(pre.size) != 2 or any(d == 0 or d < -1 for d in pre.size):
        problems.append(f"{key}.size = {list(pre.size)}: [H, W], each >= 1 or -1 (the image's own size, rounded to multiple_of)")
    if pre.multiple_of < 1:
        problems.append(f"{key}.multiple_of = {pre.multiple_of}: must be >= 1")
    for name in ("mean", "std"):
        values = getattr(pre, name)
        if len(values) not in (0, 1, pre.channels):
            problems.append(f"{key}.{name} = {list(values)}: one value per channel ({pre.channels} for color "
                            f"{option_value(pre.color)}), one for all, or []")
    if any(s == 0 for s in pre.std):
        problems.append(f"{key}.std = {list(pre.std)}: no value may be 0")
    if pre.dtype not in INPUT_DTYPES:
        problems.append(f"{key}.dtype = {pre.dtype!r}: one of {sorted(INPUT_DTYPES)}")
    return problems


def preprocess_fit_problems(pre: Preprocess, key: str, spec: TensorSpec) -> List[str]:
    """What the images a preprocess block makes do not fit in the model input ``spec`` (channels, size, layout, dtype)."""
    problems = []
    if not spec.batch or len(spec.shape) != 4:
        return [f"{key}: images feed a 4-D input with a batch axis; input '{spec.name}' is {spec.shape}{'' if spec.batch else ' (batch: false)'}"]
    if spec.dtype != pre.dtype:
        problems.append(f"{key}.dtype = {pre.dtype}: input '{spec.name}' is {spec.dtype}")
    if len(pre.size) == 2:
        made = pre.sample_shape(*pre.size)
        for axis, (model_dim, ours) in enumerate(zip(spec.shape[1:], made), start=1):
            if model_dim >= 1 and ours >= 1 and model_dim != ours:
                problems.append(f"{key} makes axis {axis} of input '{spec.name}' {ours} (layout {option_value(pre.layout)}, size {list(pre.size)}, "
                                f"color {option_value(pre.color)}); the model's input is {spec.shape}")
            elif model_dim >= 1 and ours == -1:
                problems.append(f"{key}.size leaves axis {axis} of input '{spec.name}' to each image (-1); the model fixes it to {model_dim}")
    return problems


def check_config(cfg: PipelineConfig) -> None:
    problems = config_problems(cfg)
    if problems:
        raise PipelineError("invalid config values: " + "; ".join(problems))


def out_dir_problems(cfg: PipelineConfig, project_root: Path) -> List[str]:
    """Everything the pipeline writes stays inside the project (DVC tracks nothing outside it, and
    checking outputs out into a folder elsewhere would leave the workspace without them)."""
    root = Path(os.path.realpath(project_root))
    outside = []
    for key in ("artifacts_dir", "metrics_dir", "plots_dir"):
        value = getattr(cfg, key)
        resolved = Path(os.path.realpath(root / value))
        if resolved != root and root not in resolved.parents:
            outside.append(f"{key} = {value!r} resolves to {resolved}")
    return [f"output folders must be inside the project {root}: " + "; ".join(outside)] if outside else []


def check_out_dirs(cfg: PipelineConfig, project_root: Path) -> None:
    problems = out_dir_problems(cfg, project_root)
    if problems:
        raise PipelineError(problems[0])
