"""The build matrix split across machines by target, through one DVC remote, for real: machine A runs
the `cpu` target's share, machine B the `cpu_avx2` share, machine C only gathers the report; no stage
runs on two machines, and the report holds both targets."""
from __future__ import annotations

import sys

import pytest

from .helpers import SMALL, clone_with_remote, origin_repo, ran, run

pytestmark = pytest.mark.slow

TARGETS = "target=[cpu,cpu_avx2]"


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    origin = origin_repo(root, *SMALL, TARGETS)
    remote = root / "shared-storage"
    machines = {name: clone_with_remote(origin, root / name, remote) for name in ("a", "b", "c")}
    outputs = {
        "a": run(machines["a"], sys.executable, "-m", "pipeline", "run", "--target", "cpu"),
        "b": run(machines["b"], sys.executable, "-m", "pipeline", "run", "--target", "cpu_avx2"),
        "c": run(machines["c"], sys.executable, "-m", "pipeline", "run", "--report"),
    }
    return machines, outputs


def test_each_machine_runs_only_its_targets_stages_and_none_runs_twice(split):
    _, outputs = split
    a, b, c = (ran(outputs[m]) for m in "abc")
    assert a and all(stage.endswith(("@digits_cnn", "-cpu-fp32", "-cpu-int8")) for stage in a), a
    assert b and all(stage.endswith(("-cpu_avx2-fp32", "-cpu_avx2-int8")) for stage in b), "model stages came from A's run-cache"
    assert c == {"report"}
    assert not (a & b) and not (a & c) and not (b & c)


def test_the_third_machine_reports_every_target(split):
    machines, _ = split
    summary = (machines["c"] / "reports" / "summary.md").read_text()
    assert "## digits_cnn on cpu" in summary and "## digits_cnn on cpu_avx2" in summary


def test_a_target_this_machine_cannot_build_is_refused_naming_what_is_missing(split, tmp_path):
    machines, _ = split
    params = tmp_path / "params.yaml"
    run(machines["c"], sys.executable, "-m", "pipeline", "compose", "--output", str(params), *SMALL, "target=[cpu,h100]")
    result = run(machines["c"], sys.executable, "-m", "pipeline", "run", "--target", "h100", "--params", str(params), check=False)
    said = result.stdout + result.stderr
    assert result.returncode != 0 and "this machine cannot build target 'h100'" in said and "tensorrt" in said.lower()
    unknown = run(machines["c"], sys.executable, "-m", "pipeline", "run", "--target", "l4", check=False)
    assert unknown.returncode != 0 and "target 'l4' is not selected" in unknown.stdout + unknown.stderr


def test_no_reachable_remote_is_one_clear_error(split, tmp_path):
    machines, _ = split
    a = machines["a"]
    run(a, "dvc", "remote", "modify", "--local", "shared", "url", str(tmp_path / "not-mounted" / "remote"))
    result = run(a, sys.executable, "-m", "pipeline", "run", "--target", "cpu", check=False)
    said = result.stdout + result.stderr
    assert result.returncode != 0 and "the DVC remote 'shared' is unreachable" in said and "dvc remote modify shared url" in said
    run(a, "dvc", "remote", "remove", "--local", "shared")
    run(a, "dvc", "remote", "default", "--unset")
    none = run(a, sys.executable, "-m", "pipeline", "run", "--report", check=False)
    assert none.returncode != 0 and "no default DVC remote is configured" in none.stdout + none.stderr
