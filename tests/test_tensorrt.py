"""Real TensorRT-RTX engine builds on a CPU-only machine, through the same code as datacenter TensorRT.

TensorRT-RTX builds ahead of time for a compute capability, so parsing, the strongly typed network,
profiles and the serialized plan are all real here. Without a GPU driver nothing can deserialize a
plan, so engine inspection and execution are GPU-only (tests/test_gpu.py).
"""
from __future__ import annotations

import importlib.util
import shutil

import pytest

from pipeline import steps
from pipeline.steps.chain import prepare_model
from pipeline.backends import get_backend
from pipeline.backends.cuda_runtime import gpu_compute_capability
from pipeline.backends.tensorrt_backend import check_precision, import_tensorrt, network_precisions, parse_onnx
from pipeline.config import resolve_build
from pipeline.data import load_dataset
from pipeline.errors import PipelineError
from pipeline.files import read_json, sha256_file
from pipeline.paths import build_paths, model_paths

from .conftest import compose_config, copy_prepared

pytestmark = pytest.mark.slow

PRECISIONS = ["fp32", "fp16", "bf16", "int8", "fp8"]


@pytest.fixture(scope="module")
def rtx(tmp_path_factory, workspace, digits_model, resnet18_model):
    """The default models (prepared once for the session) through calibrate + build for the rtx4090 target
    at every precision."""
    root = tmp_path_factory.mktemp("rtx")
    cfg = compose_config(root, "target=[rtx4090]", f"precision=[{','.join(PRECISIONS)}]")
    prepared = {"digits_cnn": workspace, "resnet18": resnet18_model}
    sidecars = {}
    for model in sorted(cfg.model):
        if model in prepared:
            copy_prepared(prepared[model], cfg, model)
        else:
            prepare_model(cfg, model)
        for precision in PRECISIONS:
            build = resolve_build(cfg, f"{model}-rtx4090-{precision}")
            steps.calibrate(build)
            sidecars[build.name] = steps.build(build)
    return cfg, sidecars


def _digits_config(rtx_cfg, tmp_path, *overrides):
    """A config of its own for the digits CNN, starting from the rtx fixture's simplified model."""
    cfg = compose_config(tmp_path, "model=[digits_cnn]", "dataset=[digits]", *overrides)
    simplified = model_paths(cfg, "digits_cnn").simplified
    simplified.parent.mkdir(parents=True)
    shutil.copy(model_paths(rtx_cfg, "digits_cnn").simplified, simplified)
    return cfg


@pytest.mark.parametrize("model", ["digits_cnn", "resnet18"])
def test_engines_are_built_with_the_requested_precisions(rtx, model):
    cfg, sidecars = rtx
    for precision in PRECISIONS:
        name = f"{model}-rtx4090-{precision}"
        sidecar = sidecars[name]
        paths = build_paths(cfg, name)
        dtypes = sidecar["precisions_found"]["network"]["tensor_dtypes"]
        layers = sidecar["precisions_found"]["network"]["layer_types"]
        if precision in ("int8", "fp8"):
            element = {"int8": "INT8", "fp8": "FP8"}[precision]
            assert dtypes.get(element, 0) > 0 and layers.get("QUANTIZE", 0) > 0 and layers.get("DEQUANTIZE", 0) > 0
            assert {"INT8", "FP8"} - {element} & set(dtypes) == set()
        elif precision == "bf16":
            assert dtypes.get("BF16", 0) > dtypes.get("FLOAT", 0) and "HALF" not in dtypes
        elif precision == "fp16":
            assert dtypes.get("HALF", 0) > dtypes.get("FLOAT", 0), "AutoCast should leave most tensors in fp16"
            assert "INT8" not in dtypes
        else:
            assert "HALF" not in dtypes and "INT8" not in dtypes and "QUANTIZE" not in layers
        plan = paths.engine_dir / "model.plan"
        assert plan.stat().st_size > 1000 and sha256_file(plan) == sidecar["artifact_sha256"]
        assert sidecar["onnx_sha256"] == sha256_file(paths.calibrated)
        assert sidecar["backend"] == "tensorrt_rtx" and sidecar["compute_capability"] == "8.9"
        assert sidecar["versions"]["tensorrt_rtx"] == import_tensorrt(rtx=True).__version__
        # TensorRT-RTX has no build-time tactic timing (its timing-cache calls are no-ops): no cache file.
        assert sidecar["timing_cache_sha256"] is None and not (paths.engine_dir / "timing.cache").exists()
        # The inspector needs a GPU of the engine's compute capability to deserialize the plan.
        if gpu_compute_capability() == sidecar["compute_capability"]:
            assert sidecar["engine_inspected"] is True
            check_precision(sidecar["precisions_found"]["engine"], precision, "built engine")
        else:
            assert sidecar["engine_inspected"] is False and sidecar["precisions_found"]["engine"] is None


