"""CPU targets by instruction set: host detection, the command that names this host's target, the
ISA recorded in sidecars and metrics (with a warning on a host that lacks it), full 8-bit weights on
VNNI/AMX targets, and the gate that fails an INT8 build slower than its FP32 model. Every assertion
holds on any x86-64 CPU: what the host has is read from /proc/cpuinfo, not assumed."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pipeline import steps
from pipeline.evaluate.host import ISA_FLAGS, HostCpu, host_cpu
from pipeline.config import resolve_build
from pipeline.errors import PipelineError
from pipeline.files import read_json
from pipeline.paths import build_paths

from .conftest import REPO, compose_config, copy_prepared

CPU_FLAGS = set(next(line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")))


def test_isa_levels_follow_the_cpu_flags():
    avx2_only = HostCpu("old", 2, ("avx2",))
    assert avx2_only.supports("avx2") and avx2_only.supports("x86_64") and avx2_only.supports(None)
    assert not avx2_only.supports("vnni") and not avx2_only.supports("amx") and avx2_only.best_isa == "avx2"
    assert HostCpu("client", 8, ("avx2", "avx_vnni")).best_isa == "vnni", "AVX-VNNI counts as VNNI"
    assert HostCpu("sapphire rapids", 16, ("avx2", "avx512f", "avx512_vnni", "amx_int8")).best_isa == "amx"
    here = host_cpu()
    assert set(here.flags) <= CPU_FLAGS and here.cores >= 1
    assert here.supports(here.best_isa) and all(flag in CPU_FLAGS for flag in here.flags)


def test_the_cpu_target_command_names_the_most_specific_target_this_host_runs():
    done = subprocess.run([sys.executable, "-m", "pipeline", "cpu-target"], cwd=REPO, capture_output=True, text=True, check=True)
    out = done.stdout + done.stderr  # the project's console writes to stderr
    best = next(isa for isa, flags in ISA_FLAGS.items() if not flags or any(f in CPU_FLAGS for f in flags))
    expected = {"amx": "cpu_amx", "vnni": "cpu_vnni", "avx2": "cpu_avx2", "x86_64": "cpu"}[best]
    assert f"make params OVERRIDES='target=[{expected}]'" in out, out
    listed = out.split("most specific first: ")[1].splitlines()[0]
    assert listed.endswith("cpu (x86_64)"), "the portable default runs everywhere"


@pytest.fixture(scope="module")
def amx_and_cpu(workspace, digits_model, tmp_path_factory):
    """The digits CNN at INT8 for the portable `cpu` target and for `cpu_amx`: calibrated, built, validated."""
    root = tmp_path_factory.mktemp("isa")
    # ONNX Runtime pinned: this is about weights and ISA records (the runtime choice: tests/test_openvino.py).
    cfg = compose_config(root, "model=[digits_cnn]", "dataset=[digits]", "target=[cpu,cpu_amx]", "precision=[int8]", "benchmark=quick",
                         "target.cpu_amx.runtimes=[onnxruntime]")
    copy_prepared(workspace, cfg, "digits_cnn")
    for name in ("digits_cnn-cpu-int8", "digits_cnn-cpu_amx-int8"):
        ctx = resolve_build(cfg, name)
        for step in (steps.calibrate, steps.build, steps.validate):
            step(ctx)
    return cfg


def _largest_int8_weight(path: Path) -> int:
    model = onnx.load(str(path))
    return max(int(np.abs(numpy_helper.to_array(i).astype(np.int32)).max()) for i in model.graph.initializer
               if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2)


def test_vnni_and_amx_targets_use_full_8_bit_weights_and_record_their_isa(amx_and_cpu, capfd):
    cfg = amx_and_cpu
    assert _largest_int8_weight(build_paths(cfg, "digits_cnn-cpu-int8").calibrated) <= 64, "7-bit weights where VNNI may be missing"
    assert _largest_int8_weight(build_paths(cfg, "digits_cnn-cpu_amx-int8").calibrated) == 127
    assert read_json(build_paths(cfg, "digits_cnn-cpu_amx-int8").engine_dir / "sidecar.json")["cpu_isa"] == "amx"
    host = read_json(build_paths(cfg, "digits_cnn-cpu_amx-int8").validate_metrics)["host"]
    assert host["target_isa"] == "amx" and host["target_isa_on_host"] == ("amx_int8" in CPU_FLAGS)
    assert read_json(build_paths(cfg, "digits_cnn-cpu-int8").validate_metrics)["host"]["target_isa_on_host"] is True
    amx = resolve_build(cfg, "digits_cnn-cpu_amx-int8")
    steps.benchmark(dataclasses.replace(amx, config=dataclasses.replace(cfg, benchmark=dataclasses.replace(cfg.benchmark, min_quantized_speedup=None))))
    captured = capfd.readouterr()
    said = captured.out + captured.err
    assert ("is built for amx; this host" in said) == ("amx_int8" not in CPU_FLAGS), "a host without the ISA says so"


def test_an_int8_build_slower_than_its_fp32_model_fails_its_benchmark_gate_with_both_numbers(amx_and_cpu):
    cfg = amx_and_cpu
    ctx = resolve_build(cfg, "digits_cnn-cpu-int8")

    def limited(limit: float):  # the gate's limit is set both ways, so nothing here depends on this machine's speed
        return dataclasses.replace(ctx, config=dataclasses.replace(cfg, benchmark=dataclasses.replace(cfg.benchmark, min_quantized_speedup=limit)))

    steps.benchmark(limited(0.001))
    guard = read_json(build_paths(cfg, ctx.name).benchmark_metrics)["vs_fp32"]
    assert guard["batch_size"] == max(cfg.benchmark.batch_sizes) and guard["fp32_ms"] > 0 and guard["precision_ms"] > 0
    assert guard["speedup"] == pytest.approx(guard["fp32_ms"] / guard["precision_ms"]) and guard["passed"]
    with pytest.raises(PipelineError, match=r"benchmark gate failed for digits_cnn-cpu-int8: int8 takes [\d.]+ ms at batch \d+, FP32 [\d.]+ ms: "
                                            r"[\d.]+x, limit >= benchmark.min_quantized_speedup=1000x"):
        steps.benchmark(limited(1000.0))
    assert read_json(build_paths(cfg, ctx.name).benchmark_metrics)["vs_fp32"]["passed"] is False, "metrics first, then the gate"
    # Waived for this build: measured and marked, in the metrics and the report, not failed.
    waived = limited(1000.0)
    waived = dataclasses.replace(waived, config=dataclasses.replace(waived.config, benchmark=dataclasses.replace(
        waived.config.benchmark, speed_gate_waived=[ctx.name])))
    steps.benchmark(waived)
    guard = read_json(build_paths(cfg, ctx.name).benchmark_metrics)["vs_fp32"]
    assert guard["passed"] and guard["waived"] and guard["speedup"] < 1000
    from pipeline.report.summary import collect, render_markdown

    assert "speed gate waived at" in render_markdown([r for r in collect(cfg) if r["build"] == ctx.name])


def test_a_model_too_small_to_time_is_not_judged_by_the_speed_gate(tmp_path):
    """A 64 x 10 Gemm runs in microseconds, all of it call overhead: the INT8-vs-FP32 gate says it cannot
    judge instead of failing on noise (a limit no machine meets shows it did not judge)."""
    from onnx import TensorProto, helper

    from pipeline.steps.benchmark_step import JUDGEABLE_MS
    from pipeline.steps.chain import prepare_model

    weights = numpy_helper.from_array(np.random.default_rng(0).normal(size=(10, 64)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("Reshape", ["input", "flat"], ["x"]), helper.make_node("Gemm", ["x", "W"], ["logits"], transB=1)],
                              "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
                              [numpy_helper.from_array(np.array([-1, 64], np.int64), "flat"), weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "tiny.onnx"))
    cfg = compose_config(tmp_path, "model=[onnx_file]", "dataset=[digits]", f"model.onnx_file.weights_path={tmp_path / 'tiny.onnx'}",
                         "precision=[int8]", "benchmark=quick", "benchmark.batch_sizes=[1]", "benchmark.min_quantized_speedup=1000",
                         "model.onnx_file.gates.max_accuracy_drop=null", "model.onnx_file.gates.min_top1_agreement=null",
                         "calibration.search.enabled=false")
    prepare_model(cfg, "onnx_file")
    ctx = resolve_build(cfg, "onnx_file-cpu-int8")
    steps.calibrate(ctx)
    steps.build(ctx)
    steps.benchmark(ctx)
    guard = read_json(build_paths(cfg, ctx.name).benchmark_metrics)["vs_fp32"]
    assert max(guard["fp32_ms"], guard["precision_ms"]) < JUDGEABLE_MS
    assert guard["passed"] and guard["judged"] is False and "too small to judge" in guard["note"]
