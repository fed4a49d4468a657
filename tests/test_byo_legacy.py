"""Third-party ONNX as older exporters write it, built here with torch and onnx.helper: IR 3, opset 7
and 9 with weights listed as inputs, a Reshape with batch 1 written in, weights made by
ConstantOfShape, external data, names with '/', fixed-batch models, a custom op, NaN weights. Each
goes through every stage at fp32 and int8 with real ONNX Runtime, or fails with one clear error
that names the user's file and the keys to set."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline import steps
from pipeline.steps.chain import prepare_model
from pipeline.backends import get_backend
from pipeline.config import resolve_build, resolve_model
from pipeline.data import load_dataset
from pipeline.errors import PipelineError
from pipeline.files import read_json
from pipeline.models import build_torch_model, load_checkpoint
from pipeline.paths import build_paths, model_metrics, model_paths

from .conftest import compose_config

pytestmark = pytest.mark.slow


def _old_exporter_file(workspace, digits_model, path, opset: int, input_name: str = "input", external: bool = False):
    """The trained digits CNN as a Caffe2-era exporter wrote it: opset ``opset``, IR 3, every weight
    also a graph input, batch fixed at 1, and the classifier's Flatten as a Reshape to [1, 64]."""
    import torch

    model = build_torch_model(digits_model.model)
    model.load_state_dict(load_checkpoint(model_paths(workspace, "digits_cnn").checkpoint))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, 1, 8, 8),), str(path), input_names=[input_name], output_names=["logits"],
                          opset_version=opset, do_constant_folding=False, keep_initializers_as_inputs=True, dynamo=False)
    proto = onnx.load(str(path))
    (flatten,) = [n for n in proto.graph.node if n.op_type == "Flatten"]
    target = numpy_helper.from_array(np.array([1, 64], np.int64), "flatten_shape")
    proto.graph.initializer.append(target)
    proto.graph.input.append(helper.make_tensor_value_info("flatten_shape", TensorProto.INT64, [2]))
    flatten.op_type, flatten.input[:] = "Reshape", [flatten.input[0], "flatten_shape"]
    del flatten.attribute[:]
    proto.ir_version = 3
    proto.producer_name = "caffe2"
    del proto.graph.value_info[:]
    if external:
        onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    else:
        onnx.save(proto, str(path))
    saved = onnx.load(str(path), load_external_data=False)
    assert saved.ir_version == 3 and saved.opset_import[0].version == opset and len(saved.graph.input) > 1
    return path


def _config(tmp_path, path, *extra):
    return compose_config(tmp_path, "model=[onnx_file]", "dataset=[digits]", f"model.onnx_file.weights_path={path}", *extra)


def _through_every_stage(cfg) -> dict:
    prepare_model(cfg, "onnx_file")
    results = {}
    for precision in ("fp32", "int8"):
        build = resolve_build(cfg, f"onnx_file-cpu-{precision}")
        for step in (steps.calibrate, steps.build, steps.validate, steps.benchmark, steps.package):
            step(build)
        results[precision] = read_json(build_paths(cfg, build.name).validate_metrics)
        assert results[precision]["gates_passed"]
    return results


@pytest.mark.parametrize("opset", [7, 9])
def test_ir3_files_with_weights_as_inputs_and_batch_in_a_reshape_go_through_every_stage(tmp_path, workspace, digits_model, opset):
    path = _old_exporter_file(workspace, digits_model, tmp_path / f"caffe2_opset{opset}.onnx", opset)
    cfg = _config(tmp_path, path)
    results = _through_every_stage(cfg)
    assert results["fp32"]["accuracy"] > 95 and results["int8"]["accuracy_drop"] <= 1.0
    imported = onnx.load(str(model_paths(cfg, "onnx_file").exported))
    assert imported.ir_version >= 8 and imported.opset_import[0].version == 17
    counts = read_json(model_metrics(cfg, "onnx_file") / "simplify.json")
    assert counts["nodes_in_source_file"] == len(onnx.load(str(path)).graph.node), "the user's own file, before the opset upgrade"
    feeds = load_dataset("digits", resolve_model(cfg, "onnx_file").dataset).load(range(5))
    with get_backend("onnxruntime").load(build_paths(cfg, "onnx_file-cpu-int8").engine_dir) as runner:
        assert runner.run(feeds)["logits"].shape == (5, 10), "the batch written into the Reshape no longer pins it to 1"


