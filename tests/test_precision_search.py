"""Accuracy-aware precision: a missed gate makes calibrate keep the worst layers in float.

Whether plain INT8 misses a gate must not depend on the CPU's kernels (AVX2, VNNI and AMX give
different INT8 numerics), so the tests make one layer sensitive on purpose: the last Conv's channel 0
is scaled up 1000x and the Gemm's matching weights down 1000x. The FP32 function is unchanged, but
the Gemm's per-tensor INT8 input scale is then set by that one channel and every other feature
rounds to zero: any INT8 kernel on any CPU loses the model, and keeping the Gemm in float restores it.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pipeline import steps
from pipeline.backends.onnxruntime_backend import load_onnx_runner
from pipeline.config import resolve_build
from pipeline.config.schema import Gates
from pipeline.data import load_dataset
from pipeline.errors import PipelineError
from pipeline.files import read_json
from pipeline.evaluate.sensitivity import leave_one_out
from pipeline.paths import build_paths, model_paths

OUTLIER = 1000.0


def _make_gemm_sensitive(model: onnx.ModelProto) -> str:
    """Scale the last Conv's output channel 0 by OUTLIER and undo it in the Gemm; return the Gemm's name."""
    inits = {i.name: i for i in model.graph.initializer}
    conv = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    (gemm,) = [n for n in model.graph.node if n.op_type == "Gemm"]

    def rescale(name: str, index, factor: float) -> None:
        array = numpy_helper.to_array(inits[name]).copy()
        array[index] *= factor
        inits[name].CopyFrom(numpy_helper.from_array(array, name))

    rescale(conv.input[1], 0, OUTLIER)  # weights of output channel 0 (Relu commutes with the scale)
    rescale(conv.input[2], 0, OUTLIER)  # its bias
    rescale(gemm.input[1], (slice(None), 0), 1.0 / OUTLIER)  # Gemm weight [classes, features], transB=1
    return gemm.name


@pytest.fixture()
def sensitive(workspace, digits_model, tmp_path):
    """A private artifacts folder holding the digits CNN with its Gemm made INT8-sensitive."""
    source = onnx.load(str(model_paths(workspace, "digits_cnn").simplified))
    gemm = _make_gemm_sensitive(source)
    cfg = dataclasses.replace(workspace, artifacts_dir=str(tmp_path / "artifacts"), metrics_dir=str(tmp_path / "metrics"))
    model_dir = model_paths(cfg, "digits_cnn").simplified
    model_dir.parent.mkdir(parents=True)
    onnx.save(source, str(model_dir))
    ctx = resolve_build(cfg, "digits_cnn-cpu-int8")
    # Only Conv/Gemm inputs quantized: the outlier tensor is quantized in one place, the Gemm's input.
    model = dataclasses.replace(ctx.model, quantize_op_types=["Conv", "Gemm"], quantize_outputs=False)
    return dataclasses.replace(ctx, config=cfg, model=model), gemm


def _with(ctx, gates: Gates, budget: int):
    search = dataclasses.replace(ctx.config.calibration.search, enabled=True, max_excluded=budget)
    config = dataclasses.replace(ctx.config, calibration=dataclasses.replace(ctx.config.calibration, search=search))
    return dataclasses.replace(ctx, config=config, model=dataclasses.replace(ctx.model, gates=gates))


def test_the_sensitive_model_is_the_same_function_in_fp32(workspace, sensitive):
    ctx, _ = sensitive
    feeds = load_dataset("digits", ctx.dataset).load(range(64))
    original = load_onnx_runner(model_paths(workspace, "digits_cnn").simplified).run(feeds)["logits"]
    changed = load_onnx_runner(model_paths(ctx.config, "digits_cnn").simplified).run(feeds)["logits"]
    np.testing.assert_allclose(changed, original, rtol=1e-3, atol=1e-3)


def test_search_keeps_the_sensitive_layer_in_float_and_meets_the_gate(sensitive):
    ctx, gemm = sensitive
    report = steps.calibrate(_with(ctx, Gates(min_top1_agreement=0.9), budget=4))
    calibrated = build_paths(ctx.config, ctx.name).calibrated_dir
    search = read_json(calibrated / "search.json")
    first, last = search["steps"][0], search["steps"][-1]
    assert first["excluded"] == [] and first["gate_failures"], "plain int8 must miss the gate: every feature but one rounds to 0"
    assert first["metrics"]["top1_agreement"] < 0.5
    assert not last["gate_failures"] and last["metrics"]["top1_agreement"] >= 0.9
    assert report["excluded_nodes"] == last["excluded"] == read_json(calibrated / "exclusions.json") == [gemm]
    model = onnx.load(str(calibrated / "model.onnx"))
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    (kept,) = [n for n in model.graph.node if n.name == gemm]
    assert producers.get(kept.input[0]) != "DequantizeLinear", "the excluded Gemm must read its float input"
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node), "the Convs stay quantized"


def test_search_out_of_budget_fails_with_its_steps_and_writes_nothing(sensitive):
    """A gate no quantized model can meet: cosine 1 - 1e-7 while three Convs stay INT8."""
    ctx, _ = sensitive
    with pytest.raises(PipelineError, match=r"spent its budget of 1 float layers and still misses \(gates with headroom 0.25, on 497 search samples\): cosine_mean = .* limit >= 0.9999999.*steps: 0 in float"):
        steps.calibrate(_with(ctx, Gates(min_cosine=0.9999999), budget=1))
    assert not build_paths(ctx.config, ctx.name).calibrated_dir.exists()


def test_leave_one_out_ranks_the_sensitive_layer_first(sensitive, workspace, digits_int8):
    ctx, gemm = sensitive
    search = dataclasses.replace(ctx.config.calibration.search, enabled=False)  # plain int8 of the sensitive model
    steps.calibrate(dataclasses.replace(ctx, config=dataclasses.replace(ctx.config, calibration=dataclasses.replace(ctx.config.calibration, search=search))))
    dataset = load_dataset("digits", ctx.dataset)
    feeds = [dataset.load(range(64))]
    ranking = leave_one_out(model_paths(ctx.config, "digits_cnn").simplified, build_paths(ctx.config, ctx.name).calibrated, feeds, "logits")
    assert {r["op"] for r in ranking} == {"Conv", "Gemm"} and len(ranking) == 4
    assert ranking[0]["node"] == gemm and ranking[0]["gain"] > 0.5 and ranking[0]["cosine_if_float"] > 0.99
    gains = [r["gain"] for r in ranking]
    assert all(a >= b for a, b in zip(gains, gains[1:])), "highest gain first"
    baselines = {round(r["cosine_if_float"] - r["gain"], 9) for r in ranking}
    assert len(baselines) == 1, "every gain is measured against the same all-INT8 baseline"
    # On the unmodified model no single layer is worth much: the ranking measures, it does not invent.
    plain = leave_one_out(model_paths(workspace, "digits_cnn").simplified, build_paths(workspace, digits_int8.name).calibrated, feeds, "logits")
    assert max(r["gain"] for r in plain) < 0.05



def test_the_search_checks_its_gates_on_its_own_split(sensitive):
    """Neither calibration nor validation samples choose the layers kept in float."""
    from pipeline.data import make_splits

    ctx, _ = sensitive
    steps.calibrate(_with(ctx, Gates(min_top1_agreement=0.9), budget=4))
    manifest = read_json(build_paths(ctx.config, ctx.name).manifest)
    calibration = {s["id"] for s in manifest["samples"]}
    search = {s["id"] for s in manifest["search"]["samples"]}
    validation = {f"digits/{i}" for i in make_splits(load_dataset("digits", ctx.dataset), ctx.dataset).validation}
    assert ctx.config.calibration.search.num_samples is None and len(search) == len(validation)  # null: the validation split's size
    assert not search & calibration and not search & validation and not calibration & validation
    steps.build(ctx)
    manifest["search"]["samples"].append({"id": sorted(validation)[0], "sha256": "0" * 64})
    from pipeline.files import write_json

    write_json(build_paths(ctx.config, ctx.name).manifest, manifest)
    with pytest.raises(PipelineError, match="1 validation samples were used for the accuracy search"):
        steps.validate(ctx)


def test_excluding_a_node_the_model_does_not_have_is_one_clear_error(sensitive):
    ctx, _ = sensitive
    config = dataclasses.replace(ctx.config, calibration=dataclasses.replace(ctx.config.calibration, exclude_nodes=["/nope/Conv"]))
    with pytest.raises(PipelineError, match=r"calibration.exclude_nodes names \['/nope/Conv'\], which .*simplified.onnx does not have; its nodes include \["):
        steps.calibrate(dataclasses.replace(ctx, config=config))
    assert not build_paths(ctx.config, ctx.name).calibrated_dir.exists()
