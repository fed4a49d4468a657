"""GPU path, run for real where a GPU is present (the lent H200); skipped elsewhere.

scripts/gpu_run.sh installs what the H200 image lacks (onnxruntime-gpu, pycuda built from source,
hydra) and runs these with `pytest -m gpu`.
"""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.backends.cuda_runtime import gpu_compute_capability

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu_compute_capability() is None, reason="needs an NVIDIA GPU and driver")]


@pytest.fixture()
def device():
    from pipeline.backends.cuda_runtime import CudaDevice

    device = CudaDevice()
    yield device
    device.close()


def test_buffers_streams_and_events_round_trip(device):
    from pipeline.backends.cuda_runtime import Buffer, EventTimer

    cuda, stream = device.cuda, device.cuda.Stream()
    buffer = Buffer(cuda, np.float32)
    data = np.arange(1 << 20, dtype=np.float32)
    timer = EventTimer(cuda)
    timer.record_start(stream)
    buffer.upload(data, stream)
    timer.record_end(stream)
    back = buffer.download(data.shape, stream).copy()
    stream.synchronize()
    assert np.array_equal(back, data) and timer.elapsed_ms() > 0


def test_cuda_graph_capture_and_replay_on_a_pycuda_stream(device):
    from pipeline.backends.cuda_runtime import Buffer, CudaGraph

    cuda, stream = device.cuda, device.cuda.Stream()
    source, target = Buffer(cuda, np.float32), Buffer(cuda, np.float32)
    data = np.arange(4096, dtype=np.float32)
    source.upload(data, stream)
    target.ensure(data.shape)
    stream.synchronize()  # the staging buffer is reused by the next upload
    graph = CudaGraph(stream, lambda: cuda.memcpy_dtod_async(target.device, source.device, data.nbytes, stream))
    source.upload(data * 3, stream)  # the graph copies whatever the source holds when replayed
    graph.launch()
    result = target.download(data.shape, stream)
    stream.synchronize()  # the copy out is asynchronous: read the page-locked buffer only after it
    result = result.copy()
    graph.close()
    assert np.array_equal(result, data * 3)


