"""Serving on a real Triton Inference Server (the nvidia-pytriton wheel's 2.51 binary) on loopback:
repositories written through Triton's protobuf, the serve stage's correctness, load and gates, and no
server process outliving a test, a failed stage, Ctrl-C or a killed parent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import steps
from pipeline.config import resolve_build
from pipeline.errors import PipelineError
from pipeline.files import read_json, sha256_file
from pipeline.paths import build_paths
from pipeline.serving.repository import read_config
from pipeline.serving.server import TritonServer, free_port

from .conftest import REPO, compose_config, copy_prepared

pytestmark = pytest.mark.slow
BUILD = "digits_cnn-cpu-int8"
SERVING_ENV = REPO / ".venv-serving"


def _tritonservers() -> list:
    """Running tritonserver processes (pid, command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "tritonserver" in command and "--model-repository" in command:
                found.append((int(entry.name), command))
    return found


@pytest.fixture(autouse=True)
def no_server_survives():
    before = {pid for pid, _ in _tritonservers()}
    yield
    deadline = time.time() + 10
    while {pid for pid, _ in _tritonservers()} - before and time.time() < deadline:
        time.sleep(0.2)
    assert not {pid for pid, _ in _tritonservers()} - before, "a Triton server outlived its test"


@pytest.fixture(scope="module")
def served(workspace, digits_int8, tmp_path_factory):
    """A project of its own (params.yaml beside its artifacts) with the digits INT8 build packaged."""
    import shutil

    root = tmp_path_factory.mktemp("serving")
    cfg = compose_config(root, "model=[digits_cnn]", "dataset=[digits]", "serving.concurrency=[1,8]", "serving.seconds_per_level=1.0")
    shutil.copytree(build_paths(workspace, BUILD).root, build_paths(cfg, BUILD).root)
    copy_prepared(workspace, cfg, "digits_cnn")  # the FP32 reference
    ctx = resolve_build(cfg, BUILD)
    written = steps.package(ctx)
    return cfg, ctx, written, root / "params.yaml"


def test_package_writes_both_repository_forms_through_tritons_protobuf(served, tmp_path):
    cfg, ctx, written, _ = served
    paths = build_paths(cfg, BUILD)
    sidecar = read_json(paths.engine_dir / "sidecar.json")
    native, python = read_config(Path(written["native"])), read_config(Path(written["python"]))
    assert native.platform == "onnxruntime_onnx" and python.backend == "python"
    for config in (native, python):
        assert config.name == BUILD and config.max_batch_size == 32  # serving.max_batch_size, under the profile's 256
        assert [(i.name, list(i.dims)) for i in config.input] == [("input", [1, 8, 8])]
        assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [10])]
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
        assert config.parameters["pipeline_artifact_sha256"].string_value == sidecar["artifact_sha256"]
        assert len(config.model_warmup) == cfg.serving.warmup_samples
    assert sha256_file(paths.serving_dir / "native" / BUILD / "1" / "model.onnx") == sidecar["artifact_sha256"]
    warmup = np.frombuffer((paths.serving_dir / "python" / BUILD / "warmup" / "input_0").read_bytes(), np.float32)
    assert warmup.size == 64 and warmup.max() > 0  # a real digit, not zeros
    before = {p.relative_to(paths.serving_dir): p.read_bytes() for p in paths.serving_dir.rglob("*") if p.is_file()}
    steps.package(ctx)
    after = {p.relative_to(paths.serving_dir): p.read_bytes() for p in paths.serving_dir.rglob("*") if p.is_file()}
    assert after == before, "unchanged inputs give unchanged bytes"


