"""ONNX Runtime backend behind the build/load/run interface; validate metrics, gates, benchmark."""
from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline import steps
from pipeline.backends import Runner, get_backend
from pipeline.config import resolve_build
from pipeline.config.schema import BenchmarkConfig, Gates
from pipeline.errors import PipelineError
from pipeline.evaluate.benchmark import TimeBudget, sweep, timed_until
from pipeline.evaluate.validate import check_gates, compare_outputs
from pipeline.files import read_json, sha256_file
from pipeline.paths import build_paths, model_paths

from .conftest import private_copy


def test_ort_build_writes_optimized_model_and_sidecar(workspace, digits_int8):
    paths = build_paths(workspace, digits_int8.name)
    sidecar = read_json(paths.engine_dir / "sidecar.json")
    assert sidecar["backend"] == "onnxruntime" and sidecar["precision"] == "int8"
    assert sidecar["onnx_sha256"] == sha256_file(paths.calibrated)
    assert sidecar["artifact_sha256"] == sha256_file(paths.engine_dir / "model.onnx")
    assert sidecar["inputs"] == [{"name": "input", "shape": [-1, 1, 8, 8], "dtype": "float32"}]
    assert len(sidecar["config_hash"]) == 64
    import onnx

    ops = {n.op_type for n in onnx.load(str(paths.engine_dir / "model.onnx")).graph.node}
    assert "QLinearConv" in ops, "the u8s8 Q/DQ graph should fuse to integer convolutions offline"


def test_runner_rejects_wrong_input_shape(workspace, digits_int8):
    with get_backend("onnxruntime").load(build_paths(workspace, digits_int8.name).engine_dir) as runner:
        assert runner.run({"input": np.zeros((3, 1, 8, 8), np.float32)})["logits"].shape == (3, 10)
        with pytest.raises(PipelineError, match=r"input 'input' has shape \(2, 1, 16, 16\); the model expects \(-1, 1, 8, 8\)"):
            runner.run({"input": np.zeros((2, 1, 16, 16), np.float32)})
        with pytest.raises(PipelineError, match="missing input 'input'"):
            runner.run({"x": np.zeros((2, 1, 8, 8), np.float32)})


def test_a_runner_per_shape_keeps_one_runner_per_shape_up_to_its_limit_then_shares_one(workspace, digits_int8):
    """What a GPU server's runner does with its padded batches, on real CPU sessions: each shape gets a
    runner of its own, shapes past the limit share one, and every answer equals a plain runner's."""
    from pipeline.backends.base import RunnerPerShape

    engine = build_paths(workspace, digits_int8.name).engine_dir
    made = []

    def make():
        made.append(get_backend("onnxruntime").load(engine))
        return made[-1]

    feeds = {size: {"input": np.random.default_rng(size).standard_normal((size, 1, 8, 8)).astype(np.float32)} for size in (1, 4, 8, 2)}
    with get_backend("onnxruntime").load(engine) as plain, RunnerPerShape(make, max_shapes=2) as runner:
        assert runner.inputs == plain.inputs and runner.output_names == plain.output_names
        for size in (1, 4, 1, 8, 2, 4, 8):
            np.testing.assert_array_equal(runner.run(feeds[size])["logits"], plain.run(feeds[size])["logits"])
        assert runner.shapes == [(("input", (1, 1, 8, 8)),), (("input", (4, 1, 8, 8)),)]
        assert len(made) == 3 and runner.runner_for(feeds[8]) is runner.runner_for(feeds[2]) is made[2]
        assert runner.runner_for(feeds[1]) is made[0] and runner.last_runner is made[2]
        assert runner.last_timing == {}  # CPU runners time no GPU stages
        with pytest.raises(PipelineError, match="missing input 'input'"):
            runner.run({"x": feeds[1]["input"]})
    assert len(made) == 3