def test_nvml_sampler_reads_utilisation_and_clocks():
    import time

    from pipeline.backends.cuda_runtime import NvmlSampler

    with NvmlSampler(0.01) as nvml:
        deadline = time.monotonic() + 10.0  # however slow the NVML calls are on this machine
        while len(nvml.samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    summary = nvml.summary()
    assert summary["nvml_samples"] >= 3 and summary["sm_clock_mhz_mean"] > 0 and summary["memory_used_mib_max"] > 0


def test_ort_cuda_target_builds_validates_and_benchmarks_digits(tmp_path):
    """The whole GPU target path on the small digits model: IOBinding, CUDA graphs, NVML, events."""
    from pipeline import steps
    from pipeline.steps.chain import prepare_model
    from pipeline.backends import get_backend
    from pipeline.config import resolve_build
    from pipeline.data import load_dataset
    from pipeline.paths import build_paths

    from .conftest import compose_config

    cfg = compose_config(tmp_path, "model=[digits_cnn]", "target=[h200_ort]", "precision=[fp32]", "benchmark=quick")
    prepare_model(cfg, "digits_cnn")
    build = resolve_build(cfg, "digits_cnn-h200_ort-fp32")
    steps.calibrate(build)
    steps.build(build)
    metrics = steps.validate(build)
    assert metrics["top1_agreement"] >= 0.99 and metrics["accuracy_drop"] <= 0.5
    rows = steps.benchmark(build)
    # benchmark=quick's GPU sweep: headline a replayed CUDA graph on device inputs, eager and overlapped transfers beside it.
    assert [r["batch_size"] for r in rows] == [1, 8]
    assert all(r["timer"] == "cuda_events" and r["figure"] == "graph" and not r["transfers_included"] and r["graph_mode"] != "none"
               and r["eager"]["throughput"] > 0 and r["overlapped"]["throughput"] > 0 and r["nvml_samples"] >= 5 for r in rows), rows
    feeds = load_dataset("digits", build.dataset).load(range(16))
    with get_backend("onnxruntime").load(build_paths(cfg, build.name).engine_dir) as plain, \
            get_backend("onnxruntime").load(build_paths(cfg, build.name).engine_dir, cuda_graph=True) as graphed:
        want = plain.run(feeds)["logits"]
        for _ in range(3):  # capture on an early run, then replays
            got = graphed.run(feeds)["logits"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert graphed.compute_only() > 0 and set(plain.last_timing) == {"h2d_ms", "compute_ms", "d2h_ms"}
        assert graphed.graph_mode in ("stream_capture", "onnxruntime") and plain.graph_mode == "none"
        print("graph mode:", graphed.graph_mode)
        # A server's runner: a session per batch size (the CUDA provider sets convolutions up per shape).
        from pipeline.backends.base import RunnerPerShape

        with get_backend("onnxruntime").load(build_paths(cfg, build.name).engine_dir, varying_shapes=True) as served:
            assert isinstance(served, RunnerPerShape)
            for size in (16, 5, 16, 1, 5):
                part = {"input": feeds["input"][:size]}
                np.testing.assert_allclose(served.run(part)["logits"], plain.run(part)["logits"], rtol=1e-4, atol=1e-4)
            assert [dict(key)["input"][0] for key in served.shapes] == [16, 5, 1]
        # Overlapped transfers: batches written in place into page-locked slots, outputs in order and
        # equal to the plain runner's, however many batches are in flight.
        dataset = load_dataset("digits", build.dataset)
        batches = [dataset.load(range(start, start + 16)) for start in range(0, 112, 16)]
        expected = [plain.run(batch)["logits"] for batch in batches]
        with plain.overlapped({"input": batches[0]["input"].shape}, slots=3) as pipe:
            got = []
            for batch in batches:
                np.copyto(pipe.acquire()["input"], batch["input"])
                got += [out["logits"] for out in pipe.submit()]
            got += [out["logits"] for out in pipe.drain()]
        assert len(got) == len(batches) and len(pipe.latencies_ms) == len(batches)
        for want, have in zip(expected, got):
            np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5)


def test_aoti_and_ort_cuda_are_built_gated_and_timed_and_the_faster_is_kept(tmp_path):
    """h200_aoti on the digits CNN in FP16: AOTInductor compiles a CUDA package beside ONNX Runtime's build,
    both pass the gates, the build keeps the faster and records both; the kept build validates and benchmarks."""
    from pipeline import steps
    from pipeline.files import read_json
    from pipeline.paths import build_paths
    from pipeline.steps.chain import build_through, prepare_model

    from .conftest import compose_config

    cfg = compose_config(tmp_path, "model=[digits_cnn]", "target=[h200_aoti]", "precision=[fp16]", "benchmark=quick",
                         "target.h200_aoti.build.inductor_max_autotune=false")
    prepare_model(cfg, "digits_cnn")
    build = build_through(cfg, "digits_cnn-h200_aoti-fp16", "build")
    paths = build_paths(cfg, build.name)
    sidecar, metrics = read_json(paths.engine_dir / "sidecar.json"), read_json(paths.build_metrics)
    assert [c["runtime"] for c in metrics["candidates"]] == ["aoti", "onnxruntime"], metrics
    assert all(c["passed"] and c["ms"] for c in metrics["candidates"]), metrics
    assert sidecar["runtime_selection"]["chosen"] == metrics["runtime"] and metrics["why"]
    print("chosen:", metrics["runtime"], metrics["why"])
    if metrics["runtime"] == "aoti":
        assert sidecar["device"] == "cuda" and sidecar["compute_capability"] == "9.0"
    assert steps.validate(build)["gates_passed"]
    rows = steps.benchmark(build)
    assert rows and all(r["timer"] == "cuda_events" and r["throughput"] > 0 for r in rows), rows
