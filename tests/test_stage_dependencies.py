"""dvc.yaml declares exactly what each stage reads: nothing read but undeclared, nothing declared but
unread. Every stage of a real project (the digits CNN and a bring-your-own ONNX on the CPU target,
then fp16/int8 engines for TensorRT-RTX) runs under tests/stage_reads.py, which records the config
keys, project modules and files the stage really reads; DVC's own resolution of dvc.yaml says what
is declared. Instance names are folded (digits_cnn -> <model>, ...) so each stage type is compared
across all its instances.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import onnx
import pytest
import yaml

from .conftest import REPO
from .user_models import small_classifier, write_images

pytestmark = pytest.mark.slow

PROJECT_FILES = ["conf", "pipeline", "stages", "hydra_plugins", "dvc.yaml", ".dvcignore"]
STRUCTURAL = {"artifacts_dir", "metrics_dir", "plots_dir"}  # they name the out paths: DVC sees a change there anyway
# What no run here can read, and why. Anything else declared must be read by some instance.
# Declared to rerun a stage when it changes, not read by it: the target's environment (library versions, device).
TRIGGERS = {"artifacts/environment/<target>.json"}
UNREAD_HERE = {
    "environment": {"pipeline/backends/cuda_runtime.py": "only TensorRT and ONNX Runtime CUDA targets look for a GPU",
                    "pipeline/backends/cuda_runners.py": "the stage runs no model"},
    "prepare": {"model.<model>.architecture": "torchvision models only", "model.<model>.bn_recalibration_batches": "torchvision models only"},
    "export": {"model.<model>.architecture": "torchvision models only"},
    "build": {"pipeline/onnx_tools/__init__.py": "ONNX Runtime CUDA targets read the artifact's tensor specs from the ONNX",
              "model.<model>.architecture": "aoti builds of torchvision models only",
              "pipeline/backends/cuda_runners.py": "loading a CUDA candidate to gate and time it needs a GPU",
              "pipeline/onnx_tools/inspect.py": "ONNX Runtime CUDA targets read the artifact's tensor specs from the ONNX"},
    "calibrate": {"model.<model>.outputs": "read by the accuracy search, only when plain INT8 misses a gate",
                  "pipeline/onnx_tools/fusion.py": "transformer models only (MiniLM: tests/test_cpu_targets.py)",
                  "pipeline/onnx_tools/smoothing.py": "models with smoothquant.alpha only (MiniLM: tests/test_models_end_to_end.py)"},
    "validate": {"pipeline/backends/tensorrt_backend.py": "loading an engine needs a GPU",
                 "pipeline/backends/cuda_runtime.py": "loading an engine needs a GPU",
                 "pipeline/backends/cuda_runners.py": "loading an engine needs a GPU"},
    "benchmark": {"pipeline/backends/tensorrt_backend.py": "loading an engine needs a GPU",
                  "pipeline/backends/cuda_runtime.py": "loading an engine needs a GPU",
                  "pipeline/backends/cuda_runners.py": "loading an engine needs a GPU",
                  "pipeline/evaluate/gpu_benchmark.py": "GPU targets only"},
    "serve": {"pipeline/backends/tensorrt_backend.py": "serving a TensorRT engine needs a GPU",
              "pipeline/backends/aoti_backend.py": "aoti builds are not served here (.venv-serving holds no torch)",
              "pipeline/backends/cuda_runtime.py": "serving a CUDA build needs a GPU",
              "pipeline/backends/cuda_runners.py": "serving a CUDA build needs a GPU"},
}


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(list(args), cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _declared(root: Path) -> list:
    """DVC's resolution of dvc.yaml for the current params.yaml: one entry per stage instance."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    stages = []
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            deps = [d for d in stage.deps if not isinstance(d, ParamsDependency)]
            params = [key for d in stage.deps if isinstance(d, ParamsDependency) for key in d.params]
            stages.append({"name": stage.name, "cmd": stage.cmd, "deps": [d.def_path for d in deps], "params": params,
                           "outs": [o.def_path for o in stage.outs]})
    return stages