def test_loading_an_artifact_from_another_backend_or_version_is_refused(workspace, digits_int8, tmp_path):
    import json
    import shutil

    engine = tmp_path / "engine"
    shutil.copytree(build_paths(workspace, digits_int8.name).engine_dir, engine)
    sidecar = json.loads((engine / "sidecar.json").read_text())
    sidecar["versions"]["onnxruntime"] = "0.0.1"
    (engine / "sidecar.json").write_text(json.dumps(sidecar))
    with pytest.raises(PipelineError, match="optimized by onnxruntime 0.0.1"):
        get_backend("onnxruntime").load(engine)
    sidecar["backend"] = "tensorrt"
    (engine / "sidecar.json").write_text(json.dumps(sidecar))
    with pytest.raises(PipelineError, match="built by backend 'tensorrt'"):
        get_backend("onnxruntime").load(engine)


def test_load_refuses_an_engine_copied_over_another_or_corrupted(workspace, digits_int8, tmp_path):
    """The FP32 engine folder copied over the INT8 one, a swapped model file, a broken sidecar."""
    import shutil

    cfg = private_copy(workspace, tmp_path, "models/digits_cnn", f"builds/{digits_int8.name}")
    fp32 = resolve_build(cfg, "digits_cnn-cpu-fp32")
    steps.calibrate(fp32)
    steps.build(fp32)
    int8 = resolve_build(cfg, digits_int8.name)
    int8_engine, fp32_engine = build_paths(cfg, int8.name).engine_dir, build_paths(cfg, fp32.name).engine_dir
    shutil.rmtree(int8_engine)
    shutil.copytree(fp32_engine, int8_engine)
    with pytest.raises(PipelineError, match=r"holds the artifact of build 'digits_cnn-cpu-fp32' .*not the expected build 'digits_cnn-cpu-int8'"):
        steps.validate(int8)
    with pytest.raises(PipelineError, match="not the expected build 'digits_cnn-cpu-int8'"):
        steps.benchmark(int8)
    steps.build(int8)
    shutil.copy(fp32_engine / "model.onnx", int8_engine / "model.onnx")
    with pytest.raises(PipelineError, match=r"model.onnx is not the file that was built \(sha256 .*replaced or corrupted"):
        steps.validate(int8)
    steps.build(int8)
    (int8_engine / "sidecar.json").write_text('{"backend": "onnxruntime", ')
    with pytest.raises(PipelineError, match=r"malformed artifact sidecar .*sidecar.json: Expecting"):
        steps.validate(int8)
    (int8_engine / "sidecar.json").write_text('{"backend": "onnxruntime"}')
    with pytest.raises(PipelineError, match=r"malformed artifact sidecar .*missing \['artifact'"):
        steps.validate(int8)
    assert not build_paths(cfg, int8.name).validate_metrics.exists(), "no metrics for the wrong engine"


def test_int8_digits_meets_the_accuracy_floor(workspace, digits_int8):
    metrics = steps.validate(digits_int8)
    assert metrics["accuracy_drop"] <= 1.0
    assert metrics["top1_agreement"] >= 0.99
    assert metrics["reference_accuracy"] > 95.0
    assert metrics["gates_passed"] and metrics["outputs"]["logits"]["cosine_mean"] > 0.99


def test_a_missed_gate_writes_metrics_then_fails_naming_metric_value_and_limit(workspace, digits_int8, tmp_path):
    import dataclasses

    cfg = private_copy(workspace, tmp_path, "models/digits_cnn", f"builds/{digits_int8.name}")
    strict = dataclasses.replace(digits_int8.model, gates=Gates(min_cosine=0.999999))
    ctx = dataclasses.replace(digits_int8, model=strict, config=cfg)
    with pytest.raises(PipelineError, match=r"cosine_mean = 0\.\d+, limit >= 0.999999"):
        steps.validate(ctx)
    written = read_json(build_paths(cfg, digits_int8.name).validate_metrics)
    assert written["gates_passed"] is False and written["gate_failures"]


def test_compare_outputs_and_gates_on_known_perturbations():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(32, 10)).astype(np.float32)
    assert compare_outputs(reference, reference)["rel_l2_error"] == 0.0
    noisy = compare_outputs(reference, reference + 0.1)
    assert noisy["max_abs_error"] == pytest.approx(0.1, rel=1e-5) and noisy["cosine_min"] < 1.0
    flipped = compare_outputs(reference, -reference)
    assert flipped["cosine_mean"] == pytest.approx(-1.0)
    failures = check_gates({"accuracy_drop": 2.5, "top1_agreement": 0.98}, Gates(max_accuracy_drop=1.0, min_top1_agreement=0.99))
    assert failures == ["accuracy_drop = 2.5000, limit <= 1.0", "top1_agreement = 0.9800, limit >= 0.99"]
    assert check_gates({}, Gates(max_accuracy_drop=1.0)) == ["accuracy_drop: not measured (no labels?), limit <= 1.0"]