def test_serve_stage_answers_like_the_offline_engine_under_load(served):
    cfg, ctx, _, _ = served
    metrics = steps.serve(ctx)
    assert metrics["gates_passed"] and metrics["agreement"]["samples"] == cfg.serving.agreement_samples
    assert metrics["agreement"]["max_abs_difference"] <= 1e-4
    for level in cfg.serving.concurrency:
        row = metrics[f"concurrency_{level}"]
        assert row["errors"] == 0 and row["requests"] > 0 and row["server_requests"] == row["requests"]
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["mean_batch_size"] >= 1.0
    assert metrics["concurrency_8"]["mean_batch_size"] > 1.0, "dynamic batching formed batches"
    assert metrics["ready_seconds"] < cfg.serving.startup_timeout_s
    from pipeline.report.summary import serving_rows

    assert [row["concurrency"] for row in serving_rows(cfg) if row["build"] == BUILD] == cfg.serving.concurrency, "the serving plot's data"
    scenario = metrics["server_scenario"]  # MLPerf server scenario: Poisson arrivals, doubling until a miss, then bisecting
    probes = scenario["probes"]
    assert len(probes) == cfg.serving.server_scenario.probes and all(p["requests"] > 0 for p in probes)
    good, bad = 0.0, None
    for previous, probe in zip(probes, probes[1:] + [None]):  # each rate follows from the outcomes before it
        assert previous["within_budget"] == (previous["p99_ms"] <= cfg.serving.p99_budget_ms and previous["errors"] == 0)
        good, bad = (previous["offered_rate"], bad) if previous["within_budget"] else (good, previous["offered_rate"])
        if probe is not None:
            assert probe["offered_rate"] == pytest.approx(previous["offered_rate"] * 2 if bad is None else (good + bad) / 2)
    assert (scenario["max_rate_within_budget"], scenario["lowest_rate_over_budget"]) == (good, bad)


def test_a_missed_serving_gate_writes_metrics_then_fails(served):
    import dataclasses

    cfg, ctx, _, _ = served
    tight = dataclasses.replace(cfg, serving=dataclasses.replace(cfg.serving, p99_budget_ms=0.001, concurrency=[1], seconds_per_level=0.5))
    with pytest.raises(PipelineError, match=r"serving gate failed for digits_cnn-cpu-int8: p99 at concurrency 1 = [\d.]+ ms, limit <= 0.001 ms"):
        steps.serve(dataclasses.replace(ctx, config=tight))
    assert read_json(build_paths(cfg, BUILD).serve_metrics)["gates_passed"] is False


def test_the_batching_search_packages_the_fastest_configuration_within_the_budget(served):
    """Every candidate really served; the winner is the highest throughput within p99 and both forms
    carry it. A budget nothing meets fails naming the best p99, and leaves the package as it was."""
    import dataclasses

    cfg, ctx, written, _ = served
    search = dataclasses.replace(cfg.serving.batching_search, enabled=True, instances=[1], max_queue_delay_us=[500, 20000],
                                 preferred_batch_sizes=[[]], concurrency=[2, 8], seconds_per_trial=0.7)
    searching = dataclasses.replace(ctx, config=dataclasses.replace(cfg, serving=dataclasses.replace(cfg.serving, batching_search=search)))
    steps.package(searching)
    result = read_json(build_paths(cfg, BUILD).batching_metrics)
    trials = result["trials"]
    assert result["searched"] and {(t["max_queue_delay_us"], t["concurrency"]) for t in trials} <= {(500, 2), (500, 8), (20000, 2), (20000, 8)}
    assert all(t["requests"] > 0 and t["server_requests"] == t["requests"] for t in trials)
    best = max((t for t in trials if t["within_budget"]), key=lambda t: t["throughput"])
    assert (result["winner"]["max_queue_delay_us"], result["winner"]["concurrency"]) == (best["max_queue_delay_us"], best["concurrency"])
    for form in ("native", "python"):
        config = read_config(Path(written[form]))
        assert config.dynamic_batching.max_queue_delay_microseconds == best["max_queue_delay_us"]
        assert list(config.dynamic_batching.preferred_batch_size) == [] and config.instance_group[0].count == 1

    package = build_paths(cfg, BUILD).serving_dir
    before = {p: p.read_bytes() for p in package.rglob("*") if p.is_file()}
    impossible = dataclasses.replace(searching.config.serving, p99_budget_ms=0.001, batching_search=dataclasses.replace(search, max_queue_delay_us=[500]))
    with pytest.raises(PipelineError, match=r"no batching configuration meets serving.p99_budget_ms=0.001: the lowest p99 was [\d.]+ ms"):
        steps.package(dataclasses.replace(ctx, config=dataclasses.replace(cfg, serving=impossible)))
    assert {p: p.read_bytes() for p in package.rglob("*") if p.is_file()} == before, "a failed search leaves no half-written package"
    steps.package(ctx)  # the configured batching again, for the tests after this one
    assert read_json(build_paths(cfg, BUILD).batching_metrics) == {"searched": False, "batching": {
        "instances": cfg.serving.instances, "max_queue_delay_us": cfg.serving.max_queue_delay_us, "preferred_batch_sizes": cfg.serving.preferred_batch_sizes}}