def _fold(text: str, names: dict) -> str:
    """Replace instance names (builds, models, targets, ...) in a key or path by placeholders."""
    for name, placeholder in names.items():
        if name.startswith("/"):  # a whole path, e.g. the user's file
            text = text.replace(name, placeholder)
    separators = "./"
    tokens, current = [], ""
    for char in text:
        if char in separators:
            tokens += [current, char]
            current = ""
        else:
            current += char
    tokens.append(current)
    folded = []
    for token in tokens:
        for name, placeholder in names.items():
            if token == name:
                token = placeholder
                break
        folded.append(token)
    joined = "".join(folded)
    for name, placeholder in names.items():  # file names such as plots/latency/<build>.json
        joined = joined.replace(f"/{name}.json", f"/{placeholder}.json")
    return joined


def _code_files(path: str) -> set:
    full = Path(path)
    if full.is_dir():
        return {p.as_posix() for p in full.rglob("*.py") if "__pycache__" not in p.parts}
    return {path}


@pytest.fixture(scope="module")
def observed(tmp_path_factory, legacy_onnx):
    """Run every stage instance under the recorder; return (declared, observed) per stage type."""
    root = tmp_path_factory.mktemp("deps_project")
    for name in PROJECT_FILES:
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    _run(root, "dvc", "init", "-q", "--no-scm")
    user_files = tmp_path_factory.mktemp("user_files")
    user_model, user_images = small_classifier(user_files / "classifier.onnx"), user_files / "images"
    write_images(user_images, 70, size=(64, 64))
    configurations = [
        (["model=[digits_cnn,onnx_file]", f"model.onnx_file.weights_path={legacy_onnx}", "dataset=[digits]", "benchmark=quick",
          "serving.concurrency=[1,4]", "serving.seconds_per_level=0.5", "serving.server_scenario.seconds_per_rate=0.5"], None),
        (["model=[digits_cnn]", "dataset=[digits]", "target=[rtx4090]", "precision=[fp16,int8]"], {"environment", "calibrate", "build", "package"}),
        # The batching search (a tiny one) reads what package reads only when it is on.
        (["model=[digits_cnn]", "dataset=[digits]", "precision=[int8]", "serving.batching_search.enabled=true", "serving.batching_search.instances=[1]",
          "serving.batching_search.max_queue_delay_us=[1000]", "serving.batching_search.preferred_batch_sizes=[[]]", "serving.batching_search.concurrency=[2]",
          "serving.batching_search.seconds_per_trial=0.5", "serving.agreement_samples=8"], {"package"}),
        # Dynamic INT8 ranges and the per-layer speed guard (on the portable target, so any host times layers).
        (["model=[digits_cnn]", "dataset=[digits]", "precision=[int8]", "model.digits_cnn.int8_activations=dynamic",
          "target.cpu.quantization.min_layer_speedup=1.02"], {"calibrate"}),
        # A target that measures runtimes (OpenVINO and ONNX Runtime built, gated and timed; bf16 is OpenVINO's
        # alone), the chosen one validated, benchmarked, packaged and served.
        (["model=[digits_cnn]", "dataset=[digits]", "target=[cpu_amx]", "precision=[int8,bf16]", "serving.warmup_samples=2",
          "target.cpu_amx.quantization.min_layer_speedup=null", "benchmark=quick", "serving.precisions=[int8,bf16]", "serving.concurrency=[1]", "serving.seconds_per_level=0.5",
          "serving.server_scenario.seconds_per_rate=0.5", "serving.agreement_samples=8"],
         {"environment", "calibrate", "build", "validate", "benchmark", "package", "serve"}),
        # A target that may compile the PyTorch source (AOTInductor) beside ONNX Runtime: the checkpoint and the model's code.
        (["model=[digits_cnn]", "dataset=[digits]", "precision=[fp32]", "target.cpu.runtimes=[aoti]", "benchmark=quick", "serving.warmup_samples=2"],
         {"environment", "build", "validate", "benchmark", "package"}),
        # The user's own images: a folder outside the project, a dependency of the stages that read data.
        (["model=[onnx_file]", f"model.onnx_file.weights_path={user_model}", "model.onnx_file.dataset=image_folder", "dataset=[image_folder]",
          "precision=[int8]", "model.onnx_file.inputs=[{name: input, shape: [-1, 3, 64, 64], dtype: float32}]",
          "model.onnx_file.gates.max_accuracy_drop=null", f"dataset.image_folder.path={user_images}", "dataset.image_folder.num_validation=20",
          "dataset.image_folder.preprocess.size=[64,64]", "calibration.num_samples=40", "calibration.search.enabled=false",
          "serving.agreement_samples=8", "serving.warmup_samples=2", "benchmark=quick",
          "target.cpu.runtimes=[onnxruntime,openvino]"],   # the build gates and times runtimes on the user's images
         {"prepare", "export", "simplify", "environment", "calibrate", "build", "validate", "benchmark", "package"}),
    ]
    declared, seen = defaultdict(lambda: defaultdict(set)), defaultdict(lambda: defaultdict(set))
    env = dict(os.environ, PYTHONPATH=str(root), STAGE_READS_ALSO=os.pathsep.join([str(legacy_onnx.parent), str(user_files)]),
               TRT_PIPELINE_SERVING_ENV=str((REPO / ".venv-serving").resolve()))
    for overrides, only in configurations:
        # The speed gate runs (its reads are recorded) with a limit no machine misses.
        _run(root, sys.executable, "-m", "pipeline", "compose", "benchmark.min_quantized_speedup=0.001", *overrides)
        params = yaml.safe_load((root / "params.yaml").read_text())
        names = {b: "<build>" for b in params["builds"]}
        names.update({m: "<model>" for m in params["model"]})
        names.update({t: "<target>" for t in params["target"]})
        names.update({p: "<precision>" for p in params["precision"]})
        names.update({d: "<dataset>" for d in params["dataset"]})
        names[str(legacy_onnx)] = "<user file>"
        names[str(user_model)] = "<user file>"
        names[str(user_images)] = "<user data>"
        for stage in _declared(root):
            kind = stage["name"].split("@")[0]
            if only and kind not in only:
                continue
            out = root / "reads.json"
            out.unlink(missing_ok=True)
            command = shlex.split(stage["cmd"])
            assert command[:2] == ["python", "-m"], stage["cmd"]
            result = subprocess.run([sys.executable, str(REPO / "tests" / "stage_reads.py"), str(out), *command[2:]], cwd=root,
                                    env=env, capture_output=True, text=True)
            got = json.loads(out.read_text()) if out.is_file() else {"status": "no record"}
            assert result.returncode == 0 and got["status"] == 0, f"{stage['name']} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            for key in stage["params"]:
                declared[kind]["params"].add(_fold(key, names))
            for dep in stage["deps"]:
                if not dep.startswith("/") and dep.split("/")[0] in ("pipeline", "stages"):
                    declared[kind]["modules"] |= _code_files(str(root / dep))
                else:
                    declared[kind]["files"].add(_fold(dep, names))
            declared[kind]["outs"] |= {_fold(o, names) for o in stage["outs"]}
            seen[kind]["params"] |= {_fold(k, names) for k in got["params"]}
            # Project source a stage reads as a file (package copies the Python-backend model and the
            # runner's modules into the repository) is code it depends on, like what it imports.
            source_read = {r for r in got["reads"] if r.endswith(".py") and r.split("/")[0] in ("pipeline", "stages")}
            seen[kind]["modules"] |= {str(root / m) for m in set(got["modules"]) | source_read}
            seen[kind]["files"] |= {_fold(r, names) for r in set(got["reads"]) - source_read}
            seen[kind]["writes"] |= {_fold(w, names) for w in got["writes"]}
    return root, declared, seen