def test_external_data_and_an_input_name_with_a_slash(tmp_path, workspace, digits_model):
    folder = tmp_path / "user"
    folder.mkdir()
    path = _old_exporter_file(workspace, digits_model, folder / "model.onnx", 9, input_name="image/pixels", external=True)
    assert (folder / "weights.bin").stat().st_size > 100_000
    cfg = _config(tmp_path, path, "model.onnx_file.inputs=[{name: image/pixels, shape: [-1, 1, 8, 8], dtype: float32}]",
                  "dataset.digits.input_name=image/pixels")
    assert cfg.models["onnx_file"].source == str(folder), "the whole folder (file + weights) is prepare's dependency"
    results = _through_every_stage(cfg)
    assert results["int8"]["accuracy_drop"] <= 1.0


def test_a_fixed_batch_model_runs_one_sample_at_a_time_through_every_stage(tmp_path, workspace, digits_model):
    path = _old_exporter_file(workspace, digits_model, tmp_path / "fixed.onnx", 9)
    cfg = _config(tmp_path, path, "model.onnx_file.dynamic_batch=false",
                  "model.onnx_file.inputs=[{name: input, shape: [1, 1, 8, 8], dtype: float32}]")
    results = _through_every_stage(cfg)
    assert results["int8"]["accuracy_drop"] <= 1.0
    bench = read_json(build_paths(cfg, "onnx_file-cpu-int8").benchmark_metrics)
    assert [key for key in bench if key.startswith("batch_")] == ["batch_1"], "a fixed batch of 1 is benchmarked at batch 1 only"
    from pipeline.serving.repository import read_config

    config = read_config(build_paths(cfg, "onnx_file-cpu-int8").serving_dir / "python" / "onnx_file-cpu-int8" / "config.pbtxt")
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 1, 8, 8] and not config.HasField("dynamic_batching")
    # Served on a real Triton server one sample per request, answering like the offline engine.
    quick = dataclasses.replace(cfg.serving, concurrency=[1, 2], seconds_per_level=0.5,
                                server_scenario=dataclasses.replace(cfg.serving.server_scenario, probes=2, seconds_per_rate=0.5))
    served = steps.serve(dataclasses.replace(resolve_build(cfg, "onnx_file-cpu-int8"), config=dataclasses.replace(cfg, serving=quick)))
    assert served["gates_passed"] and served["concurrency_2"]["errors"] == 0 and served["concurrency_2"]["mean_batch_size"] == 1.0


