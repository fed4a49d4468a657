"""Export, simplify, quantize: real torch exports, real onnx-graphsurgeon, real ORT calibration."""
from __future__ import annotations

import shutil
import struct

import numpy as np
import onnx
import pytest

from pipeline import steps
from pipeline.backends.onnxruntime_backend import load_onnx_runner
from pipeline.config import resolve_build, resolve_model
from pipeline.config.schema import CalibrationMethod, QuantFormat
from pipeline.data import load_dataset, make_splits
from pipeline.errors import PipelineError
from pipeline.files import read_json, sha256_file
from pipeline.onnx_tools.inspect import load_model
from pipeline.onnx_tools.quantize import collect_ranges, folded_activation_inputs, quantize_qdq, trt_calibration_cache
from pipeline.onnx_tools.simplify import simplify_file
from pipeline.paths import build_paths, model_paths

from .conftest import compose_config, private_copy


def test_export_is_byte_deterministic_with_named_io_and_dynamic_batch(workspace, digits_model, tmp_path):
    cfg = private_copy(workspace, tmp_path, "models/digits_cnn")
    paths = model_paths(cfg, "digits_cnn")
    first = sha256_file(paths.exported)
    steps.export(cfg, resolve_model(cfg, "digits_cnn"))
    assert sha256_file(paths.exported) == first
    model = onnx.load(str(paths.exported))
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.opset_import[0].version == 17


def test_prepare_is_deterministic_and_the_cnn_learned_digits(workspace, digits_model, tmp_path):
    cfg = private_copy(workspace, tmp_path, "models/digits_cnn")
    paths = model_paths(cfg, "digits_cnn")
    before = sha256_file(paths.checkpoint)
    steps.prepare(cfg, resolve_model(cfg, "digits_cnn"))
    assert sha256_file(paths.checkpoint) == before
    dataset = load_dataset("digits", digits_model.dataset)
    validation = make_splits(dataset, digits_model.dataset).validation
    runner = load_onnx_runner(paths.simplified)
    logits = runner.run(dataset.load(validation))["logits"]
    assert (logits.argmax(1) == dataset.labels[validation]).mean() > 0.95


def test_simplified_model_matches_original_on_real_inputs(workspace, digits_model):
    paths = model_paths(workspace, "digits_cnn")
    dataset = load_dataset("digits", digits_model.dataset)
    feeds = dataset.load(range(64))
    original = load_onnx_runner(paths.exported, level="disabled").run(feeds)["logits"]
    simplified = load_onnx_runner(paths.simplified, level="disabled").run(feeds)["logits"]
    np.testing.assert_allclose(simplified, original, rtol=1e-5, atol=1e-5)
    metrics = read_json(workspace.metrics_dir + "/models/digits_cnn/simplify.json")
    assert metrics["nodes_after"] <= metrics["nodes_before"]


