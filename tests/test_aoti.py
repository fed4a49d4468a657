"""The aoti backend for real, on the CPU: AOTInductor compiles the digits CNN's PyTorch source (its prepared
checkpoint) into a .pt2 package for the `cpu` target's ISA, the steps validate and benchmark it like any
build, a rebuild gives the same bytes, and compose refuses what it cannot build."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline import steps
from pipeline.backends import get_backend
from pipeline.backends.aoti_backend import missing_cpu_flags
from pipeline.backends.onnxruntime_backend import load_onnx_runner
from pipeline.data import load_dataset, make_splits
from pipeline.errors import PipelineError
from pipeline.files import read_json, sha256_file
from pipeline.paths import build_paths, model_paths
from pipeline.steps.chain import build_through

from .conftest import compose_config, copy_prepared

BUILD = "digits_cnn-cpu-fp32"
pytestmark = pytest.mark.slow  # AOTInductor compiles C++ (about 20 s on 2 cores)


@pytest.fixture(scope="module")
def aoti_build(workspace, digits_model, tmp_path_factory):
    """The `cpu` target with aoti pinned, holding the workspace's digits CNN: calibrated and built."""
    root = tmp_path_factory.mktemp("aoti")
    cfg = compose_config(root, "model=[digits_cnn]", "dataset=[digits]", "benchmark=quick", "precision=[fp32]", "target.cpu.runtimes=[aoti]")
    copy_prepared(workspace, cfg, "digits_cnn")
    return build_through(cfg, BUILD, "build")


def test_aoti_compiles_the_pytorch_source_for_the_targets_isa_and_runs_it_like_the_onnx(aoti_build):
    ctx = aoti_build
    engine = build_paths(ctx.config, ctx.name).engine_dir
    sidecar = read_json(engine / "sidecar.json")
    assert sidecar["backend"] == "aoti" and sidecar["artifact"] == "model.pt2" and sidecar["device"] == "cpu"
    # Compiled for every CPU of the target's kind, not -march=native: the `cpu` target runs on any AVX2 host.
    assert sidecar["inductor_options"]["cpp.march"] == "x86-64-v3" and sidecar["inductor_options"]["cpp.simdlen"] == 256
    assert sidecar["checkpoint_sha256"] == sha256_file(model_paths(ctx.config, "digits_cnn").checkpoint)
    assert [s["name"] for s in sidecar["output_specs"]] == ["logits"] and sidecar["output_specs"][0]["shape"] == [-1, 10]
    dataset = load_dataset("digits", ctx.dataset, ctx.model.inputs)
    samples = make_splits(dataset, ctx.dataset).validation[:37]  # a batch size no example used
    feeds = dataset.load(samples)
    with get_backend("aoti").load(engine) as runner, load_onnx_runner(model_paths(ctx.config, "digits_cnn").simplified) as onnx:
        got, want = runner.run(feeds)["logits"], onnx.run(feeds)["logits"]
        assert got.dtype == np.float32 and got.shape == (37, 10)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert runner.run(dataset.load(samples[:1]))["logits"].shape == (1, 10)  # batch 1, where export would specialise
        with pytest.raises(PipelineError, match=r"input 'input' has shape \(2, 1, 9, 9\)"):
            runner.run({"input": np.zeros((2, 1, 9, 9), np.float32)})


def test_an_aoti_build_validates_and_benchmarks_like_any_build(aoti_build):
    metrics = steps.validate(aoti_build)
    assert metrics["gates_passed"] and metrics["top1_agreement"] == 1.0 and metrics["outputs"]["logits"]["max_abs_error"] < 1e-4
    rows = steps.benchmark(aoti_build)
    assert [r["batch_size"] for r in rows] == [1, 8] and all(r["throughput"] > 0 for r in rows)
    built = read_json(build_paths(aoti_build.config, aoti_build.name).build_metrics)
    assert built["runtime"] == "aoti" and built["candidates"][0]["build_seconds"] > 0


def test_a_rebuild_from_unchanged_inputs_gives_the_same_package_bytes(aoti_build, tmp_path):
    engine = build_paths(aoti_build.config, aoti_build.name).engine_dir
    before = {p.name: sha256_file(p) for p in engine.iterdir()}
    steps.build(aoti_build)
    assert {p.name: sha256_file(p) for p in engine.iterdir()} == before


def test_a_package_for_a_cpu_this_host_lacks_is_refused_before_it_runs(aoti_build, tmp_path):
    engine = tmp_path / "engine"
    shutil.copytree(build_paths(aoti_build.config, aoti_build.name).engine_dir, engine)
    sidecar = read_json(engine / "sidecar.json")
    sidecar["inductor_options"]["cpp.march"] = "imaginary"  # no CPU has the flags it would need
    from pipeline.backends.aoti_backend import MARCH_NEEDS

    MARCH_NEEDS["imaginary"] = ("avx2", "amx_fp64_imaginary")
    try:
        (engine / "sidecar.json").write_text(json.dumps(sidecar))
        with pytest.raises(PipelineError, match=r"compiled for -march=imaginary .* this CPU lacks \['amx_fp64_imaginary'\]"):
            get_backend("aoti").load(engine)
    finally:
        del MARCH_NEEDS["imaginary"]
    assert missing_cpu_flags("x86-64-v3") == []  # every machine this suite runs on has AVX2


@pytest.mark.parametrize("overrides, expected", [
    (["model=[onnx_file]", "target.cpu.runtimes=[aoti]"],
     "target 'cpu' cannot build model 'onnx_file' at fp32: none of its runtimes ['aoti'] builds fp32 here (aoti: PyTorch models only, "
     "this one is an ONNX file)"),
    (["precision=[int8]", "target.cpu.runtimes=[aoti]"], "target 'cpu' cannot run precision int8: none of its runtimes ['aoti'] builds int8 here "
     "(aoti: ['fp32', 'bf16'])"),
    (["target.cpu.backend=aoti"], "target.cpu.backend = 'aoti': the runtime calibrate prepares the ONNX for; aoti compiles the PyTorch checkpoint"),
])
def test_compose_refuses_what_aoti_cannot_build(tmp_path, overrides, expected):
    with pytest.raises(PipelineError) as raised:
        compose_config(tmp_path, "model=[digits_cnn]", "dataset=[digits]", "precision=[fp32]", *overrides)
    assert expected in str(raised.value), str(raised.value)


def test_an_aoti_build_packages_its_python_form_and_says_why_there_is_no_native_one(aoti_build):
    written = steps.package(aoti_build)
    assert set(written) == {"python"}
    serving = build_paths(aoti_build.config, aoti_build.name).serving_dir
    version = serving / "python" / BUILD / "1"
    assert (version / "pipeline" / "backends" / "aoti_backend.py").is_file() and (version / "engine" / "model.pt2").is_file()
    assert "TorchScript, not AOTInductor" in (serving / "native" / BUILD / "NO_NATIVE_FORM.txt").read_text()