def _ran(seen, declared, stage: str) -> None:
    assert seen[stage]["modules"] and declared[stage]["modules"], f"no instance of {stage} was recorded"


def _covers(declared: str, read: str, sep: str) -> bool:
    return read == declared or read.startswith(declared + sep)


STAGES = ["environment", "prepare", "export", "simplify", "calibrate", "build", "validate", "benchmark", "package", "serve", "report"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_param_a_stage_reads_is_declared_and_every_declared_param_is_read(observed, stage):
    _, declared, seen = observed
    _ran(seen, declared, stage)
    reads = seen[stage]["params"] - STRUCTURAL
    keys = declared[stage]["params"]
    undeclared = sorted(r for r in reads if not any(_covers(k, r, ".") for k in keys))
    unread = sorted(k for k in keys if not any(_covers(k, r, ".") or _covers(r, k, ".") for r in reads) and k not in UNREAD_HERE.get(stage, {}))
    assert not undeclared and not unread, f"{stage}: read but not declared {undeclared}; declared but never read {unread}"


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_a_stage_imports_is_declared_and_every_declared_module_is_imported(observed, stage):
    root, declared, seen = observed
    _ran(seen, declared, stage)
    allowed = {str(root / path) for path in UNREAD_HERE.get(stage, {}) if path.endswith(".py")}
    undeclared = sorted(Path(m).relative_to(root).as_posix() for m in seen[stage]["modules"] - declared[stage]["modules"])
    unread = sorted(Path(m).relative_to(root).as_posix() for m in declared[stage]["modules"] - seen[stage]["modules"] - allowed)
    assert not undeclared and not unread, f"{stage}: imported but not declared {undeclared}; declared but never imported {unread}"


@pytest.mark.parametrize("stage", STAGES)
def test_every_file_a_stage_reads_is_declared_and_it_writes_only_its_outputs(observed, stage):
    _, declared, seen = observed
    _ran(seen, declared, stage)
    deps = declared[stage]["files"]
    undeclared = sorted(r for r in seen[stage]["files"] if not any(_covers(d, r, "/") for d in deps))
    unread = sorted(d for d in deps - TRIGGERS if not any(_covers(d, r, "/") for r in seen[stage]["files"]))
    outs = declared[stage]["outs"]
    stray = sorted(w for w in seen[stage]["writes"] if not any(_covers(o, w, "/") for o in outs))
    assert not undeclared and not unread and not stray, (
        f"{stage}: read but not declared {undeclared}; declared but never read {unread}; written outside its outputs {stray}")


def test_the_recorder_sees_what_it_must(observed):
    """The recorder itself: it saw the user's file, an artifact ORT opens in C++, and a params subtree."""
    _, _, seen = observed
    assert "<user file>" in seen["prepare"]["files"]
    assert "artifacts/models/<model>/simplified.onnx" in seen["validate"]["files"]  # ONNX Runtime reads it
    assert "calibration.method" in seen["calibrate"]["params"] and "builds" in seen["report"]["params"]
    assert any(read.startswith("<user data>/") for read in seen["calibrate"]["files"]), "the user's images are read and declared"


def test_replacing_the_users_model_file_in_place_reruns_its_stages(observed, legacy_onnx, tmp_path):
    """DVC must see the user's file: same path, new bytes -> prepare and what follows rerun."""
    import numpy as np
    from onnx import numpy_helper

    root, _, _ = observed
    user_file = tmp_path / "model.onnx"
    shutil.copy(legacy_onnx, user_file)
    _run(root, sys.executable, "-m", "pipeline", "compose", "model=[onnx_file]", f"model.onnx_file.weights_path={user_file}", "dataset=[digits]")
    _run(root, "dvc", "repro", "simplify@onnx_file")
    assert "up to date" in _run(root, "dvc", "status", "simplify@onnx_file", "--with-deps").stdout.lower()
    model = onnx.load(str(user_file))
    weight = model.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1.5), weight.name))
    onnx.save(model, str(user_file))
    status = _run(root, "dvc", "status", "prepare@onnx_file").stdout
    assert "prepare@onnx_file" in status and str(user_file) in status
    rerun = _run(root, "dvc", "repro", "simplify@onnx_file").stdout
    assert {"prepare@onnx_file", "export@onnx_file", "simplify@onnx_file"} <= set(re.findall(r"Running stage '([^']+)'", rerun))
