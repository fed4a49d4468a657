"""The openvino backend for real: OpenVINO compiles the calibrated Q/DQ digits CNN, the steps validate and
benchmark it like any build, its IR has the same bytes build after build, and a tampered file is refused."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline import steps
from pipeline.backends import get_backend
from pipeline.backends.onnxruntime_backend import load_onnx_runner
from pipeline.config import resolve_build
from pipeline.errors import PipelineError
from pipeline.evaluate.host import host_cpu
from pipeline.io import read_json
from pipeline.paths import build_paths, model_paths

from .conftest import REPO, compose_config

BUILD = "digits_cnn-cpu_amx_openvino-int8"


@pytest.fixture(scope="module")
def openvino_build(workspace, digits_model, tmp_path_factory):
    """The workspace's digits CNN (prepared once for the session), calibrated and built for cpu_amx_openvino
    in a project of its own."""
    import shutil

    root = tmp_path_factory.mktemp("openvino")
    # Without VNNI, u8s8 INT8 kernels multiply in 16 bits and can saturate full 8-bit weights (the `cpu`
    # target's 7-bit weights): on such a host the build takes 7-bit weights, so its gates mean the same.
    weights = [] if host_cpu().supports("vnni") else ["target.cpu_amx_openvino.quantization.reduce_range=true"]
    cfg = compose_config(root, "model=[digits_cnn]", "dataset=[digits]", "benchmark=quick", "target=[cpu_amx_openvino]", *weights,
                         f"artifacts_dir={root / 'a'}", f"metrics_dir={root / 'm'}", f"plots_dir={root / 'p'}")
    shutil.copytree(model_paths(workspace, "digits_cnn").root, model_paths(cfg, "digits_cnn").root)
    ctx = resolve_build(cfg, BUILD)
    steps.calibrate(ctx)
    steps.build(ctx)
    return ctx


def test_openvino_runs_the_calibrated_model_like_onnx_runtime_and_passes_the_gates(openvino_build):
    ctx = openvino_build
    sidecar = read_json(build_paths(ctx.config, ctx.name).engine_dir / "sidecar.json")
    assert sidecar["backend"] == "openvino" and sidecar["artifact"] == "model.xml"
    # Left to itself OpenVINO computes FP32 layers in BF16 on AMX: the build pins f32.
    assert sidecar["properties"]["INFERENCE_PRECISION_HINT"] == "f32"
    metrics = steps.validate(ctx)
    assert metrics["top1_agreement"] >= ctx.model.gates.min_top1_agreement
    from pipeline.data import load_dataset, make_splits

    dataset = load_dataset("digits", ctx.dataset, ctx.model.inputs)
    feeds = dataset.load(make_splits(dataset, ctx.dataset).validation[:64])
    calibrated = build_paths(ctx.config, ctx.name).calibrated_dir / "model.onnx"
    with get_backend("openvino").load(build_paths(ctx.config, ctx.name).engine_dir) as openvino:
        ours, theirs = openvino.run(feeds)["logits"], load_onnx_runner(calibrated).run(feeds)["logits"]
    if host_cpu().supports("vnni"):  # without VNNI, ONNX Runtime's u8s8 kernels saturate 8-bit weights (README)
        # The same Q/DQ file in two runtimes: the same answers (their INT8 kernels round slightly differently).
        assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.98
        cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
        assert cosine.min() > 0.99
    rows = steps.benchmark(ctx)
    assert rows and all(row["p50_ms"] > 0 for row in rows)


def test_openvino_artifacts_are_deterministic_and_checked_on_load(openvino_build, tmp_path):
    """The build stage twice, each in its own process as DVC runs it (OpenVINO numbers unnamed constants
    with a counter per process): the same bytes. A changed weights file is refused at load."""
    import subprocess
    import sys

    ctx = openvino_build
    engine = build_paths(ctx.config, ctx.name).engine_dir
    contents = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "stages.build", "--build", BUILD, "--params", str(Path(ctx.config.artifacts_dir).parent / "params.yaml")],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        contents.append({p.name: p.read_bytes() for p in engine.iterdir()})
    assert contents[0] == contents[1], "same inputs, same bytes"
    import shutil

    copy = tmp_path / "engine"
    shutil.copytree(engine, copy)
    weights = copy / "model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(PipelineError, match=r"model.bin is missing or not the file that was built"):
        get_backend("openvino").load(copy)


def test_openvino_refuses_gpu_targets_and_precisions_it_does_not_build(tmp_path):
    with pytest.raises(PipelineError, match=r"the openvino backend builds \['fp32', 'int8'\]"):
        compose_config(tmp_path, "model=[digits_cnn]", "dataset=[digits]", "target=[cpu_amx_openvino]", "target.cpu_amx_openvino.precisions=[fp32,fp16]")
    with pytest.raises(PipelineError, match=r"the openvino backend builds for the CPU"):
        compose_config(tmp_path, "model=[digits_cnn]", "dataset=[digits]", "target=[h200_ort]", "target.h200_ort.backend=openvino")


def test_openvino_builds_are_packaged_in_tritons_openvino_form(openvino_build):
    """The native package is Triton's openvino backend: the IR and the build's properties, parsed back
    through Triton's protobuf; the Python form vendors the OpenVINO runner."""
    from pipeline.serving.repository import read_config

    ctx = openvino_build
    written = steps.package(ctx)
    native = read_config(Path(written["native"]))
    assert native.backend == "openvino" and native.max_batch_size == 32
    assert native.parameters["INFERENCE_PRECISION_HINT"].string_value == "f32"
    assert native.parameters["PERFORMANCE_HINT"].string_value == "LATENCY"
    engine, version = build_paths(ctx.config, ctx.name).engine_dir, Path(written["native"]).parent / "1"
    for name in ("model.xml", "model.bin"):
        assert (version / name).read_bytes() == (engine / name).read_bytes()
    assert (Path(written["python"]).parent / "1" / "pipeline" / "backends" / "openvino_backend.py").is_file()