def test_weights_made_by_constant_of_shape_and_a_renamed_output(tmp_path):
    """A hand-made opset-9 model whose bias comes from ConstantOfShape; the config names its output."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(10, 64)).astype(np.float32) * 0.1, "W")
    shape = numpy_helper.from_array(np.array([10], np.int64), "bias_shape")
    nodes = [helper.make_node("ConstantOfShape", ["bias_shape"], ["B"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
             helper.make_node("Reshape", ["input", "flat"], ["x"]), helper.make_node("Gemm", ["x", "W", "B"], ["scores"], transB=1)]
    flat = numpy_helper.from_array(np.array([1, 64], np.int64), "flat")
    graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8]),
                                              helper.make_tensor_value_info("W", TensorProto.FLOAT, [10, 64]),
                                              helper.make_tensor_value_info("bias_shape", TensorProto.INT64, [1]),
                                              helper.make_tensor_value_info("flat", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 10])], [weight, shape, flat])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    proto.ir_version = 3
    path = tmp_path / "hand.onnx"
    onnx.save(proto, str(path))
    cfg = _config(tmp_path, path)
    ctx = resolve_model(cfg, "onnx_file")
    steps.prepare(cfg, ctx)
    with pytest.raises(PipelineError, match=rf"{path} has outputs \['scores'\]; model.onnx_file.outputs declares \['logits'\]: "
                                            r"set model.onnx_file.outputs=\['scores'\]"):
        steps.export(cfg, ctx)
    cfg = _config(tmp_path, path, "model.onnx_file.outputs=[scores]", "model.onnx_file.gates.max_accuracy_drop=null",
                  "model.onnx_file.gates.min_top1_agreement=0.9")
    ctx = resolve_model(cfg, "onnx_file")
    steps.export(cfg, ctx)
    steps.simplify(cfg, ctx)
    build = resolve_build(cfg, "onnx_file-cpu-int8")
    for step in (steps.calibrate, steps.build, steps.validate):
        step(build)


def _hand_model(tmp_path, name, nodes, initializers=(), opsets=(("", 17),)):
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], list(initializers))
    path = tmp_path / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets]), str(path))
    return path


def _export_error(tmp_path, path, *extra) -> str:
    cfg = _config(tmp_path, path, *extra)
    ctx = resolve_model(cfg, "onnx_file")
    steps.prepare(cfg, ctx)
    with pytest.raises(PipelineError) as info:
        steps.export(cfg, ctx)
    assert not model_paths(cfg, "onnx_file").exported.exists(), "no half-written artifact"
    return str(info.value)


def test_a_custom_op_nan_weights_and_a_batch_that_cannot_be_made_dynamic_are_one_clear_error_each(tmp_path):
    flat = numpy_helper.from_array(np.array([-1, 64], np.int64), "flat")
    weight = np.ones((10, 64), np.float32)
    custom = _hand_model(tmp_path, "custom", [helper.make_node("Reshape", ["input", "flat"], ["x"]),
                                              helper.make_node("FancyOp", ["x"], ["logits"], name="fancy", domain="com.example")],
                         [flat], opsets=(("", 17), ("com.example", 1)))
    message = _export_error(tmp_path, custom)
    assert f"{custom} uses com.example:FancyOp (node 'fancy')" in message and "allowed op domains: ai.onnx" in message

    weight[3, 5] = np.nan
    nan = _hand_model(tmp_path, "nan", [helper.make_node("Reshape", ["input", "flat"], ["x"]),
                                        helper.make_node("Gemm", ["x", "W"], ["logits"], transB=1)],
                      [flat, numpy_helper.from_array(weight, "W")])
    assert f"{nan}: weight 'W' holds 1 NaN value(s) of 640" in _export_error(tmp_path, nan)

    # A batch of 1 baked into an Expand: not a Reshape, so it cannot be rewritten; the probe names the node.
    ones = numpy_helper.from_array(np.array([1, 10], np.int64), "expand_to")
    baked = tmp_path / "baked.onnx"
    graph = helper.make_graph([helper.make_node("Reshape", ["input", "flat"], ["x"]),
                               helper.make_node("Gemm", ["x", "W"], ["y"], transB=1),
                               helper.make_node("ReduceMean", ["y"], ["m"], axes=[0], keepdims=1),
                               helper.make_node("Expand", ["m", "expand_to"], ["logits"], name="expand_batch")],
                              "baked", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
                              [flat, numpy_helper.from_array(np.ones((10, 64), np.float32), "W"), ones])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(baked))
    assert _export_error(tmp_path, baked) == (
        f"{baked} gives output 'logits' of shape [1, 10] for a batch of 2 synthetic samples of the declared shapes "
        "(model.onnx_file.inputs): its axis 0 must be "
        "the batch; its batch was made dynamic (model.onnx_file.dynamic_batch=true) but a node still assumes the file's own batch: "
        "fix it in the exporter, or declare the fixed batch in model.onnx_file.inputs with dynamic_batch=false")

    # A node ONNX Runtime refuses at batch 2: its own message names the node.
    wrong = numpy_helper.from_array(np.array([2, 32], np.int64), "flat")  # batch 2 fits, but not 64 features per sample
    clash = _hand_model(tmp_path, "clash", [helper.make_node("Reshape", ["input", "flat"], ["x"], name="flatten_to_32"),
                                            helper.make_node("Gemm", ["x", "W"], ["logits"], transB=1)],
                        [wrong, numpy_helper.from_array(np.ones((10, 32), np.float32), "W")])
    message = _export_error(tmp_path, clash)
    assert message.startswith(f"{clash} does not run on a batch of 2 synthetic samples of the declared shapes (model.onnx_file.inputs): ")
    assert "flatten_to_32" in message


@pytest.mark.parametrize("make, expected", [
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.symlink_to(p), "is a symbolic link loop"),
])
def test_a_weights_path_that_is_not_a_file_says_what_it_is(tmp_path, make, expected):
    path = tmp_path / "model.onnx"
    make(path)
    cfg = _config(tmp_path, path)
    with pytest.raises(PipelineError, match=rf"model.onnx_file.weights_path = {path} {expected}"):
        steps.prepare(cfg, resolve_model(cfg, "onnx_file"))
