"""What several test modules share: DVC projects made of the project's own files (a git + DVC repository,
clones with a shared remote) and commands run in them."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from .conftest import NO_SPEED_GATE, REPO

SMALL = ["model=[digits_cnn]", "dataset=[digits]", "benchmark=quick", "serving.seconds_per_level=0.5", NO_SPEED_GATE]
PROJECT_FILES = ["conf", "pipeline", "stages", "hydra_plugins", "dvc.yaml", ".dvcignore", ".gitignore"]


def dvc_env() -> dict:
    """The environment DVC runs stages in: this venv's python first, no analytics, the serving environment."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1", TRT_PIPELINE_SERVING_ENV=str(REPO / ".venv-serving"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # stages' `python` = this venv
    return env


def run(repo: Path, *args: str, check: bool = True, extra_env: dict = None, timeout_s: float = 900) -> subprocess.CompletedProcess:
    """``args`` in ``repo``, bounded by ``timeout_s``. Output goes to files, not pipes: a daemon the command
    leaves behind (DVC's queue workers inherit its stdout) must not keep the test waiting for end of file."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(list(args), cwd=repo, env={**dvc_env(), **(extra_env or {})}, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=err, text=True, start_new_session=True)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            out.seek(0), err.seek(0)
            raise AssertionError(f"{' '.join(args)} did not finish within {timeout_s:.0f} s:\n{out.read()[-4000:]}\n{err.read()[-4000:]}")
        out.seek(0), err.seek(0)
        result = subprocess.CompletedProcess(list(args), process.returncode, out.read(), err.read())
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def ran(result: subprocess.CompletedProcess) -> set:
    """The stages that ran, without the environment probes, which run on every `dvc repro` by design
    and change nothing downstream unless the environment did (tests/test_remote.py)."""
    stages = set(re.findall(r"Running stage '([^']+)'", result.stdout + result.stderr))
    return {stage for stage in stages if not stage.startswith("environment@")}


def set_param(repo: Path, dotted: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    node = params
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def project_repo(root: Path, *overrides: str) -> Path:
    """A git + DVC repository of the project's files and DVC settings (Hydra on, the default remote, the
    plot templates), params composed with ``overrides``, committed."""
    root.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    run(root, "git", "init", "-q")
    run(root, "git", "config", "user.email", "ci@example.invalid")
    run(root, "git", "config", "user.name", "ci")
    run(root, "dvc", "init", "-q")
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    run(root, sys.executable, "-m", "pipeline", "compose", *overrides)
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "init")
    return root


def origin_repo(root: Path, *overrides: str) -> Path:
    """``root``/origin: a project repository (the small matrix unless ``overrides``)."""
    return project_repo(root / "origin", *(overrides or SMALL))


def clone_with_remote(origin: Path, path: Path, remote: Path) -> Path:
    """A git clone of ``origin`` at ``path`` whose DVC remote 'shared' is ``remote`` (one machine of many)."""
    run(origin.parent, "git", "clone", "-q", str(origin), str(path))
    run(path, "dvc", "remote", "modify", "--local", "shared", "url", str(remote))  # this test's own shared folder
    return path