def test_benchmark_sweep_reports_percentiles_throughput_and_spread(workspace, digits_int8):
    # A time budget no machine reaches: every configured run happens, however slow the CPU.
    cfg = BenchmarkConfig(batch_sizes=[1, 4], warmup=1, iterations=8, repeats=2, max_seconds_per_batch=600.0)
    with get_backend("onnxruntime").load(build_paths(workspace, digits_int8.name).engine_dir) as runner:
        rows = sweep(runner, lambda bs: {"input": np.zeros((bs, 1, 8, 8), np.float32)}, cfg)
    assert [r["batch_size"] for r in rows] == [1, 4]
    for row in rows:
        assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["throughput"] == pytest.approx(row["batch_size"] * 1000 / row["mean_ms"])
        assert row["runs"] == 16 and row["repeats"] == 2
        assert row["noisy"] == (row["repeat_spread"] > cfg.spread_warning)


def test_benchmark_stops_a_batch_at_its_time_limit(workspace, digits_int8):
    """Past the deadline a loop stops after 3 runs (enough for a median) and no further repeat starts."""
    cfg = BenchmarkConfig(batch_sizes=[2], warmup=1, iterations=50, repeats=5, max_seconds_per_batch=0.0)
    with get_backend("onnxruntime").load(build_paths(workspace, digits_int8.name).engine_dir) as runner:
        (row,) = sweep(runner, lambda bs: {"input": np.zeros((bs, 1, 8, 8), np.float32)}, cfg)
    assert row["runs"] == 3 and row["repeats"] == 1


def test_a_time_budget_runs_until_both_floors_and_stops_at_its_ceiling(workspace, digits_int8):
    """The GPU figures' loop, on a real CPU runner: at least min_seconds and min_runs, whichever comes
    later, never past max_seconds; what each run returns is what is collected."""
    feeds = {"input": np.zeros((4, 1, 8, 8), np.float32)}
    with get_backend("onnxruntime").load(build_paths(workspace, digits_int8.name).engine_dir) as runner:
        def step() -> float:
            start = time.perf_counter()
            runner.run(feeds)
            return (time.perf_counter() - start) * 1000.0

        started = time.perf_counter()
        by_time = timed_until(step, TimeBudget(min_seconds=0.3, min_runs=5, max_seconds=600.0))
        assert time.perf_counter() - started >= 0.3 and len(by_time) >= 5 and all(ms > 0 for ms in by_time)
        assert len(timed_until(step, TimeBudget(min_seconds=0.0, min_runs=7, max_seconds=600.0))) == 7
        started = time.perf_counter()
        capped = timed_until(step, TimeBudget(min_seconds=600.0, min_runs=10**9, max_seconds=0.2))
        assert 0.2 <= time.perf_counter() - started < 5.0 and len(capped) >= 1
    assert not TimeBudget(0.0, 1, 0.0).done(5.0, 0)  # at least one run, whatever the clock says


def test_the_gpu_sweep_stops_at_each_models_largest_batch_and_samples_nvml_often_enough(tmp_path):
    from pipeline.evaluate.gpu_benchmark import gpu_batch_sizes, nvml_interval_s

    from .conftest import compose_config

    cfg = compose_config(tmp_path, "model=[resnet50,minilm,digits_cnn]", "dataset=[photo_crops,sentences,digits]")
    wanted = cfg.benchmark.gpu.batch_sizes
    assert wanted == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert gpu_batch_sizes(wanted, cfg.model["resnet50"].largest_batch) == wanted
    assert gpu_batch_sizes(wanted, cfg.model["minilm"].largest_batch) == [1, 2, 4, 8, 16, 32, 64]
    assert gpu_batch_sizes(wanted, 48) == [1, 2, 4, 8, 16, 32, 48]  # a profile between powers of two: its own max ends the sweep
    assert gpu_batch_sizes(wanted, 1) == [1]
    for seconds, samples in ((2.0, 20), (0.2, 5), (10.0, 20)):
        interval = nvml_interval_s(seconds, samples)
        assert seconds / interval >= samples and interval <= 0.1