def test_simplify_folds_constant_subgraphs_and_drops_initializer_inputs(tmp_path):
    """An old-exporter style graph: weights also listed as inputs, and a weight computed at run time."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["w", "two"], ["w2"], name="scale_weight"),
         helper.make_node("MatMul", ["x", "w2"], ["y"], name="matmul")],
        "legacy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2]), helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], initializer=[weight, two],
    )
    src = tmp_path / "legacy.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), src)
    metrics = simplify_file(src, tmp_path / "simple.onnx")
    simple = onnx.load(str(tmp_path / "simple.onnx"))
    assert metrics == {**metrics, "nodes_before": 2, "nodes_after": 1}
    assert [i.name for i in simple.graph.input] == ["x"]
    x = np.ones((4, 2), np.float32)
    expected = x @ (np.arange(6, dtype=np.float32).reshape(2, 3) * 2)
    np.testing.assert_allclose(load_onnx_runner(tmp_path / "simple.onnx").run({"x": x})["y"], expected)


def test_malformed_and_missing_onnx_give_clear_errors(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07this is not a protobuf")
    with pytest.raises(PipelineError, match="malformed ONNX file|invalid ONNX model"):
        load_model(broken)
    with pytest.raises(PipelineError, match="exported ONNX not found"):
        simplify_file(tmp_path / "nope.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def _ranges(workspace, digits_model, symmetric):
    source = model_paths(workspace, "digits_cnn").simplified
    dataset = load_dataset("digits", digits_model.dataset)
    chunks = (feeds for _, feeds in dataset.batches(range(64), 16))
    return source, collect_ranges(source, chunks, workspace.calibration, symmetric=symmetric)


def test_tensorrt_flavour_is_symmetric_s8_with_float_bias(workspace, digits_model, tmp_path):
    source, ranges = _ranges(workspace, digits_model, symmetric=True)
    assert all(abs(lo + hi) < 1e-5 * max(1.0, hi) for lo, hi in ranges.values())  # symmetric ranges
    out = tmp_path / "trt.onnx"
    quantize_qdq(source, out, ranges, QuantFormat.trt_s8s8, per_channel=True, method=CalibrationMethod.minmax)
    model = onnx.load(str(out))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    assert not any(t.dtype == np.int32 for t in inits.values()), "TensorRT's parser rejects int32 bias"
    per_channel = [inits[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[1]) is not None and inits[n.input[1]].ndim == 1]
    assert per_channel, "weights must be per-channel"


def test_ort_cpu_flavour_is_u8_activations_s8_weights(workspace, digits_model, tmp_path):
    source, ranges = _ranges(workspace, digits_model, symmetric=False)
    out = tmp_path / "ort.onnx"
    quantize_qdq(source, out, ranges, QuantFormat.ort_u8s8, per_channel=True, method=CalibrationMethod.minmax)
    model = onnx.load(str(out))
    inits = {i.name: i for i in model.graph.initializer}
    dequantized = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and len(n.input) > 2]
    # Stored quantized (an initializer feeds their DequantizeLinear): weights s8, biases s32. Quantized at
    # run time (a QuantizeLinear feeds theirs): activations u8.
    stored = {(inits[n.input[0]].data_type, inits[n.input[2]].data_type) for n in dequantized if n.input[0] in inits}
    activations = {inits[n.input[2]].data_type for n in dequantized if n.input[0] not in inits}
    assert {zero for storage, zero in stored if storage == onnx.TensorProto.INT8} == {onnx.TensorProto.INT8}, stored
    assert all(zero == storage for storage, zero in stored) and activations == {onnx.TensorProto.UINT8}, (stored, activations)


def test_percentile_calibration_clips_the_tails_minmax_keeps(workspace, digits_model, tmp_path):
    import dataclasses

    source = model_paths(workspace, "digits_cnn").simplified
    dataset = load_dataset("digits", digits_model.dataset)
    ranges = {}
    for method in (CalibrationMethod.minmax, CalibrationMethod.percentile):
        cfg = dataclasses.replace(workspace.calibration, method=method, percentile=99.0)
        chunks = (feeds for _, feeds in dataset.batches(range(256), 16))
        ranges[method] = collect_ranges(source, chunks, cfg, symmetric=True)
    assert ranges[CalibrationMethod.minmax].keys() == ranges[CalibrationMethod.percentile].keys()
    clipped = 0
    for name, (low, high) in ranges[CalibrationMethod.minmax].items():
        p_low, p_high = ranges[CalibrationMethod.percentile][name]
        assert max(abs(p_low), abs(p_high)) <= max(abs(low), abs(high)) * (1 + 1e-6), name
        clipped += max(abs(p_low), abs(p_high)) < 0.9 * max(abs(low), abs(high))
    assert clipped, "the 99th percentile must cut some tensor's outliers"
    out = tmp_path / "percentile.onnx"
    quantize_qdq(source, out, ranges[CalibrationMethod.percentile], QuantFormat.trt_s8s8, per_channel=True, method=CalibrationMethod.percentile)
    logits = load_onnx_runner(out, level="basic").run(dataset.load(range(32)))["logits"]
    reference = load_onnx_runner(source).run(dataset.load(range(32)))["logits"]
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.9


def test_skipping_folded_pre_activations_gives_the_same_qdq_model(workspace, digits_model, tmp_path):
    """The ranges calibration skips (Conv output -> Relu) are ones ORT's quantizer never reads."""
    source = model_paths(workspace, "digits_cnn").simplified
    folded = folded_activation_inputs(onnx.load(str(source)), ["Conv", "Relu"])
    assert folded, "the digits CNN has Conv -> Relu pairs"
    assert not folded_activation_inputs(onnx.load(str(source)), ["Conv"]), "an unquantized Relu is not folded"
    dataset = load_dataset("digits", digits_model.dataset)
    models = []
    for skip in (True, False):
        chunks = (feeds for _, feeds in dataset.batches(range(64), 16))
        ranges = collect_ranges(source, chunks, workspace.calibration, symmetric=False, skip_folded=skip)
        out = tmp_path / f"skip_{skip}.onnx"
        quantize_qdq(source, out, ranges, QuantFormat.ort_u8s8, per_channel=True, method=CalibrationMethod.minmax)
        models.append(out.read_bytes())
    assert models[0] == models[1]


