"""Stage entry points: bad input -> one clear line on stderr, exit 2, no traceback, nothing written."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.config import write_params

from .conftest import REPO


@pytest.fixture()
def params(tmp_path):
    path = tmp_path / "params.yaml"
    write_params(path, ["model=[digits_cnn]", "dataset=[digits]", f"artifacts_dir={tmp_path / 'a'}", f"metrics_dir={tmp_path / 'm'}"])
    return path


def stage(params, name, *args):
    result = subprocess.run([sys.executable, "-m", f"stages.{name}", *args, "--params", str(params)], cwd=REPO, capture_output=True, text=True)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_missing_checkpoint(params, tmp_path):
    result = stage(params, "export", "--model", "digits_cnn")
    assert result.returncode == 2
    assert f"checkpoint not found: {tmp_path / 'a' / 'models' / 'digits_cnn' / 'prepared' / 'checkpoint.pt'}" in result.stderr
    assert not (tmp_path / "a" / "models" / "digits_cnn" / "model.onnx").exists()


def test_malformed_onnx(params, tmp_path):
    model_dir = tmp_path / "a" / "models" / "digits_cnn"
    model_dir.mkdir(parents=True)
    (model_dir / "model.onnx").write_bytes(b"garbage, not protobuf")
    result = stage(params, "simplify", "--model", "digits_cnn")
    assert result.returncode == 2 and "ONNX" in result.stderr and "model.onnx" in result.stderr
    assert not (model_dir / "simplified.onnx").exists()


def test_missing_upstream_onnx(params):
    result = stage(params, "calibrate", "--build", "digits_cnn-cpu-int8")
    assert result.returncode == 2 and "simplified ONNX not found" in result.stderr


def test_unknown_keys(params):
    result = stage(params, "export", "--model", "nosuch")
    assert result.returncode == 2 and "unknown model 'nosuch'; params.yaml has: ['digits_cnn']" in result.stderr
    result = stage(params, "build", "--build", "digits_cnn-cpu-fp16")
    assert result.returncode == 2 and "unknown build 'digits_cnn-cpu-fp16'" in result.stderr


def test_missing_params_file(tmp_path):
    result = stage(tmp_path / "nope.yaml", "export", "--model", "digits_cnn")
    assert result.returncode == 2 and "run `make params`" in result.stderr


def test_one_line_errors_keep_their_cause_for_debugging(tmp_path):
    """Broad catches wrap the library's error without throwing it away (PIPELINE_DEBUG=1 shows it)."""
    import os

    from pipeline.errors import PipelineError
    from pipeline.onnx_tools.inspect import load_model

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07not a protobuf")
    with pytest.raises(PipelineError) as info:
        load_model(broken)
    assert info.value.__cause__ is not None
    model_dir = tmp_path / "a" / "models" / "digits_cnn"
    model_dir.mkdir(parents=True)
    (model_dir / "model.onnx").write_bytes(b"garbage")
    params = tmp_path / "params.yaml"
    write_params(params, ["model=[digits_cnn]", "dataset=[digits]", f"artifacts_dir={tmp_path / 'a'}", f"metrics_dir={tmp_path / 'm'}"])
    result = subprocess.run([sys.executable, "-m", "stages.simplify", "--model", "digits_cnn", "--params", str(params)], cwd=REPO,
                            capture_output=True, text=True, env=dict(os.environ, PIPELINE_DEBUG="1"))
    assert result.returncode == 2 and "Traceback" in result.stderr and "DecodeError" in result.stderr


def test_a_hand_broken_params_file_is_one_line_naming_where(params, tmp_path):
    params.write_text(params.read_text().replace("calibration:", "calibration: [", 1))
    result = stage(params, "prepare", "--model", "digits_cnn")
    assert result.returncode == 2 and f"{params} is not valid YAML at line" in result.stderr and "make params" in result.stderr


def test_sigterm_unwinds_a_stage_so_it_leaves_no_temporaries(params, tmp_path):
    """A terminated stage (a CI runner stopping a job, `kill`) cleans up like Ctrl-C: no lock, no half-written output."""
    import signal
    import time

    process = subprocess.Popen([sys.executable, "-m", "stages.prepare", "--model", "digits_cnn", "--params", str(params)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    models = tmp_path / "a" / "models" / "digits_cnn"
    deadline = time.time() + 120
    while not list(models.glob(".prepared.*.tmp")) and time.time() < deadline:  # training has started writing
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in output and "Traceback" not in output, output
    assert not list(models.glob(".*")), "no temporary or lock left behind"