class _SlowFirstRepeat(Runner):
    """A real runner on a machine that is busy during the first timed repeat (a noisy neighbour)."""

    def __init__(self, runner: Runner, warmup: int, iterations: int, delay_s: float):
        self.runner, self.inputs, self.output_names = runner, runner.inputs, runner.output_names
        self.calls, self.busy, self.delay_s = 0, range(warmup, warmup + iterations), delay_s

    def run(self, feeds):
        if self.calls in self.busy:
            time.sleep(self.delay_s)
        self.calls += 1
        return self.runner.run(feeds)


def test_benchmark_flags_repeats_whose_medians_disagree(workspace, digits_int8):
    cfg = BenchmarkConfig(batch_sizes=[1], warmup=2, iterations=5, repeats=2, max_seconds_per_batch=600.0, spread_warning=0.10)
    with get_backend("onnxruntime").load(build_paths(workspace, digits_int8.name).engine_dir) as runner:
        noisy = _SlowFirstRepeat(runner, cfg.warmup, cfg.iterations, delay_s=0.05)
        (row,) = sweep(noisy, lambda bs: {"input": np.zeros((bs, 1, 8, 8), np.float32)}, cfg)
    assert row["repeat_spread"] > 1.0 and row["noisy"] is True  # 50 ms sleeps against a sub-ms model


def test_fp32_build_validates_identically_to_its_reference(workspace, digits_model):
    ctx = resolve_build(workspace, "digits_cnn-cpu-fp32")
    steps.calibrate(ctx)
    steps.build(ctx)
    metrics = steps.validate(ctx)
    assert metrics["top1_agreement"] == 1.0 and metrics["accuracy_drop"] == 0.0
    assert metrics["outputs"]["logits"]["max_abs_error"] < 1e-4


def test_validate_refuses_a_manifest_that_names_validation_samples(workspace, digits_int8, tmp_path):
    """The check at validate time: a calibration manifest edited (or produced) with a held-out sample."""
    import dataclasses

    from pipeline.data import load_dataset, make_splits
    from pipeline.files import write_json

    cfg = private_copy(workspace, tmp_path, "models/digits_cnn", f"builds/{digits_int8.name}")
    manifest_path = build_paths(cfg, digits_int8.name).manifest
    manifest = read_json(manifest_path)
    held_out = make_splits(load_dataset("digits", digits_int8.dataset), digits_int8.dataset).validation[0]
    manifest["samples"].append({"id": f"digits/{held_out}", "sha256": "0" * 64})
    write_json(manifest_path, manifest)
    with pytest.raises(PipelineError, match=rf"1 validation samples were used for calibration \(e.g. digits/{held_out}\)"):
        steps.validate(dataclasses.replace(digits_int8, config=cfg))
    assert not build_paths(cfg, digits_int8.name).validate_metrics.exists()


def _broken_copy(workspace, tmp_path, break_engine):
    """A private copy of the digits builds whose engine (not the reference) has its Gemm rewritten."""
    import onnx
    from onnx import numpy_helper

    cfg = private_copy(workspace, tmp_path, "models/digits_cnn")
    ctx = resolve_build(cfg, "digits_cnn-cpu-fp32")
    steps.calibrate(ctx)
    calibrated = build_paths(cfg, ctx.name).calibrated
    model = onnx.load(str(calibrated))
    (gemm,) = [n for n in model.graph.node if n.op_type == "Gemm"]
    for init in model.graph.initializer:
        if init.name in gemm.input[1:]:
            init.CopyFrom(numpy_helper.from_array(break_engine(numpy_helper.to_array(init).copy()), init.name))
    onnx.save(model, str(calibrated))
    steps.build(ctx)
    return cfg, ctx