def test_a_cuda_build_carries_its_cuda_runner_and_is_served_only_on_a_gpu_host(workspace, digits_model, tmp_path):
    """The ORT CUDA build's Python form vendors the CUDA layer, which imports in the serving environment
    (numpy < 2 and onnxruntime, no onnx); GPU instance groups; without a GPU, serving it is refused."""
    import shutil

    from pipeline.backends.cuda_runtime import gpu_compute_capability

    cfg = compose_config(tmp_path, "model=[digits_cnn]", "dataset=[digits]", "target=[h200_ort]", "precision=[fp32]", "serving.precisions=[fp32]",
                         "serving.gpus=[1]")
    copy_prepared(workspace, cfg, "digits_cnn")
    name = "digits_cnn-h200_ort-fp32"
    assert list(cfg.servable) == [name], "ONNX Runtime CUDA builds get a serve stage"
    ctx = resolve_build(cfg, name)
    steps.calibrate(ctx)
    steps.build(ctx)
    written = steps.package(ctx)
    python = read_config(Path(written["python"]))
    (group,) = python.instance_group
    assert group.kind == group.KIND_GPU and list(group.gpus) == [1]
    version_dir = Path(written["python"]).parent / "1"
    probe = ("import importlib.util, sys; sys.path.insert(0, sys.argv[1]); "
             "from pipeline.backends.cuda_runners import OnnxRuntimeCudaRunner; from pipeline.backends import get_backend; "
             "get_backend('onnxruntime'); assert importlib.util.find_spec('onnx') is None, 'the serving env has no onnx'")
    result = subprocess.run([str(SERVING_ENV / "bin" / "python"), "-c", probe, str(version_dir)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    if gpu_compute_capability() is None:
        with pytest.raises(PipelineError, match=rf"{name} cannot be served here: it is an onnxruntime build on cuda and this host has no NVIDIA GPU"):
            steps.serve(ctx)
        assert not (tmp_path / "m" / "builds" / name / "serve.json").exists()


def test_a_build_this_host_cannot_serve_and_a_missing_server_binary_are_one_clear_error_each(served, tmp_path):
    from pipeline.steps.deploy_step import deploy

    _, _, _, params = served
    gpu = compose_config(tmp_path, "model=[digits_cnn]", "dataset=[digits]", "target=[rtx4090]", "precision=[int8]")
    ctx = resolve_build(gpu, "digits_cnn-rtx4090-int8")
    for attempt in (lambda: steps.serve(ctx), lambda: deploy(ctx, tmp_path / "live", "127.0.0.1:1", "127.0.0.1:2")):
        with pytest.raises(PipelineError, match=r"digits_cnn-rtx4090-int8 cannot be served here: it is a tensorrt_rtx build on cuda; "
                                                r"the embedded Triton serves ONNX Runtime and OpenVINO builds on the CPU"):
            attempt()
    assert not (tmp_path / "m").exists() and not (tmp_path / "live").exists(), "nothing written for a refused build"

    empty = tmp_path / "no-triton"
    empty.mkdir()
    result = subprocess.run([sys.executable, "-m", "pipeline", "serve", BUILD, "--params", str(params), "--http-port", str(free_port()),
                             "--grpc-port", str(free_port()), "--metrics-port", str(free_port())], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, TRT_PIPELINE_SERVING_ENV=str(SERVING_ENV), TRT_PIPELINE_TRITON_HOME=str(empty)))
    assert result.returncode == 2, result.stdout + result.stderr  # the project's exit status for a clear error
    assert f"the Triton server binary is missing: {empty / 'bin' / 'tritonserver'} is not a file" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_a_port_in_use_and_a_model_that_fails_to_load_are_one_clear_error_each(served, tmp_path):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PipelineError, match=f"the Triton http port {port} is already in use"):
            with TritonServer(tmp_path, tmp_path / "log", http_port=port):
                pass
    broken = tmp_path / "repository" / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.py").write_text("raise RuntimeError('this model cannot load')\n")
    (broken.parent / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 1\n'
                                                'input { name: "x" data_type: TYPE_FP32 dims: 1 }\noutput { name: "y" data_type: TYPE_FP32 dims: 1 }\n'
                                                f'parameters {{ key: "EXECUTION_ENV_PATH" value {{ string_value: "{SERVING_ENV}" }} }}\n')
    with pytest.raises(PipelineError, match=r"(?s)Triton exited with status \d+ while starting; server log .*this model cannot load"):
        with TritonServer(tmp_path / "repository", tmp_path / "log"):
            pass


