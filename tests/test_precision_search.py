"""Accuracy-aware precision: a missed gate makes calibrate keep the worst layers in float."""
from __future__ import annotations

import dataclasses

import onnx
import pytest

from pipeline import steps
from pipeline.backends.onnxruntime_backend import load_onnx_runner
from pipeline.config import resolve_build
from pipeline.config.schema import Gates
from pipeline.data import load_dataset
from pipeline.errors import PipelineError
from pipeline.io import read_json
from pipeline.onnx_tools.sensitivity import leave_one_out
from pipeline.paths import build_paths, model_paths


def _tight(ctx, gates: Gates, budget: int):
    search = dataclasses.replace(ctx.config.calibration.search, enabled=True, max_excluded=budget)
    config = dataclasses.replace(ctx.config, calibration=dataclasses.replace(ctx.config.calibration, search=search))
    model = dataclasses.replace(ctx.model, gates=gates)
    return dataclasses.replace(ctx, config=config, model=model)


def test_search_brings_a_tight_gate_within_by_keeping_layers_in_float(workspace, digits_model):
    ctx = resolve_build(workspace, "digits_cnn-cpu-int8")
    report = steps.calibrate(_tight(ctx, Gates(min_top1_agreement=1.0), budget=4))
    calibrated = build_paths(workspace, ctx.name).calibrated_dir
    search = read_json(calibrated / "search.json")
    first, last = search["steps"][0], search["steps"][-1]
    assert first["excluded"] == [] and first["gate_failures"], "plain int8 should miss the tight gate"
    assert not last["gate_failures"] and last["metrics"]["top1_agreement"] == 1.0
    assert report["excluded_nodes"] == last["excluded"] == read_json(calibrated / "exclusions.json")
    assert 1 <= len(report["excluded_nodes"]) <= 4
    kept = {n.name for n in onnx.load(str(calibrated / "model.onnx")).graph.node}
    assert set(report["excluded_nodes"]) <= kept  # excluded nodes still exist, now reading float inputs
    assert search["ranking"] and search["ranking"][0]["gain"] >= search["ranking"][-1]["gain"]


def test_search_out_of_budget_fails_with_its_steps(workspace, digits_model):
    ctx = resolve_build(workspace, "digits_cnn-cpu-int8")
    with pytest.raises(PipelineError, match=r"spent its budget of 1 float layers and still misses: cosine_mean = .* limit >= 0.9999999"):
        steps.calibrate(_tight(ctx, Gates(min_cosine=0.9999999), budget=1))
    steps.calibrate(ctx)  # restore the shared artifact for other tests


def test_leave_one_out_ranks_every_quantized_layer(workspace, digits_int8):
    dataset = load_dataset("digits", digits_int8.dataset)
    feeds = [dataset.load(range(64))]
    ranking = leave_one_out(model_paths(workspace, "digits_cnn").simplified, build_paths(workspace, digits_int8.name).calibrated, feeds, "logits")
    ops = {r["op"] for r in ranking}
    assert {"Conv", "Gemm"} <= ops
    assert all(r["cosine_if_float"] <= 1.0 + 1e-6 for r in ranking)
    assert ranking == sorted(ranking, key=lambda r: (-r["gain"], r["node"]))
    runner = load_onnx_runner(build_paths(workspace, digits_int8.name).calibrated)
    assert runner.run(feeds[0])["logits"].shape == (64, 10)
