"""Results shared through a DVC remote, for real: two clones with separate caches and one remote.

Machine A runs the pipeline, commits dvc.lock and pushes with the run-cache; machine B clones that
commit, pulls, and `dvc repro` runs no stage; a benchmark param changed on B reruns the benchmark stages
and the report only. Machine C has no dvc.lock at all (a branch that never committed one): it fetches
the run-cache and `dvc repro --pull` restores every stage from it instead of running it. Machine E's
committed dvc.lock names results made on another CPU kind that never reached the remote: `python -m
pipeline run --report` restores every stage from the run-cache all the same."""
from __future__ import annotations

import json
import sys

import pytest
import yaml

from .conftest import REPO
from .helpers import clone_with_remote, origin_repo, ran, run, set_param

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def machines(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    origin = origin_repo(root)
    remote = root / "shared-storage"
    a = clone_with_remote(origin, root / "machine_a", remote)
    first = run(a, "dvc", "repro")
    run(a, "dvc", "push", "--run-cache")
    run(a, "git", "add", "dvc.lock")
    run(a, "git", "commit", "-qm", "results of machine A")
    b = clone_with_remote(a, root / "machine_b", remote)
    c = clone_with_remote(origin, root / "machine_c", remote)
    return a, b, c, first


def test_the_project_ships_a_default_remote():
    assert run(REPO, "dvc", "config", "core.remote").stdout.strip() == "shared"
    # A folder beside the clone (DVC resolves the URL relative to .dvc/).
    assert run(REPO, "dvc", "config", "--project", "remote.shared.url").stdout.strip() == str(REPO.resolve().parent / "trt-pipeline-remote")


def _cache_files(repo) -> int:
    cache = repo / ".dvc" / "cache"
    return sum(1 for p in cache.rglob("*") if p.is_file()) if cache.exists() else 0


def test_a_second_machine_pulls_and_runs_nothing(machines):
    a, b, _, first = machines
    assert "report" in ran(first), "machine A ran the pipeline"
    assert _cache_files(b) == 0, "B starts with its own, empty cache"
    run(b, "dvc", "pull", "--run-cache")
    second = run(b, "dvc", "repro")
    assert ran(second) == set(), second.stdout
    assert (b / "reports" / "summary.md").read_text() == (a / "reports" / "summary.md").read_text()


def test_a_machine_without_dvc_lock_restores_every_stage_from_the_run_cache(machines):
    a, _, c, _ = machines
    assert not (c / "dvc.lock").exists()
    run(c, "dvc", "fetch", "--run-cache")
    result = run(c, "dvc", "repro", "--pull")
    assert ran(result) == set(), result.stdout
    assert "is cached - skipping run" in result.stdout + result.stderr
    assert (c / "artifacts" / "builds" / "digits_cnn-cpu-int8" / "engine" / "model.onnx").read_bytes() == \
        (a / "artifacts" / "builds" / "digits_cnn-cpu-int8" / "engine" / "model.onnx").read_bytes()


def test_a_dvc_lock_from_another_cpu_kind_still_restores_from_the_run_cache(machines, tmp_path):
    """E's committed dvc.lock has A's dependencies but other outputs (as another CPU kind would make them,
    never pushed: each output hash replaced by one that no cache holds). Plain `dvc repro --pull` gives up
    on such a lock and runs the stage; `pipeline run --report` forgets those entries and the run-cache
    answers, so nothing runs and the lock ends as A's."""
    a, _, _, _ = machines
    e = clone_with_remote(a, tmp_path / "machine_e", a.parent / "shared-storage")
    lock = _lock(e)
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            if "md5" in out:
                out["md5"] = ("f" * 32) + (".dir" if out["md5"].endswith(".dir") else "")
    (e / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    run(e, "git", "commit", "-qam", "dvc.lock made on another CPU kind")
    result = run(e, sys.executable, "-m", "pipeline", "run", "--report")
    assert ran(result) == set(), result.stdout
    assert "looking them up in the run-cache" in result.stderr
    outputs = lambda repo: {o["path"]: o.get("md5") for s in _lock(repo)["stages"].values() for o in s.get("outs", [])}
    assert outputs(e) == outputs(a)


def test_a_corrupted_object_in_the_remote_is_refused_not_trusted(machines, tmp_path):
    """Bytes flipped in the engine's object on the shared storage: a clone pulling it fails naming the
    object (the remote verifies what it serves, .dvc/config `verify = true`), and no engine lands."""
    import shutil

    a, _, _, _ = machines
    storage = tmp_path / "storage"
    shutil.copytree(a.parent / "shared-storage", storage)  # a copy: the other tests keep the good one
    engine_md5 = next(o["md5"] for stage in _lock(a)["stages"].values() for o in stage.get("outs", [])
                      if o["path"].endswith("digits_cnn-cpu-int8/engine"))
    listing = json.loads((storage / "files" / "md5" / engine_md5[:2] / engine_md5[2:]).read_text())
    onnx_md5 = next(entry["md5"] for entry in listing if entry["relpath"] == "model.onnx")
    object_path = storage / "files" / "md5" / onnx_md5[:2] / onnx_md5[2:]
    data = bytearray(object_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    object_path.chmod(0o644)
    object_path.write_bytes(bytes(data))
    d = clone_with_remote(a, tmp_path / "machine_d", storage)
    result = run(d, "dvc", "pull", check=False)
    assert result.returncode != 0, "a corrupted object must not be pulled silently"
    engine = d / "artifacts" / "builds" / "digits_cnn-cpu-int8" / "engine" / "model.onnx"
    assert not engine.exists() or engine.read_bytes() != bytes(data)


def _lock(repo) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())


def test_a_benchmark_param_change_on_the_second_machine_reruns_only_benchmarks(machines):
    _, b, _, _ = machines
    set_param(b, "benchmark.iterations", 7)
    result = run(b, "dvc", "repro")
    assert ran(result) == {"benchmark@digits_cnn-cpu-fp32", "benchmark@digits_cnn-cpu-int8", "report"}


def test_another_onnxruntime_rebuilds_exactly_what_uses_it(machines):
    """B runs with the previous ONNX Runtime release first on the path (a real install, `make venv`):
    the environment file changes, so calibrate and everything after it rerun; the model stages don't.
    What B pulled from A (built by A's ONNX Runtime) is rebuilt, not trusted."""
    _, b, _, _ = machines
    previous = REPO / ".venv-ort-previous"
    assert (previous / "onnxruntime").is_dir(), "make venv installs it"
    env = {"PYTHONPATH": str(previous)}
    builds = ("digits_cnn-cpu-fp32", "digits_cnn-cpu-int8")
    # Up to package: Triton's Python backend serves from .venv-serving, with the pinned ONNX Runtime.
    targets = [f"{stage}@{b}" for stage in ("validate", "benchmark", "package") for b in builds] + ["environment@cpu"]
    result = run(b, "dvc", "repro", *targets, extra_env=env)
    expected = {f"{stage}@{b}" for stage in ("calibrate", "build", "validate", "benchmark", "package") for b in builds}
    assert ran(result) == expected, result.stdout
    assert "prepare@digits_cnn" not in ran(result) and "simplify@digits_cnn" not in ran(result)
    recorded = json.loads((b / "artifacts" / "environment" / "cpu.json").read_text())
    assert recorded["engine"]["onnxruntime"] == recorded["quantizer"]["onnxruntime"] == "1.31.0"
    assert ran(run(b, "dvc", "repro", *targets, extra_env=env)) == set(), "same environment again: nothing to do"
    back = run(b, "dvc", "repro")
    # Back on the pinned version nothing needs running: the run-cache still holds those results.
    assert ran(back) == set() and "is cached - skipping run" in back.stdout + back.stderr
    sidecar = json.loads((b / "artifacts" / "builds" / "digits_cnn-cpu-int8" / "engine" / "sidecar.json").read_text())
    assert sidecar["versions"]["onnxruntime"] == "1.32.0"