def test_a_killed_server_leaves_no_stub_and_no_shared_memory_and_the_error_says_it_died(served):
    """kill -9 of tritonserver mid-serve: stopping still ends its process group (the Python-backend stubs)
    and removes its shared-memory regions, and the caller sees why, not a client traceback."""
    from pipeline.data import load_dataset
    from pipeline.serving.load_generator import infer
    from pipeline.steps.serve_step import served as serving

    _, ctx, _, _ = served
    feeds = load_dataset("digits", ctx.dataset, ctx.model.inputs).load([0])
    with pytest.raises(PipelineError, match=r"Triton exited with status -9"):
        with serving(ctx) as (server, _):
            group, prefix = server.process.pid, server.shm_prefix
            assert list(Path("/dev/shm").glob(f"{prefix}*")), "the Python backend's regions carry the server's own prefix"
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait()
            infer(server.grpc, ctx.name, [feeds], ["logits"])
    deadline = time.time() + 10  # SIGKILL is delivered at once; the kernel takes a moment to end the process
    while _living_members(group) and time.time() < deadline:
        time.sleep(0.1)
    assert not _living_members(group), "a Python-backend stub outlived its killed server"
    assert not list(Path("/dev/shm").glob(f"{prefix}*"))


def _living_members(group: int) -> list:
    """Processes of process group ``group`` that still run (zombies, already dead, left out)."""
    living = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            living.append(int(entry.name))
    return living