def test_dynamic_batch_profiles_come_from_config(rtx):
    cfg, sidecars = rtx
    profile = cfg.model["resnet18"].profiles[0]
    assert sidecars["resnet18-rtx4090-int8"]["profiles"] == [
        {"input": {"min": [profile.min["batch"], 3, 224, 224], "opt": [profile.opt["batch"], 3, 224, 224], "max": [profile.max["batch"], 3, 224, 224]}}
    ]
    assert sidecars["resnet18-rtx4090-int8"]["inputs"][0]["shape"] == [-1, 3, 224, 224]


def test_requested_int8_on_an_fp32_graph_is_refused_listing_what_was_found(rtx):
    cfg, _ = rtx
    trt = import_tensorrt(rtx=True)
    _, network, *_ = parse_onnx(trt, build_paths(cfg, "digits_cnn-rtx4090-fp32").calibrated)
    with pytest.raises(PipelineError, match=r"int8 was requested but the parsed network has no INT8 tensors; found tensor types \{'FLOAT'"):
        check_precision(network_precisions(network), "int8", "parsed network")
    with pytest.raises(PipelineError, match="fp16 was requested"):
        check_precision(network_precisions(network), "fp16", "parsed network")


def test_onnx_runtime_flavoured_qdq_is_rejected_with_node_name_and_op(rtx, tmp_path):
    """u8 activations with non-zero zero points: valid for ORT, refused by TensorRT's parser."""
    cfg, _ = rtx
    ort_cfg = _digits_config(cfg, tmp_path, "target=[cpu]")
    ctx = resolve_build(ort_cfg, "digits_cnn-cpu-int8")
    steps.calibrate(ctx)
    with pytest.raises(PipelineError, match=r"the TensorRT ONNX parser rejected .*node '[^']+' \((QuantizeLinear|DequantizeLinear)\)"):
        parse_onnx(import_tensorrt(rtx=True), build_paths(ort_cfg, ctx.name).calibrated)


def test_loading_an_engine_needs_a_gpu_of_its_compute_capability(rtx):
    cfg, _ = rtx
    engine_dir = build_paths(cfg, "digits_cnn-rtx4090-int8").engine_dir
    device = gpu_compute_capability()
    if device is None:
        with pytest.raises(PipelineError, match="needs an NVIDIA GPU and driver"):
            get_backend("tensorrt_rtx").load(engine_dir)
    elif device != "8.9":
        with pytest.raises(PipelineError, match=f"built for compute capability 8.9; this GPU is {device}"):
            get_backend("tensorrt_rtx").load(engine_dir)
    else:
        with get_backend("tensorrt_rtx").load(engine_dir) as runner:
            assert runner.run(load_dataset("digits", resolve_build(cfg, "digits_cnn-rtx4090-int8").dataset).load(range(4)))["logits"].shape == (4, 10)


def test_datacenter_target_builds_with_tensorrt_or_fails_naming_what_to_install(rtx, tmp_path):
    cfg, _ = rtx
    h100 = _digits_config(cfg, tmp_path, "target=[h100]")
    ctx = resolve_build(h100, "digits_cnn-h100-int8")
    steps.calibrate(ctx)
    report = read_json(build_paths(h100, ctx.name).calibrated_dir / "report.json")
    assert report["quant_format"] == "trt_s8s8"
    if importlib.util.find_spec("tensorrt") is not None:
        sidecar = steps.build(ctx)
        assert sidecar["backend"] == "tensorrt" and sidecar["precisions_found"]["network"]["tensor_dtypes"].get("INT8", 0) > 0
        return
    with pytest.raises(PipelineError, match="needs the tensorrt Python module.*install NVIDIA TensorRT"):
        steps.build(ctx)
    assert not build_paths(h100, ctx.name).engine_dir.exists()