def test_an_engine_that_outputs_zeros_fails_validation(workspace, digits_model, tmp_path):
    cfg, ctx = _broken_copy(workspace, tmp_path, lambda array: np.zeros_like(array))
    with pytest.raises(PipelineError, match=r"output 'logits' of the candidate is the same for all 497 samples; the FP32 reference's is not"):
        steps.validate(ctx)
    written = read_json(build_paths(cfg, ctx.name).validate_metrics)
    assert written["gates_passed"] is False and written["cosine_mean"] == 0.0  # zero rows share no direction


def test_nan_outputs_fail_validation_and_metrics_stay_standard_json(workspace, digits_model, tmp_path):
    import json

    def poison(array):
        array.flat[0] = np.nan
        return array

    cfg, ctx = _broken_copy(workspace, tmp_path, poison)
    with pytest.raises(PipelineError, match=r"output 'logits' of the candidate has \d+ NaN/Inf values"):
        steps.validate(ctx)
    text = build_paths(cfg, ctx.name).validate_metrics.read_text()
    written = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert written["cosine_mean"] is None and written["gates_passed"] is False


@pytest.mark.filterwarnings("ignore:All-NaN axis encountered:RuntimeWarning")  # ORT's calibrator, on purpose
def test_an_fp32_reference_with_nan_weights_fails_validation_and_calibration(workspace, digits_model, tmp_path):
    import onnx
    from onnx import numpy_helper

    cfg = private_copy(workspace, tmp_path, "models/digits_cnn")
    fp32 = resolve_build(cfg, "digits_cnn-cpu-fp32")
    steps.calibrate(fp32)
    steps.build(fp32)
    simplified = model_paths(cfg, "digits_cnn").simplified  # the reference turns NaN after the build
    model = onnx.load(str(simplified))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    for init in model.graph.initializer:
        if init.name == conv.input[2]:
            init.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(init), np.nan), init.name))
    onnx.save(model, str(simplified))
    with pytest.raises(PipelineError, match=r"output 'logits' of the FP32 reference has \d+ NaN/Inf values"):
        steps.validate(fp32)
    # Calibrate runs real samples through the FP32 model first, for every precision, and stops there.
    for precision in ("int8", "fp32"):
        with pytest.raises(PipelineError, match=r"model 'digits_cnn' gives NaN/Inf in output 'logits' on real samples from dataset 'digits' in FP32"):
            steps.calibrate(resolve_build(cfg, f"digits_cnn-cpu-{precision}"))
    assert not build_paths(cfg, "digits_cnn-cpu-int8").calibrated_dir.exists()


def test_row_cosine_and_gates_have_no_blind_spots():
    from pipeline.similarity import row_cosine

    ones, zeros = np.ones((1, 4)), np.zeros((1, 4))
    assert row_cosine(ones, zeros)[0] == 0.0 and row_cosine(zeros, ones)[0] == 0.0
    assert row_cosine(zeros, zeros)[0] == 1.0 and row_cosine(ones, -ones)[0] == -1.0
    assert np.isnan(row_cosine(np.array([[np.nan, 1.0]]), np.ones((1, 2)))[0])
    assert np.isnan(row_cosine(np.ones((1, 2)), np.array([[np.inf, 1.0]]))[0])
    failures = check_gates({"cosine_mean": float("nan"), "top1_agreement": 1.0}, Gates(min_cosine=0.9, min_top1_agreement=0.5))
    assert failures == ["cosine_mean = nan (outputs not finite), limit >= 0.9"]
    assert check_gates({"output_problems": ["broken"], "cosine_mean": 1.0}, Gates()) == ["broken"]


def test_build_through_runs_the_build_stages_in_order_up_to_the_one_named(workspace, digits_model, tmp_path):
    from pipeline.steps.chain import build_through

    cfg = private_copy(workspace, tmp_path, "models")
    ctx = build_through(cfg, "digits_cnn-cpu-fp32", "validate")
    paths = build_paths(cfg, ctx.name)
    assert paths.calibrated.is_file() and (paths.engine_dir / "sidecar.json").is_file() and paths.validate_metrics.is_file()
    assert not paths.benchmark_metrics.exists()
    with pytest.raises(PipelineError, match=r"build_through stops at one of \['calibrate', 'build', 'validate', 'benchmark', 'package'\], not 'serve'"):
        build_through(cfg, "digits_cnn-cpu-fp32", "serve")