def test_tensorrt_calibration_cache_is_the_native_format():
    text = trt_calibration_cache({"input": (-1.27, 1.0), "conv_out": (0.0, 2.54)}, CalibrationMethod.entropy, "10.3.0")
    lines = text.splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    name, value = lines[2].split(": ")
    assert name == "input" and struct.unpack(">f", bytes.fromhex(value))[0] == pytest.approx(0.01)
    assert trt_calibration_cache({}, CalibrationMethod.minmax, "10.14.1").splitlines()[0] == "TRT-101401-MinMaxCalibration"


@pytest.mark.parametrize("target, header", [("jetson_orin", "TRT-100300-MinMaxCalibration"), ("h100", None), ("cpu", None)])
def test_calibration_cache_is_written_for_tensorrt_10_targets_with_their_version(workspace, digits_model, tmp_path, target, header):
    """TensorRT compares the header's version with its own: the cache carries the target's release,
    and TensorRT 11 targets (no calibrators) and ONNX Runtime get none."""
    cfg = compose_config(tmp_path, "model=[digits_cnn]", "dataset=[digits]", f"target=[{target}]", "precision=[int8]")
    simplified = model_paths(cfg, "digits_cnn").simplified
    simplified.parent.mkdir(parents=True)
    shutil.copy(model_paths(workspace, "digits_cnn").simplified, simplified)
    ctx = resolve_build(cfg, f"digits_cnn-{target}-int8")
    steps.calibrate(ctx)
    cache = build_paths(cfg, ctx.name).calibrated_dir / "calibration.cache"
    if header is None:
        assert not cache.exists()
    else:
        lines = cache.read_text().splitlines()
        assert lines[0] == header and len(lines) > 5 and all(": " in line for line in lines[1:])


def test_calibrate_stage_writes_manifest_qdq_model_and_cache(workspace, digits_int8):
    paths = build_paths(workspace, digits_int8.name)
    manifest = read_json(paths.manifest)
    assert manifest["num_samples"] == 500 == len({s["id"] for s in manifest["samples"]})
    report = read_json(paths.calibrated_dir / "report.json")
    assert report["qdq"]["quantize_linear"] > 0 and report["num_samples"] == 500
    assert not [key for key in report if key.endswith("_seconds")], "durations belong in the metrics file"
    assert {"statistics_seconds", "quantize_seconds"} <= set(read_json(paths.calibrate_metrics))
    validation_ids = {f"digits/{i}" for i in make_splits(load_dataset("digits", digits_int8.dataset), digits_int8.dataset).validation}
    assert not validation_ids & {s["id"] for s in manifest["samples"]}


def test_recalibrating_gives_the_same_bytes(workspace, digits_int8, tmp_path):
    """Unchanged inputs, unchanged artifact: DVC then skips the build after a calibrate rerun."""
    cfg = private_copy(workspace, tmp_path, "models/digits_cnn", f"builds/{digits_int8.name}")
    folder = build_paths(cfg, digits_int8.name).calibrated_dir
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    steps.calibrate(resolve_build(cfg, digits_int8.name))
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before


def test_too_few_calibration_samples_fails_without_leaving_artifacts(workspace, digits_model, tmp_path):
    import dataclasses

    ctx = resolve_build(workspace, "digits_cnn-cpu-int8")
    cfg = dataclasses.replace(workspace, artifacts_dir=str(tmp_path / "a"), calibration=dataclasses.replace(workspace.calibration, num_samples=5000))
    (tmp_path / "a" / "models" / "digits_cnn").mkdir(parents=True)

    shutil.copy(model_paths(workspace, "digits_cnn").simplified, tmp_path / "a" / "models" / "digits_cnn" / "simplified.onnx")
    with pytest.raises(PipelineError, match="calibration.num_samples=5000"):
        steps.calibrate(dataclasses.replace(ctx, config=cfg))
    builds = tmp_path / "a" / "builds" / "digits_cnn-cpu-int8"
    assert not builds.exists() or not any(builds.iterdir())