def test_a_port_just_freed_is_usable_at_once_and_a_port_out_of_range_is_named(served, tmp_path):
    _, ctx, _, _ = served
    from pipeline.steps.serve_step import served as serving

    import http.client

    with serving(ctx) as (server, _):
        port = int(server.http.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # kept open: the server closes it first,
        connection.request("GET", "/v2/health/ready")                          # so its port sits in TIME_WAIT after the stop
        assert connection.getresponse().status == 200
    connection.close()
    with serving(ctx, http_port=port) as (again, _):  # no "already in use" for the minute TIME_WAIT lasts
        assert again.http.endswith(f":{port}")
    with pytest.raises(PipelineError, match=r"the Triton http port 70000 is not a port: use 1-65535"):
        with TritonServer(tmp_path, tmp_path / "log", http_port=70000):
            pass


def test_an_http_body_over_the_limit_is_refused_in_front_and_the_server_stays_up(served):
    """Triton 2.51 has no request-size option, and a 16 MB JSON body killed it on an EPYC host: the HTTP port
    is a guard that answers 413 for bodies over serving.http_max_request_mb (15), declared or chunked, before
    they reach the server; requests under it pass through, keep-alive included."""
    import http.client
    import json

    from pipeline.data import load_dataset
    from pipeline.steps.serve_step import served as serving

    _, ctx, _, _ = served
    image = load_dataset("digits", ctx.dataset, ctx.model.inputs).load([0])["input"]
    request = json.dumps({"inputs": [{"name": "input", "shape": list(image.shape), "datatype": "FP32", "data": image.ravel().tolist()}]})
    path = f"/v2/models/{ctx.name}/infer"
    with serving(ctx) as (server, _):
        host, port = server.http.rsplit(":", 1)
        kept_open = http.client.HTTPConnection(host, int(port), timeout=60)

        def answer(connection, body, chunked=False):
            connection.request("POST", path, body=body, headers={"Content-Type": "application/json"}, encode_chunked=chunked)
            response = connection.getresponse()
            return response.status, json.loads(response.read())

        status, first = answer(kept_open, request)
        assert status == 200 and first["outputs"][0]["shape"] == [1, 10]
        for megabytes in (16, 64):
            padded = (request + " " * (megabytes * 2**20 - len(request))).encode()
            status, refusal = answer(http.client.HTTPConnection(host, int(port), timeout=60), padded)
            assert status == 413 and f"of {megabytes * 2**20} bytes" in refusal["error"], refusal
            assert "serving.http_max_request_mb" in refusal["error"]
        pieces = iter([request.encode()] + [b" " * 2**20] * 16)  # no declared length: counted as it comes
        status, refusal = answer(http.client.HTTPConnection(host, int(port), timeout=60), pieces, chunked=True)
        assert status == 413 and "serving.http_max_request_mb" in refusal["error"]
        import socket

        with socket.create_connection((host, int(port)), timeout=10) as raw:  # a length no client can mean
            raw.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".encode())
            assert raw.recv(4096).startswith(b"HTTP/1.1 400 ")
        assert server.process.poll() is None and server.api.ready(ctx.name)
        assert answer(kept_open, request) == (200, first), "the server answers as before, on the same connection"


def _foreground() -> None:
    # As a terminal starts a foreground command: a test run launched in the background (`cmd &` in a
    # script) inherits SIGINT ignored, and Python keeps an ignored SIGINT, so Ctrl-C would do nothing.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _serve_command(params: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "serve", BUILD, "--params", str(params), "--http-port", str(free_port()),
                             "--grpc-port", str(free_port()), "--metrics-port", str(free_port())], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, TRT_PIPELINE_SERVING_ENV=str(SERVING_ENV)),
                            preexec_fn=_foreground)


def _wait_serving(process: subprocess.Popen) -> str:
    seen, deadline = "", time.time() + 120
    while "Ctrl-C stops the server" not in seen:
        assert time.time() < deadline and process.poll() is None, seen
        seen += process.stdout.readline()
    return seen


def test_foreground_serve_prints_the_probes_and_stops_on_ctrl_c(served):
    import urllib.request

    _, _, _, params = served
    process = _serve_command(params)
    printed = _wait_serving(process)
    ready = next(line for line in printed.splitlines() if "readiness probe" in line).split("GET ")[1].split()[0]
    assert urllib.request.urlopen(ready, timeout=5).status == 200
    assert _tritonservers(), "the server runs while the command does"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130


def test_a_killed_serve_command_takes_its_server_with_it(served):
    _, _, _, params = served
    process = _serve_command(params)
    _wait_serving(process)
    process.kill()  # no chance to clean up: the server must still die with its parent
    process.wait()


