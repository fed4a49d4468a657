"""INT8 that is never slower than float, and precision chosen by cost as well as accuracy: the per-layer
speed guard (screen alone, confirm in the model), dynamic activation ranges on ONNX Runtime CPU targets
(static Q/DQ elsewhere), transformer fusions, and the cost-aware order of the accuracy search.

Nothing here depends on this machine's speed: limits are set so that every layer is a suspect, and the
assertions check that the decisions follow the timings the stage recorded, whatever they were."""
from __future__ import annotations


import onnx
import pytest

from pipeline import steps
from pipeline.config import resolve_build
from pipeline.errors import PipelineError
from pipeline.files import read_json
from pipeline.onnx_tools.fusion import fuse_transformer
from pipeline.evaluate.sensitivity import rank_by_cost
from pipeline.paths import build_paths, model_paths

from .conftest import compose_config, copy_prepared


def _config(root, workspace, *overrides):
    cfg = compose_config(root, "model=[digits_cnn]", "dataset=[digits]", "precision=[int8]", "benchmark=quick", *overrides)
    copy_prepared(workspace, cfg, "digits_cnn")
    return cfg


def _float_weight_inputs(model: onnx.ModelProto, node_name: str) -> bool:
    """Whether ``node_name`` reads its weights as float initializers (no DequantizeLinear, no integer op)."""
    initializers = {i.name: i for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == node_name)
    weights = [initializers[i] for i in node.input if i in initializers]
    return node.op_type in ("Conv", "Gemm", "MatMul") and bool(weights) and all(w.data_type == onnx.TensorProto.FLOAT for w in weights)


def test_speed_guard_keeps_float_exactly_the_layers_the_whole_model_runs_faster_without(workspace, digits_model, tmp_path):
    # A limit no layer meets alone: every layer is a suspect and is timed in the whole model.
    cfg = _config(tmp_path, workspace, "target.cpu.quantization.min_layer_speedup=1000")
    ctx = resolve_build(cfg, "digits_cnn-cpu-int8")
    report = steps.calibrate(ctx)
    timings = read_json(build_paths(cfg, ctx.name).calibrate_metrics)["layer_speed"]
    layers = [row["node"] for row in timings["layers"]]
    assert layers and all(row["float_ms"] > 0 and row["int8_ms"] > 0 for row in timings["layers"])
    assert [row["node"] for row in timings["in_model"]] == layers, "every layer below the limit is confirmed in the model"
    kept = [row["node"] for row in timings["in_model"] if row["stays_float"]]
    for row in timings["in_model"]:  # the decision follows the model timings (recorded rounded: ties say nothing)
        if row["model_layer_float_ms"] != row["model_all_int8_ms"]:
            assert row["stays_float"] == (row["model_layer_float_ms"] < row["model_all_int8_ms"]), row
    assert report["kept_float_for_speed"] == kept and set(kept) <= set(report["excluded_nodes"])
    assert read_json(build_paths(cfg, ctx.name).calibrated_dir / "exclusions.json") == report["excluded_nodes"]
    calibrated = onnx.load(str(build_paths(cfg, ctx.name).calibrated))
    for node in layers:
        assert _float_weight_inputs(calibrated, node) == (node in kept), node
    assert "layer_speed" not in read_json(build_paths(cfg, ctx.name).calibrated_dir / "report.json"), "timings are metrics, not artifact"


def test_dynamic_ranges_on_the_cpu_and_static_qdq_for_tensorrt(workspace, digits_model, tmp_path):
    cfg = _config(tmp_path, workspace, "target=[cpu,rtx4090]", "model.digits_cnn.int8_activations=dynamic")
    cpu = steps.calibrate(resolve_build(cfg, "digits_cnn-cpu-int8"))
    assert cpu["method"] == "dynamic" and cpu["num_samples"] == 0 and cpu["qdq"]["integer_ops"] > 0
    assert cpu["qdq"]["dequantize_linear"] == 0, "activations are quantized per batch at run time, not by Q/DQ pairs"
    manifest = read_json(build_paths(cfg, "digits_cnn-cpu-int8").manifest)
    assert manifest["num_samples"] == cfg.calibration.search.sensitivity_samples, "the manifest lists only the samples used"
    build = resolve_build(cfg, "digits_cnn-cpu-int8")
    steps.build(build)
    assert steps.validate(build)["gates_passed"]
    tensorrt = steps.calibrate(resolve_build(cfg, "digits_cnn-rtx4090-int8"))
    assert tensorrt["method"] == cfg.calibration.method.value and tensorrt["num_samples"] == cfg.calibration.num_samples
    assert tensorrt["qdq"]["dequantize_linear"] > 0 and tensorrt["qdq"]["integer_ops"] == 0


def test_transformer_fusions_on_a_graph_without_attention_fail_naming_what_to_set(digits_model, workspace, tmp_path):
    with pytest.raises(PipelineError, match=r"fused no attention in .*set the model's num_heads and hidden_size, or transformer_fusions.model_type: null"):
        fuse_transformer(model_paths(workspace, "digits_cnn").simplified, tmp_path / "fused.onnx", "bert", 2, 8)
    assert not (tmp_path / "fused.onnx").exists()


def test_the_search_keeps_in_float_the_most_accuracy_per_millisecond_first():
    ranking = [{"node": "big", "gain": 0.010}, {"node": "cheap", "gain": 0.006}, {"node": "noise", "gain": 0.0001}, {"node": "worse", "gain": -0.01}]
    speed = [{"node": "big", "float_ms": 10.0, "int8_ms": 2.0}, {"node": "cheap", "float_ms": 1.0, "int8_ms": 0.5},
             {"node": "noise", "float_ms": 0.02, "int8_ms": 0.01}, {"node": "worse", "float_ms": 1.0, "int8_ms": 0.5}]
    ordered = rank_by_cost(ranking, speed)
    # cheap: 0.012/ms beats big: 0.00125/ms; noise buys under a tenth of the best gain, so it waits despite its tiny cost.
    assert [r["node"] for r in ordered] == ["cheap", "big", "noise", "worse"]
    assert ordered[0]["cost_ms"] == pytest.approx(0.5) and ordered[0]["gain_per_ms"] == pytest.approx(0.012)
    assert rank_by_cost(ranking, []) == ranking, "without timings, accuracy alone orders the search"


def test_a_layer_fast_enough_alone_is_never_timed_in_the_model(workspace, digits_model, tmp_path):
    cfg = _config(tmp_path, workspace, "target.cpu.quantization.min_layer_speedup=0.001")
    ctx = resolve_build(cfg, "digits_cnn-cpu-int8")
    report = steps.calibrate(ctx)
    timings = read_json(build_paths(cfg, ctx.name).calibrate_metrics)["layer_speed"]
    assert timings["layers"] and timings["in_model"] == [] and report["kept_float_for_speed"] == []