def _two_layer_mlp(path, rng) -> None:
    """x -> MatMul(W1) -> Relu -> MatMul(W2) and MatMul(W3) on the same activation (two readers, one Mul)."""
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
               for name, shape in (("w1", (16, 32)), ("w2", (32, 8)), ("w3", (32, 4)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"), helper.make_node("MatMul", ["r", "w3"], ["z"], name="fc3")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", None]) for n in ("y", "z")], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_smoothquant_keeps_the_float_function_and_flattens_outlier_channels(tmp_path):
    import onnxruntime as ort

    from pipeline.onnx_tools.smoothing import channel_maxima, smooth_matmuls

    rng = np.random.default_rng(0)
    _two_layer_mlp(tmp_path / "mlp.onnx", rng)
    outliers = np.ones(16, np.float32)
    outliers[[3, 11]] = 40.0  # two channels 40x the rest, as transformer activations carry
    batches = [{"x": (rng.normal(size=(8, 16)) * outliers).astype(np.float32)} for _ in range(4)]
    report = smooth_matmuls(tmp_path / "mlp.onnx", tmp_path / "smoothed.onnx", 0.7, batches, tmp_path)
    assert report["smoothed_matmuls"] == 3 and report["max_channel_ratio"] > 10
    smoothed = onnx.load(str(tmp_path / "smoothed.onnx"))
    muls = [node for node in smoothed.graph.node if node.op_type == "Mul"]
    assert len(muls) == 2, "one Mul per activation tensor, shared by the MatMuls that read it"
    onnx.checker.check_model(smoothed)
    probe = batches[0]
    before = ort.InferenceSession(str(tmp_path / "mlp.onnx")).run(None, probe)
    after = ort.InferenceSession(str(tmp_path / "smoothed.onnx")).run(None, probe)
    for want, got in zip(before, after):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    only_outliers = smooth_matmuls(tmp_path / "mlp.onnx", tmp_path / "some.onnx", 0.7, batches, tmp_path, min_channel_ratio=10)
    assert only_outliers["smoothed_matmuls"] == 1, "the Relu output has no outlier channels: its readers are left alone"
    spread = lambda m: float(m.max() / np.median(m))
    raw = channel_maxima(tmp_path / "mlp.onnx", ["x"], batches, tmp_path)["x"]
    flat = channel_maxima(tmp_path / "smoothed.onnx", [muls[0].output[0] if muls[0].input[0] == "x" else muls[1].output[0]], batches, tmp_path)
    assert spread(next(iter(flat.values()))) < spread(raw) / 4, "the multiplied activation has far smaller outliers"


def test_smoothquant_refuses_what_it_cannot_smooth(tmp_path):
    from onnx import TensorProto, helper

    from pipeline.onnx_tools.smoothing import smooth_matmuls

    _two_layer_mlp(tmp_path / "mlp.onnx", np.random.default_rng(0))
    with pytest.raises(PipelineError, match="strictly between 0 and 1"):
        smooth_matmuls(tmp_path / "mlp.onnx", tmp_path / "out.onnx", 1.0, [], tmp_path)
    with pytest.raises(PipelineError, match="needs calibration samples"):
        smooth_matmuls(tmp_path / "mlp.onnx", tmp_path / "out.onnx", 0.5, [], tmp_path)
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 4]) for n in ("a", "b")]
    no_weights = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "scores", inputs,
                                   [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4, 4])])
    onnx.save(helper.make_model(no_weights, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "scores.onnx"))
    with pytest.raises(PipelineError, match="no MatMul with a constant 2-D weight to smooth; set it to null"):
        smooth_matmuls(tmp_path / "scores.onnx", tmp_path / "out.onnx", 0.5, [{"a": np.eye(4, dtype=np.float32)}], tmp_path)
    assert not (tmp_path / "out.onnx").exists()