def test_fp8_qdq_simulated_on_the_cpu_agrees_with_fp32(rtx):
    """FP8 engines need an Ada/Hopper GPU; the Q/DQ graph itself can be checked with ORT's reference kernels."""
    from pipeline.backends.onnxruntime_backend import load_onnx_runner
    from pipeline.data import load_dataset, make_splits
    from pipeline.evaluate.validate import evaluate

    cfg, _ = rtx
    ctx = resolve_build(cfg, "digits_cnn-rtx4090-fp8")
    dataset = load_dataset("digits", ctx.dataset)
    validation = make_splits(dataset, ctx.dataset).validation
    fp8 = load_onnx_runner(build_paths(cfg, ctx.name).calibrated, level="basic")
    metrics = evaluate(fp8, load_onnx_runner(model_paths(cfg, "digits_cnn").simplified), dataset, validation)
    assert metrics["top1_agreement"] >= 0.98 and metrics["accuracy_drop"] <= 1.0
    report = read_json(build_paths(cfg, ctx.name).calibrated_dir / "report.json")
    assert report["qdq"]["zero_point_types"] == ["FLOAT8E4M3FN"]


def test_transformer_engine_has_batch_and_sequence_profiles(tmp_path):
    """MiniLM through TensorRT-RTX: three int64 inputs, dynamic batch and sequence, profiles from config."""
    cfg = compose_config(tmp_path, "model=[minilm]", "target=[rtx4090]", "precision=[fp16]")
    prepare_model(cfg, "minilm")
    build = resolve_build(cfg, "minilm-rtx4090-fp16")
    steps.calibrate(build)
    sidecar = steps.build(build)
    profile = cfg.model["minilm"].profiles[0]
    expected = {"min": [profile.min["batch"], profile.min["sequence"]], "opt": [profile.opt["batch"], profile.opt["sequence"]],
                "max": [profile.max["batch"], profile.max["sequence"]]}
    assert sidecar["profiles"] == [{name: expected for name in ("input_ids", "attention_mask", "token_type_ids")}]
    assert [(i["shape"], i["dtype"]) for i in sidecar["inputs"]] == [([-1, -1], "int64")] * 3
    assert sidecar["precisions_found"]["network"]["tensor_dtypes"].get("HALF", 0) > 0
    autocast = read_json(build_paths(cfg, build.name).calibrated_dir / "report.json")["autocast"]
    assert autocast["nodes_low_precision"] > 0 and isinstance(autocast["nodes_kept_fp32"], list)


def test_a_gpu_build_is_packaged_as_a_tensorrt_plan_on_the_configured_gpus(rtx):
    """The native form a production Triton container loads: tensorrt_plan + the engine's bytes,
    KIND_GPU instances on serving.gpus, CUDA graphs, batch limits from the engine's profile."""
    import dataclasses

    from pipeline.serving.repository import read_config

    cfg, sidecars = rtx
    name = "resnet18-rtx4090-int8"
    # The batching search is asked for, but this host's Triton cannot serve a TensorRT engine: configured values, said why.
    on_two = dataclasses.replace(cfg, serving=dataclasses.replace(cfg.serving, gpus=[1, 3], batching_search=dataclasses.replace(cfg.serving.batching_search, enabled=True)))
    written = steps.package(dataclasses.replace(resolve_build(cfg, name), config=on_two))
    native, python = read_config(written["native"]), read_config(written["python"])
    assert native.platform == "tensorrt_plan" and native.optimization.cuda.graphs
    assert sha256_file(build_paths(cfg, name).serving_dir / "native" / name / "1" / "model.plan") == sidecars[name]["artifact_sha256"]
    for config in (native, python):
        (group,) = config.instance_group
        assert group.kind == group.KIND_GPU and list(group.gpus) == [1, 3]
        assert config.max_batch_size == 32  # the profile's max (resnet18: 32), under serving.max_batch_size
    batching = read_json(build_paths(cfg, name).batching_metrics)
    assert not batching["searched"] and "the embedded Triton serves ONNX Runtime and OpenVINO builds on the CPU" in batching["not_searched"]
    assert batching["batching"]["max_queue_delay_us"] == native.dynamic_batching.max_queue_delay_microseconds == cfg.serving.max_queue_delay_us
