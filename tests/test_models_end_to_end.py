"""The models the README promises, end to end on the embedded default (ONNX Runtime, CPU):
resnet18 from the default matrix and the real pretrained MiniLM at fp32 and INT8, through every
stage function a `dvc repro` runs, report included."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from pipeline import steps
from pipeline.steps.chain import prepare_model
from pipeline.config import resolve_build
from pipeline.files import read_json
from pipeline.paths import build_paths, model_paths
from pipeline.report.summary import write_report

from .conftest import compose_config, copy_prepared

pytestmark = pytest.mark.slow


def _run_all(cfg, model: str, prepared=None) -> dict:
    """prepare -> ... -> benchmark for every build of ``model`` (from ``prepared``'s artifacts where a session
    fixture prepared it), then the report; returns the metrics."""
    if prepared is not None:
        copy_prepared(prepared, cfg, model)
    else:
        prepare_model(cfg, model)
    results = {}
    for name in sorted(cfg.builds):
        build = resolve_build(cfg, name)
        steps.calibrate(build)
        steps.build(build)
        results[build.precision_name] = {"validate": steps.validate(build), "benchmark": steps.benchmark(build)}
    reports = Path(cfg.artifacts_dir).parent / "reports"
    results["report_rows"] = write_report(cfg, reports / "summary.md", reports / "summary.json", reports)
    results["report"] = (reports / "summary.md").read_text()
    return results


def _config(tmp_path, model: str):
    return compose_config(tmp_path, f"model=[{model}]", "benchmark=quick")


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory, resnet18_model):
    cfg = _config(tmp_path_factory.mktemp("resnet18"), "resnet18")
    return cfg, _run_all(cfg, "resnet18", resnet18_model)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    cfg = _config(tmp_path_factory.mktemp("minilm"), "minilm")
    return cfg, _run_all(cfg, "minilm")


def test_resnet18_int8_passes_its_gates_and_is_benchmarked(resnet18):
    cfg, results = resnet18
    gates = cfg.model["resnet18"].gates
    int8 = results["int8"]["validate"]
    assert int8["gates_passed"] and int8["top1_agreement"] >= gates.min_top1_agreement and int8["cosine_mean"] >= gates.min_cosine
    assert "accuracy" not in int8, "photo crops have no labels: no accuracy is invented"
    assert results["fp32"]["validate"]["top1_agreement"] == 1.0
    for precision in ("fp32", "int8"):
        rows = results[precision]["benchmark"]
        assert [r["batch_size"] for r in rows] == cfg.benchmark.batch_sizes and all(r["throughput"] > 0 for r in rows)
    report = read_json(build_paths(cfg, "resnet18-cpu-int8").calibrated_dir / "report.json")
    assert report["num_samples"] == 500 and report["qdq"]["quantize_linear"] > 20


def test_resnet18_report_has_both_precisions(resnet18):
    _, results = resnet18
    assert "## resnet18 on cpu" in results["report"] and "top-1 agreement" in results["report"]
    assert {r["precision"] for r in results["report_rows"]} == {"fp32", "int8"}


def test_minilm_int8_meets_cosine_and_retrieval_gates_through_the_search(minilm):
    cfg, results = minilm
    gates = cfg.model["minilm"].gates
    int8 = results["int8"]["validate"]
    assert int8["gates_passed"], int8["gate_failures"]
    assert int8["cosine_mean"] >= gates.min_cosine and int8["retrieval_agreement"] >= gates.min_retrieval_agreement
    assert "top1_agreement" not in int8, "an embedding has no classes"
    search = read_json(build_paths(cfg, "minilm-cpu-int8").calibrated_dir / "search.json")
    last = search["steps"][-1]
    assert not last["gate_failures"] and len(last["excluded"]) <= cfg.calibration.search.max_excluded
    kept = read_json(build_paths(cfg, "minilm-cpu-int8").calibrated_dir / "exclusions.json")
    assert kept == last["excluded"] and all("MatMul" in node or "Attention" in node for node in kept)


def test_minilm_int8_on_the_cpu_is_fused_and_quantized_per_batch(minilm):
    """Attention fused and quantized as QAttention, activations quantized at run time, and the target's
    disabled SkipLayerNormFusion honoured when ONNX Runtime optimizes the artifact."""
    cfg, _ = minilm
    report = read_json(build_paths(cfg, "minilm-cpu-int8").calibrated_dir / "report.json")
    assert report["method"] == "dynamic" and report["transformer_fusions"]["Attention"] == 6
    ops = {node.op_type for node in onnx.load(str(build_paths(cfg, "minilm-cpu-int8").engine_dir / "model.onnx")).graph.node}
    assert {"QAttention", "DynamicQuantizeMatMul"} <= ops or {"QAttention", "MatMulIntegerToFloat"} <= ops, ops
    assert "BiasGelu" in ops and "FastGelu" not in ops, "exact (erf) GELU unless the model asks for the approximation"
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops
    sidecar = read_json(build_paths(cfg, "minilm-cpu-int8").engine_dir / "sidecar.json")
    assert sidecar["disabled_optimizers"] == cfg.target["cpu"].build.disabled_optimizers == ["SkipLayerNormFusion"]


def test_report_for_an_embedding_model_shows_retrieval_agreement(minilm):
    _, results = minilm
    report = results["report"]
    assert "## minilm on cpu" in report and "| precision | runtime | accuracy % | retrieval agreement |" in report
    int8 = next(r for r in results["report_rows"] if r["precision"] == "int8")
    assert int8["agreement"] == results["int8"]["validate"]["retrieval_agreement"] and int8["top1_agreement"] is None
    assert int8["runtime"] == "onnxruntime", "the build's runtime, from its build metrics"


def test_minilm_fp16_for_the_cuda_target_is_fused_for_its_kernels_with_float32_io(minilm, tmp_path):
    """h200_ort FP16 of a transformer: ONNX Runtime's GPU fusions (attention, SkipLayerNormalization, bias
    GELU) and float16 weights, inputs and outputs left as they were, instead of generic AutoCast. Made on
    the CPU: the fusions are graph rewrites."""

    cfg, _ = minilm
    gpu = compose_config(tmp_path, "model=[minilm]", "target=[h200_ort]", "precision=[fp16]")
    copy_prepared(cfg, gpu, "minilm")
    report = steps.calibrate(resolve_build(gpu, "minilm-h200_ort-fp16"))
    assert report["transformer_fusions"]["Attention"] == 6 and report["transformer_fusions"]["SkipLayerNormalization"] >= 6
    model = onnx.load(str(build_paths(gpu, "minilm-h200_ort-fp16").calibrated))
    ops = {node.op_type for node in model.graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops and "autocast" not in report
    weights = [i for i in model.graph.initializer if len(i.dims) == 2 and min(i.dims) >= 384]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    simplified = onnx.load(str(model_paths(cfg, "minilm").simplified))
    assert sorted((v.name, v.type.tensor_type.elem_type) for v in model.graph.input) == sorted((v.name, v.type.tensor_type.elem_type) for v in simplified.graph.input)
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in model.graph.output)


def test_sequence_models_report_tokens_per_second_beside_samples(minilm):
    """tokens/s counts real tokens (the attention mask), padded tokens/s the padded shape, e.g. 128."""
    cfg, results = minilm
    for row in results["int8"]["benchmark"]:
        assert row["padded_tokens_per_s"] == pytest.approx(row["throughput"] * cfg.dataset["sentences"].max_length)
        assert 0 < row["tokens_per_s"] < row["padded_tokens_per_s"], "sentences are shorter than the padding"
