"""Shared fixtures: real Hydra composition, real data, real digits model artifacts (built once)."""
from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path

import onnx
import pytest

from pipeline import steps
from pipeline.config import load_params, resolve_build, resolve_model, write_params
from pipeline.models import build_torch_model, load_checkpoint
from pipeline.paths import model_paths

REPO = Path(__file__).resolve().parents[1]


def private_copy(workspace, tmp_path: Path, *folders: str):
    """The workspace config with its own artifact/metric folders under ``tmp_path``, holding copies of
    ``folders`` (relative to artifacts_dir): a test that rewrites artifacts leaves the shared ones alone."""
    cfg = dataclasses.replace(workspace, artifacts_dir=str(tmp_path / "artifacts"), metrics_dir=str(tmp_path / "metrics"),
                              plots_dir=str(tmp_path / "plots"))
    for folder in folders:
        shutil.copytree(Path(workspace.artifacts_dir) / folder, Path(cfg.artifacts_dir) / folder)
    return cfg


def copy_prepared(source_cfg, cfg, model: str) -> None:
    """``model``'s prepared checkpoint, exported and simplified ONNX from ``source_cfg``'s artifacts into
    ``cfg``'s: a session fixture prepared them once, and a test's own config starts from there."""
    shutil.copytree(model_paths(source_cfg, model).root, model_paths(cfg, model).root)


# No test depends on this machine's speed: the INT8-vs-FP32 speed gate is off in test configs (a
# later override turns it back on); tests/test_cpu_targets.py sets its limit both ways.
NO_SPEED_GATE = "benchmark.min_quantized_speedup=null"


def compose_config(tmp_path: Path, *overrides: str):
    """Compose conf/ with overrides into ``tmp_path``/params.yaml and load it back, typed. What the test does
    not place itself goes under ``tmp_path`` (artifacts/, metrics/, plots/), never into the repository."""
    given = {override.split("=", 1)[0] for override in overrides}
    outputs = [f"{key}={tmp_path / key[: -len('_dir')]}" for key in ("artifacts_dir", "metrics_dir", "plots_dir") if key not in given]
    params = tmp_path / "params.yaml"
    write_params(params, [NO_SPEED_GATE, *outputs, *overrides])
    return load_params(params)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """A composed config whose artifacts live in a temp folder: digits CNN on the CPU, fp32 + int8."""
    root = tmp_path_factory.mktemp("workspace")
    return compose_config(
        root, "model=[digits_cnn]", "dataset=[digits]", "benchmark=quick",
        f"artifacts_dir={root / 'artifacts'}", f"metrics_dir={root / 'metrics'}", f"plots_dir={root / 'plots'}",
    )


@pytest.fixture(scope="session")
def digits_model(workspace):
    """prepare -> export -> simplify for the digits CNN, run once for the session."""
    ctx = resolve_model(workspace, "digits_cnn")
    steps.prepare(workspace, ctx)
    steps.export(workspace, ctx)
    steps.simplify(workspace, ctx)
    return ctx


@pytest.fixture(scope="session")
def resnet18_model(tmp_path_factory):
    """prepare -> export -> simplify for resnet18 (BatchNorm statistics re-estimated, about a minute on
    two cores), run once for the session; tests copy it with copy_prepared."""
    cfg = compose_config(tmp_path_factory.mktemp("resnet18"), "model=[resnet18]", "benchmark=quick")
    ctx = resolve_model(cfg, "resnet18")
    steps.prepare(cfg, ctx)
    steps.export(cfg, ctx)
    steps.simplify(cfg, ctx)
    return cfg


@pytest.fixture(scope="session")
def digits_int8(workspace, digits_model):
    ctx = resolve_build(workspace, "digits_cnn-cpu-int8")
    steps.calibrate(ctx)
    steps.build(ctx)
    return ctx


@pytest.fixture(scope="session")
def legacy_onnx(workspace, digits_model, tmp_path_factory):
    """The trained digits CNN as an old exporter writes it (opset 11, weights listed as inputs, batch 1),
    outside any project: a user's own file."""
    import torch

    model = build_torch_model(digits_model.model)
    model.load_state_dict(load_checkpoint(model_paths(workspace, "digits_cnn").checkpoint))
    path = tmp_path_factory.mktemp("byo") / "legacy.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, 1, 8, 8),), str(path), input_names=["input"], output_names=["logits"],
                          opset_version=11, do_constant_folding=False, keep_initializers_as_inputs=True, dynamo=False)
    legacy = onnx.load(str(path))
    assert legacy.opset_import[0].version == 11 and len(legacy.graph.input) > 1
    assert legacy.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    return path
