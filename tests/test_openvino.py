"""The openvino backend for real: OpenVINO compiles the calibrated Q/DQ digits CNN, the steps validate and
benchmark it like any build, its IR has the same bytes build after build, and a tampered file is refused.
Then the runtime choice: cpu_amx builds both runtimes, gates and times them, and keeps the faster one."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import steps
from pipeline.backends import get_backend
from pipeline.backends.onnxruntime_backend import load_onnx_runner
from pipeline.config import resolve_build
from pipeline.errors import PipelineError
from pipeline.evaluate.host import host_cpu
from pipeline.files import read_json
from pipeline.paths import build_paths, model_paths
from pipeline.steps.chain import build_through

from .conftest import REPO, compose_config, copy_prepared

BUILD = "digits_cnn-cpu_amx-int8"


def amx_project(workspace, root: Path, *overrides: str):
    """A project of its own for cpu_amx, holding the workspace's digits CNN (prepared once for the session)."""
    import shutil

    # Without VNNI, u8s8 INT8 kernels multiply in 16 bits and can saturate full 8-bit weights (the `cpu`
    # target's 7-bit weights): on such a host the build takes 7-bit weights, so its gates mean the same.
    weights = [] if host_cpu().supports("vnni") else ["target.cpu_amx.quantization.reduce_range=true"]
    cfg = compose_config(root, "model=[digits_cnn]", "dataset=[digits]", "benchmark=quick", "target=[cpu_amx]", *weights, *overrides,
                         "target.cpu_amx.quantization.min_layer_speedup=null")
    copy_prepared(workspace, cfg, "digits_cnn")
    return cfg


@pytest.fixture(scope="module")
def openvino_build(workspace, digits_model, tmp_path_factory):
    """cpu_amx with OpenVINO pinned (a one-entry runtimes list): calibrated and built."""
    cfg = amx_project(workspace, tmp_path_factory.mktemp("openvino"), "target.cpu_amx.runtimes=[openvino]")
    return build_through(cfg, BUILD, "build")


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
    if host_cpu().supports("vnni"):  # without VNNI, ONNX Runtime's u8s8 kernels saturate 8-bit weights (docs/cpu_targets.md)
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


def test_runtimes_refuse_devices_and_precisions_they_do_not_build(tmp_path):
    with pytest.raises(PipelineError, match=r"cannot run precision bf16: none of its runtimes \['onnxruntime'\] builds bf16 here \(onnxruntime: \['fp32', 'int8'\]\)"):
        compose_config(tmp_path, "model=[digits_cnn]", "dataset=[digits]", "target=[cpu_amx]", "precision=[bf16]",
                       "target.cpu_amx.runtimes=[onnxruntime]")
    with pytest.raises(PipelineError, match=r"bf16 on CPU targets with cpu_isa amx only"):
        compose_config(tmp_path, "model=[digits_cnn]", "dataset=[digits]", "target=[cpu_vnni]", "target.cpu_vnni.precisions=[bf16]")
    with pytest.raises(PipelineError, match=r"target.h200_ort.runtimes = \['openvino'\]: runtimes that build for cuda"):
        compose_config(tmp_path, "model=[digits_cnn]", "dataset=[digits]", "target=[h200_ort]", "target.h200_ort.runtimes=[openvino]")


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


@pytest.fixture(scope="module")
def chosen_builds(workspace, digits_model, tmp_path_factory):
    """cpu_amx as configured (OpenVINO and ONNX Runtime measured) at int8 and bf16, through build."""
    cfg = amx_project(workspace, tmp_path_factory.mktemp("choice"), "precision=[int8,bf16]")
    contexts = {}
    for precision in ("int8", "bf16"):
        ctx = contexts[precision] = resolve_build(cfg, f"digits_cnn-cpu_amx-{precision}")
        steps.calibrate(ctx)
        steps.build(ctx)
    return contexts


def test_cpu_amx_builds_both_runtimes_times_them_and_keeps_the_faster(chosen_builds):
    from pipeline.evaluate.runtime_choice import Candidate, choose

    ctx = chosen_builds["int8"]
    paths = build_paths(ctx.config, ctx.name)
    metrics, sidecar = read_json(paths.build_metrics), read_json(paths.engine_dir / "sidecar.json")
    candidates = {c["runtime"]: c for c in metrics["candidates"]}
    assert list(candidates) == ["openvino", "onnxruntime"]
    assert all(c["passed"] and set(c["ms"]) == {"batch_1", "batch_32"} and c["gate_metrics"]["top1_agreement"] >= 0.99
               for c in candidates.values())
    # The choice follows the recorded times by the target's rule, and the artifact is that runtime's.
    again = [Candidate(r, runner=object(), ms={int(k.split("_")[1]): v for k, v in c["ms"].items()}) for r, c in candidates.items()]
    assert choose(again, ctx.target.selection)[0].runtime == metrics["runtime"] == sidecar["backend"]
    assert sidecar["runtime_selection"]["candidates"] == ["openvino", "onnxruntime"]
    assert "ms" not in json.dumps(sidecar["runtime_selection"]), "timings vary run to run: metrics only"
    # Downstream stages load whichever runtime was chosen.
    assert steps.validate(ctx)["gates_passed"]
    assert steps.benchmark(ctx)[0]["p50_ms"] > 0


def test_bf16_is_openvinos_inference_precision_on_the_fp32_model(chosen_builds):
    ctx = chosen_builds["bf16"]
    paths = build_paths(ctx.config, ctx.name)
    sidecar = read_json(paths.engine_dir / "sidecar.json")
    # ONNX Runtime has no CPU bf16 path: the only candidate is OpenVINO, computing bf16 from the FP32 model.
    assert sidecar["backend"] == "openvino" and sidecar["properties"]["INFERENCE_PRECISION_HINT"] == "bf16"
    assert read_json(paths.build_metrics)["runtime"] == "openvino"
    assert paths.calibrated.read_bytes() == model_paths(ctx.config, "digits_cnn").simplified.read_bytes()
    assert steps.validate(ctx)["gates_passed"]


def test_the_choice_prefers_the_listed_order_within_min_gain_and_skips_failed_candidates():
    from pipeline.config.schema import RuntimeSelection
    from pipeline.evaluate.runtime_choice import Candidate, choose

    rule = RuntimeSelection(min_gain=1.10)
    first, second = Candidate("openvino", runner=object(), ms={1: 1.0, 32: 10.0}), Candidate("onnxruntime", runner=object(), ms={1: 0.95, 32: 9.5})
    chosen, why = choose([first, second], rule)
    assert chosen is first and "within min_gain 1.1" in why
    second.ms = {1: 0.5, 32: 5.0}
    assert choose([first, second], rule)[0] is second
    second.gate_failures = ["top1_agreement = 0.5000, limit >= 0.99"]
    chosen, why = choose([first, second], rule)
    assert chosen is first and "onnxruntime missed the gates" in why
    broken = Candidate("openvino", error="OpenVINO cannot build x.onnx: unsupported op")
    chosen, why = choose([broken, second], rule)
    assert chosen is None and "unsupported op" in why and "top1_agreement" in why
