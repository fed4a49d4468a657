"""No leftovers, no interference: killed stages leave nothing in the system temp folder and their
temporaries go with the next run; two writers of one output never run at once; settings a call
changes (loggers, torch threads) are restored for the caller."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest

from pipeline import steps
from pipeline.config import resolve_build, resolve_model
from pipeline.errors import PipelineError
from pipeline.files import atomic_dir, output_lock, remove_stale_temporaries, scratch_dir
from pipeline.paths import build_paths, model_paths

from .conftest import REPO, compose_config

pytestmark = pytest.mark.slow
BUILD = "digits_cnn-cpu-int8"


@pytest.fixture()
def project(workspace, digits_model, tmp_path):
    """A params.yaml of its own (artifacts beside it) holding a copy of the simplified digits CNN."""
    import shutil

    cfg = compose_config(tmp_path, "model=[digits_cnn]", "dataset=[digits]")
    model_paths(cfg, "digits_cnn").root.mkdir(parents=True)
    shutil.copy(model_paths(workspace, "digits_cnn").simplified, model_paths(cfg, "digits_cnn").simplified)
    return cfg, tmp_path / "params.yaml"


def _calibrate(params, temp_dir, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, TMPDIR=str(temp_dir), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "stages.calibrate", "--build", BUILD, "--params", str(params)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _wait_for(condition, process, what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"calibrate ended before {what}: {process.stdout.read()}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def test_a_killed_calibration_leaves_nothing_in_the_system_temp_and_the_next_run_cleans_up(project, tmp_path):
    cfg, params = project
    system_temp = tmp_path / "system_temp"
    system_temp.mkdir()
    build_dir = build_paths(cfg, BUILD).root
    process = _calibrate(params, system_temp)
    # ORT's augmented calibration graph is written into the stage's scratch folder: kill while it exists.
    _wait_for(lambda: list(build_dir.glob(".calibrated.scratch-*.tmp/*/augmented.onnx")), process, "the statistics pass")
    process.kill()
    process.wait()
    assert not list(system_temp.iterdir()), "nothing may be written to the system temp folder"
    assert list(build_dir.glob(".calibrated.*.tmp")), "the kill landed mid-stage"
    rerun = _calibrate(params, system_temp)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert not list(build_dir.glob(".*.tmp")) and not list(build_dir.glob(".*.lock"))
    assert (build_dir / "calibrated" / "model.onnx").is_file()


def test_a_second_run_of_the_same_stage_is_refused_while_the_first_writes(project, tmp_path):
    cfg, params = project
    build_dir = build_paths(cfg, BUILD).root
    first = _calibrate(params, tmp_path)
    _wait_for(lambda: (build_dir / ".calibrated.lock").exists() and list(build_dir.glob(".calibrated.scratch-*.tmp")), first, "the first run's lock")
    second = _calibrate(params, tmp_path)
    output, _ = second.communicate(timeout=120)
    assert second.returncode == 2 and "another run is writing" in output and "calibrated" in output, output
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output
    assert (build_dir / "calibrated" / "model.onnx").is_file() and not list(build_dir.glob(".*.tmp"))


def test_compose_is_refused_while_a_stage_runs_and_a_stage_whose_params_changed_fails(project, tmp_path):
    """DVC lets go of its lock while stage commands run: the stages hold the project's own, so a compose
    mid-run cannot leave dvc.lock recording params the stage never read."""
    cfg, params = project
    build_dir = build_paths(cfg, BUILD).root
    compose = [sys.executable, "-m", "pipeline", "compose", "--output", str(params), "model=[digits_cnn]", "dataset=[digits]",
               "calibration.num_samples=200", f"artifacts_dir={tmp_path / 'a'}", f"metrics_dir={tmp_path / 'm'}", f"plots_dir={tmp_path / 'p'}"]
    before = params.read_bytes()
    first = _calibrate(params, tmp_path)
    _wait_for(lambda: list(build_dir.glob(".calibrated.scratch-*.tmp")), first, "the stage at work")
    refused = subprocess.run(compose, cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and f"a stage of {tmp_path} is running" in refused.stderr, refused.stderr
    assert params.read_bytes() == before
    # An edit by other means (an editor, a script) while the stage runs: the stage fails instead of passing stale.
    params.write_text(params.read_text().replace("num_samples: 500", "num_samples: 300", 1))
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 2 and "params.yaml changed while this stage ran" in output, output
    assert subprocess.run(compose, cwd=REPO, capture_output=True, text=True).returncode == 0, "compose works once the stage is done"


def test_stale_temporaries_go_and_live_ones_stay(tmp_path):
    (tmp_path / ".engine.abc123.tmp").mkdir()
    (tmp_path / ".engine.abc123.tmp" / "model.onnx").write_bytes(b"half")
    (tmp_path / ".validate.json.x1y2.tmp").write_text("{")
    (tmp_path / ".serve.json.scratch-0a1b.tmp").mkdir()  # a killed stage's scratch folder
    (tmp_path / ".benchmark.json.lock").write_text("")  # a killed writer's lock file
    with atomic_dir(tmp_path / "calibrated") as live, scratch_dir(tmp_path / "calibrated") as scratch:
        (live / "model.onnx").write_bytes(b"in progress")
        assert remove_stale_temporaries(tmp_path) == 3
        assert live.is_dir() and scratch.is_dir(), "a live writer's temporary and scratch folders stay"
        with pytest.raises(PipelineError, match=r"another run is writing .*calibrated right now"):
            with output_lock(tmp_path / "calibrated"):
                pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibrated"]


def test_compose_is_refused_while_dvc_runs(tmp_path):
    from dvc.lock import make_lock

    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    lock = make_lock(str(tmp_path / ".dvc" / "tmp" / "lock"), tmp_dir=str(tmp_path / ".dvc" / "tmp"))
    command = [sys.executable, "-m", "pipeline", "compose", "--output", str(tmp_path / "params.yaml"), "model=[digits_cnn]", "dataset=[digits]"]
    with lock:
        refused = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and "DVC is running in" in refused.stderr and not (tmp_path / "params.yaml").exists()
    assert subprocess.run(command, cwd=REPO, capture_output=True, text=True).returncode == 0


def test_library_calls_restore_the_callers_logging_and_torch_settings(project, workspace):
    import torch

    cfg, _ = project
    root = logging.getLogger()
    before = (root.level, torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    steps.calibrate(resolve_build(cfg, BUILD))  # ORT's quantizer logs on the root logger
    steps.prepare(cfg, resolve_model(cfg, "digits_cnn"))
    assert (root.level, torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