def test_deploy_promotes_good_versions_rejects_broken_ones_and_rolls_back_without_a_failed_request(served, workspace, tmp_path):
    """v1 good -> served; v2 with a corrupted engine and v2 that answers zeros -> rejected while a client
    sending requests throughout gets only v1 answers; v3 good -> served; rollback -> v1 again."""
    import dataclasses
    import shutil
    import threading

    import onnx
    import tritonclient.grpc as grpcclient
    from onnx import numpy_helper

    from pipeline.data import load_dataset
    from pipeline.serving.deploy import history, rollback
    from pipeline.serving.load_generator import infer_inputs
    from pipeline.steps.deploy_step import deploy

    from .conftest import private_copy

    cfg, int8, _, _ = served

    def fp32_package(folder, break_gemm: bool):
        private = private_copy(workspace, tmp_path / folder, "models/digits_cnn")
        private = dataclasses.replace(private, serving=cfg.serving)
        ctx = resolve_build(private, "digits_cnn-cpu-fp32")
        steps.calibrate(ctx)
        if break_gemm:  # loads and answers, but every answer is the same: the agreement check must refuse it
            model = onnx.load(str(build_paths(private, ctx.name).calibrated))
            (gemm,) = [n for n in model.graph.node if n.op_type == "Gemm"]
            for init in model.graph.initializer:
                if init.name in gemm.input[1:]:
                    init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
            onnx.save(model, str(build_paths(private, ctx.name).calibrated))
        steps.build(ctx)
        steps.package(ctx)
        return ctx

    corrupted_cfg = private_copy(workspace, tmp_path / "corrupt", "models/digits_cnn")
    corrupted_cfg = dataclasses.replace(corrupted_cfg, serving=cfg.serving)
    shutil.copytree(build_paths(cfg, BUILD).root, build_paths(corrupted_cfg, BUILD).root)
    engine = build_paths(corrupted_cfg, BUILD).serving_dir / "python" / BUILD / "1" / "engine" / "model.onnx"
    engine.write_bytes(engine.read_bytes()[:-100] + b"\0" * 100)
    corrupted = resolve_build(corrupted_cfg, BUILD)
    zeros, good = fp32_package("zeros", break_gemm=True), fp32_package("good", break_gemm=False)

    repository = tmp_path / "live"
    repository.mkdir()
    feeds = load_dataset("digits", int8.dataset).load([0])
    with TritonServer(repository, tmp_path / "triton.log", explicit_models=True) as server:
        assert deploy(int8, repository, server.http, server.grpc, name="digits")["outcome"] == "deployed"
        answers, stop = [], threading.Event()

        def client():
            connection = grpcclient.InferenceServerClient(server.grpc)
            (request,) = infer_inputs(grpcclient, [feeds])
            while not stop.is_set():
                try:
                    answers.append(connection.infer("digits", request).get_response().model_version)
                except Exception as error:  # every failure is recorded, then asserted on
                    answers.append(f"error: {error}")
                time.sleep(0.01)
            connection.close()

        thread = threading.Thread(target=client)
        thread.start()
        try:
            with pytest.raises(PipelineError, match=r"rejected; the previous version keeps serving: the candidate did not load"):
                deploy(corrupted, repository, server.http, server.grpc, name="digits")
            with pytest.raises(PipelineError, match=r"rejected; .*output 'logits' of the candidate is the same for all"):
                deploy(zeros, repository, server.http, server.grpc, name="digits")
            during = list(answers)
            assert during and set(during) == {"1"}, "only v1 answered while the broken candidates were checked"
            assert deploy(good, repository, server.http, server.grpc, name="digits")["version"] == 2
            deadline = time.time() + 30
            while answers[-1] != "2" and time.time() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join()
        assert not [a for a in answers if a.startswith("error")], "no request failed while versions changed"
        assert answers[-1] == "2"
        assert rollback(repository, "digits", server.http)["version"] == 1
        assert grpcclient.InferenceServerClient(server.grpc).infer("digits", infer_inputs(grpcclient, [feeds])[0]).get_response().model_version == "1"
        outcomes = [(e["version"], e["outcome"]) for e in history(repository / "digits")]
        assert outcomes == [(1, "deployed"), (2, "rejected"), (2, "rejected"), (2, "deployed"), (1, "rolled back")]

        # Refused before anything changes: a name that is not one folder, another folder than the server's
        # repository, a damaged history.
        before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
        with pytest.raises(PipelineError, match=r"model name '\.\./\.\./escaped' is not one folder name"):
            deploy(good, repository, server.http, server.grpc, name="../../escaped")
        (tmp_path / "elsewhere").mkdir()
        with pytest.raises(PipelineError, match=r"elsewhere is not the server's repository: it holds \[\], the server .* lists \['digits'"):
            deploy(good, tmp_path / "elsewhere", server.http, server.grpc, name="digits")
        (repository / "digits" / "deployments.json").write_text('[{"version": 1, "build": ')
        with pytest.raises(PipelineError, match=r"deployments.json is not valid JSON .*; nothing was changed"):
            deploy(good, repository, server.http, server.grpc, name="digits")
        after = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
        assert set(after) - set(before) == {"elsewhere"}, "nothing written by a refused deploy"

