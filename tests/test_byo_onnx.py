"""Bring-your-own ONNX from another exporter: old opset, weights as inputs, constant subgraphs,
fixed batch; through prepare -> export -> simplify -> calibrate -> build -> validate."""
from __future__ import annotations

import onnx
import pytest

from pipeline import steps
from pipeline.steps.chain import prepare_model
from pipeline.backends import get_backend
from pipeline.config import resolve_build, resolve_model
from pipeline.data import load_dataset
from pipeline.errors import PipelineError
from pipeline.paths import build_paths, model_paths

from .conftest import compose_config


def _config(tmp_path, path, *extra):
    return compose_config(tmp_path, "model=[onnx_file]", f"model.onnx_file.weights_path={path}", *extra)


def test_legacy_file_goes_through_the_whole_pipeline(tmp_path, legacy_onnx, workspace):
    cfg = _config(tmp_path, legacy_onnx)
    prepare_model(cfg, "onnx_file")
    imported = onnx.load(str(model_paths(cfg, "onnx_file").exported))
    assert imported.opset_import[0].version == 17
    assert [i.name for i in imported.graph.input] == ["input"]
    assert imported.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    build = resolve_build(cfg, "onnx_file-cpu-int8")
    steps.calibrate(build)
    steps.build(build)
    metrics = steps.validate(build)
    assert metrics["reference_accuracy"] > 95 and metrics["accuracy_drop"] <= 1.0
    feeds = load_dataset("digits", build.dataset).load(range(5))
    with get_backend("onnxruntime").load(build_paths(cfg, build.name).engine_dir) as runner:
        assert runner.run(feeds)["logits"].shape == (5, 10)  # the fixed batch of 1 is gone


def test_fixed_batch_is_refused_unless_the_config_asks(tmp_path, legacy_onnx):
    cfg = _config(tmp_path, legacy_onnx, "model.onnx_file.dynamic_batch=false")
    ctx = resolve_model(cfg, "onnx_file")
    steps.prepare(cfg, ctx)
    with pytest.raises(PipelineError, match=r"input 'input' of .* has a fixed batch dimension of 1; set model.onnx_file.dynamic_batch=true"):
        steps.export(cfg, ctx)
    assert not model_paths(cfg, "onnx_file").exported.exists()


def test_declared_inputs_must_match_the_file(tmp_path, legacy_onnx):
    cfg = _config(tmp_path, legacy_onnx, "model.onnx_file.inputs=[{name: pixels, shape: [-1, 1, 8, 8], dtype: float32}]")
    ctx = resolve_model(cfg, "onnx_file")
    steps.prepare(cfg, ctx)
    with pytest.raises(PipelineError, match=r"has inputs \['input'\]; model.onnx_file.inputs declares \['pixels'\]"):
        steps.export(cfg, ctx)


def test_missing_or_unset_file_is_a_clear_error(tmp_path):
    cfg = compose_config(tmp_path, "model=[onnx_file]")
    with pytest.raises(PipelineError, match="model.onnx_file.weights_path is not set"):
        steps.prepare(cfg, resolve_model(cfg, "onnx_file"))
    cfg = _config(tmp_path, tmp_path / "nope.onnx")
    with pytest.raises(PipelineError, match="nope.onnx not found"):
        steps.prepare(cfg, resolve_model(cfg, "onnx_file"))


def test_an_op_the_target_cannot_run_is_named(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("FancyActivation", ["input"], ["logits"], name="my_custom_node", domain="com.example")],
        "custom", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
    )
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]), str(path))
    from pipeline.backends.onnxruntime_backend import create_session

    with pytest.raises(PipelineError, match="FancyActivation"):
        create_session(path)
