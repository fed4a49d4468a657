"""The real `dvc repro` / `dvc exp run` on a small default, in a temporary git repository."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .helpers import SMALL, dvc_env, project_repo, ran, run, set_param

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = project_repo(tmp_path_factory.mktemp("dvcrepo"), *SMALL)
    first = run(root, "dvc", "repro")
    return root, first


def test_cold_repro_runs_every_stage_and_reports(repo):
    root, first = repo
    builds = ["digits_cnn-cpu-fp32", "digits_cnn-cpu-int8"]
    expected = {f"{s}@digits_cnn" for s in ("prepare", "export", "simplify")}
    expected |= {f"{s}@{b}" for s in ("calibrate", "build", "validate", "benchmark", "package") for b in builds}
    assert ran(first) == expected | {"serve@digits_cnn-cpu-int8", "report"}
    summary = (root / "reports" / "summary.md").read_text()
    assert "## digits_cnn on cpu" in summary and "| int8 |" in summary
    assert (root / "metrics" / "builds" / "digits_cnn-cpu-int8" / "validate.json").is_file()
    shown = run(root, "dvc", "metrics", "show", "--json").stdout
    assert "top1_agreement" in shown and "p99_ms" in shown


PLOTS = {"latency", "throughput", "accuracy_vs_latency", "serving_throughput", "serving_p99"}


def test_dvc_draws_every_plot_as_defined(repo):
    """`dvc plots show --json` on the real run: no errors, exactly the defined plots (no default per-file
    duplicates), axes as defined, and one series per build (and per field for latency)."""
    root, _ = repo
    shown = json.loads(run(root, "dvc", "plots", "show", "--json").stdout)
    assert not shown.get("errors"), shown["errors"]
    assert set(shown["data"]) == PLOTS
    builds = {"digits_cnn-cpu-fp32", "digits_cnn-cpu-int8"}
    spec = lambda name: shown["data"][name][0]["content"]  # noqa: E731
    latency = spec("latency")
    inner = latency["spec"]["encoding"]
    assert inner["x"]["field"] == "batch_size" and inner["color"]["field"] == "build" and latency["facet"]["column"]["field"] == "model"
    rows = latency["data"]["values"]
    assert {(r["build"], r["field"]) for r in rows} == {(b, f) for b in builds for f in ("p50_ms", "p99_ms")}
    assert sorted({r["batch_size"] for r in rows}) == sorted(yaml.safe_load((root / "params.yaml").read_text())["benchmark"]["batch_sizes"])
    assert all(r["dvc_inferred_y_value"] == r[r["field"]] for r in rows)
    scatter = spec("accuracy_vs_latency")
    assert {r["label"] for r in scatter["data"]["values"]} == {"fp32 (cpu)", "int8 (cpu)"}
    assert spec("serving_p99")["spec"]["encoding"]["x"]["field"] == "concurrency"
    assert {r["build"] for r in spec("serving_p99")["data"]["values"]} == {"digits_cnn-cpu-int8"}


def test_plot_images_render_offline_and_show_every_build(repo, tmp_path):
    root, _ = repo
    out = tmp_path / "images"
    run(root, sys.executable, "-m", "pipeline", "plots", "--out", str(out))
    for name in PLOTS:
        png = (out / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert width >= 400 and height >= 300, (name, width, height)
        assert "cdn" not in (out / f"{name}.html").read_text().lower(), "the HTML page inlines Vega: it opens offline"
    svg = (out / "latency.svg").read_text()
    lines = re.findall(r'<g class="mark-line role-mark[^"]*"[^>]*>(.*?)</g>', svg, re.S)
    colours = {c for line in lines for c in re.findall(r'stroke="(#[0-9a-fA-F]{6})"', line)}
    assert len(lines) == 2 * 2 and len(colours) == 2, "one line per build and field, one colour per build"
    labels = re.findall(r"<text[^>]*>((?:fp32|int8) \(cpu\))</text>", (out / "accuracy_vs_latency.svg").read_text())
    assert sorted(labels) == ["fp32 (cpu)", "int8 (cpu)"], "each point labelled with its precision"
    summary = (root / "reports" / "summary.md").read_text()
    assert "![latency vs batch size](plots/latency.svg)" in summary


def test_plots_without_data_fail_naming_dvcs_reason(repo, tmp_path):
    root, _ = repo
    data = root / "plots" / "latency.json"
    saved = data.read_text()
    data.write_text("not json")
    try:
        result = run(root, sys.executable, "-m", "pipeline", "plots", "--out", str(tmp_path / "x"), check=False)
    finally:
        data.write_text(saved)
    assert result.returncode != 0 and "DVC cannot draw these plots: latency" in result.stdout + result.stderr
    assert not (tmp_path / "x").exists(), "no half-written images"


def test_second_repro_runs_nothing(repo):
    root, _ = repo
    second = run(root, "dvc", "repro")
    assert ran(second) == set()


def test_benchmark_param_change_reruns_only_benchmarks(repo):
    root, _ = repo
    set_param(root, "benchmark.iterations", 4)
    result = run(root, "dvc", "repro")
    assert ran(result) == {"benchmark@digits_cnn-cpu-fp32", "benchmark@digits_cnn-cpu-int8", "report"}


def test_a_code_change_reruns_the_stages_that_import_it(repo):
    root, _ = repo
    module = root / "pipeline" / "evaluate" / "benchmark.py"
    original = module.read_text()
    module.write_text(original + "\n# a change to the benchmark code\n")
    try:
        result = run(root, "dvc", "repro")
    finally:
        module.write_text(original)
    # calibrate imports it too (the speed guard times layers with it), and build (a target that measures
    # runtimes times them with it); their artifacts come out the same bytes, so validate, package and
    # serve are not rerun.
    builds = ("digits_cnn-cpu-fp32", "digits_cnn-cpu-int8")
    assert ran(result) == {f"{stage}@{b}" for stage in ("calibrate", "build", "benchmark") for b in builds} | {"report"}
    run(root, "dvc", "repro")  # back to the committed code


def test_model_keys_rerun_exactly_the_stages_that_read_them(repo):
    root, _ = repo
    set_param(root, "model.digits_cnn.quantize_op_types", ["Conv"])
    stages = ran(run(root, "dvc", "repro"))
    assert {"calibrate@digits_cnn-cpu-int8", "build@digits_cnn-cpu-int8", "validate@digits_cnn-cpu-int8"} <= stages
    assert not {s for s in stages if s.split("@")[0] in ("prepare", "export", "simplify")}
    set_param(root, "model.digits_cnn.gates.min_top1_agreement", 0.95)  # the search and validate read gates, training does not
    stages = ran(run(root, "dvc", "repro"))
    assert {"calibrate@digits_cnn-cpu-int8", "validate@digits_cnn-cpu-int8", "validate@digits_cnn-cpu-fp32"} <= stages
    assert not {s for s in stages if s.split("@")[0] in ("prepare", "export", "simplify", "benchmark")}


def test_calibration_param_change_reruns_calibration_and_downstream_only(repo):
    root, _ = repo
    set_param(root, "calibration.num_samples", 400)
    result = run(root, "dvc", "repro")
    stages = ran(result)
    assert "calibrate@digits_cnn-cpu-int8" in stages and "build@digits_cnn-cpu-int8" in stages
    assert "validate@digits_cnn-cpu-int8" in stages
    assert not {s for s in stages if s.split("@")[0] in ("prepare", "export", "simplify")}
    # fp32 passthrough output is byte-identical, so its build is skipped
    assert "build@digits_cnn-cpu-fp32" not in stages


def test_a_killed_stage_leaves_no_partial_output_and_repro_recovers(repo):
    root, _ = repo
    set_param(root, "calibration.seed", 7)
    build_dir = root / "artifacts" / "builds" / "digits_cnn-cpu-int8"
    process = subprocess.Popen(["dvc", "repro", "calibrate@digits_cnn-cpu-int8"], cwd=root, env=dvc_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # calibrate writes its manifest into its temporary folder before the statistics pass: kill then.
    deadline = time.time() + 120
    while not list(build_dir.glob(".calibrated.*.tmp/manifest.json")):
        assert process.poll() is None, "calibrate ended before it could be killed"
        assert time.time() < deadline, "calibrate never started"
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert list(build_dir.glob(".calibrated.*.tmp")), "the kill landed inside the stage"
    assert not (build_dir / "calibrated").exists(), "DVC removed the old output; nothing half-written took its place"
    result = run(root, "dvc", "repro")
    assert "calibrate@digits_cnn-cpu-int8" in ran(result)
    assert json.loads((build_dir / "calibrated" / "manifest.json").read_text())["seed"] == 7
    assert not list(root.glob("artifacts/**/.*.tmp")), "the rerun removed the killed run's temporary folder"
    assert ran(run(root, "dvc", "repro")) == set()


def test_dvc_exp_run_composes_conf_with_overrides_through_the_schema(repo):
    root, _ = repo
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "state")
    result = run(root, "dvc", "exp", "run", *[f"-S{o}" for o in SMALL], "-Scalibration=entropy")
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["calibration"]["method"] == "entropy"
    assert set(params["builds"]) == {"digits_cnn-cpu-fp32", "digits_cnn-cpu-int8"}
    assert "calibrate@digits_cnn-cpu-int8" in ran(result)
    refused = run(root, "dvc", "exp", "run", "-Sprecision=[fp16]", *[f"-S{o}" for o in SMALL], check=False)
    assert refused.returncode != 0
    assert "target 'cpu' cannot run precision ['fp16']" in refused.stdout + refused.stderr


def test_dvc_exp_run_refuses_an_output_folder_outside_the_project_before_touching_the_workspace(repo, tmp_path):
    """DVC composes through the Hydra plugin, not `pipeline compose`: the out-folder check must run there too."""
    root, _ = repo
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".git" not in p.parts and ".dvc" not in p.parts)
    params = (root / "params.yaml").read_bytes()
    result = run(root, "dvc", "exp", "run", "-S", f"artifacts_dir={tmp_path / 'outside'}", check=False)
    assert result.returncode != 0 and "output folders must be inside the project" in result.stdout + result.stderr
    after = sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".git" not in p.parts and ".dvc" not in p.parts)
    assert after == before and (root / "params.yaml").read_bytes() == params and not (tmp_path / "outside").exists()
    # A group option that is a path fails inside Hydra's loader with the message `pipeline compose` gives.
    result = run(root, "dvc", "exp", "run", "-S", "model=[../config]", check=False)
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0 and "model option '../config' in 'model=[../config]' is not an option name" in said, said
    assert "available model options: digits_cnn" in said and (root / "params.yaml").read_bytes() == params


def test_check_rehash_sees_an_edit_that_kept_size_and_time(repo):
    """DVC remembers hashes by inode, size and mtime: a same-size edit with the old time put back is
    invisible to `dvc status` until `pipeline check --rehash` makes it hash the file again."""
    root, _ = repo
    module = root / "stages" / "report.py"
    original, times = module.read_bytes(), module.stat()
    before = run(root, "dvc", "status", "report").stdout  # whatever earlier tests left: this file is not in it
    assert "stages/report.py" not in before

    def rewrite(data: bytes) -> None:
        module.write_bytes(data)  # in place: the same inode
        os.utime(module, ns=(times.st_atime_ns, times.st_mtime_ns))

    try:
        rewrite(original.replace(b"one precision table", b"One precision table", 1))
        assert run(root, "dvc", "status", "report").stdout == before, "DVC's remembered hash hides the edit"
        run(root, sys.executable, "-m", "pipeline", "check", "--rehash", *SMALL, check=False)  # params may differ after exp runs
        assert "stages/report.py" in run(root, "dvc", "status", "report").stdout
    finally:
        rewrite(original)
        run(root, sys.executable, "-m", "pipeline", "check", "--rehash", *SMALL, check=False)
    assert run(root, "dvc", "status", "report").stdout == before


def test_a_queued_sweep_runs_two_experiments_and_shows_both_results(repo):
    """`dvc exp run --queue -S ...` twice, `dvc queue start --jobs 2`, then `dvc exp show` lists both
    experiments with their own metrics (unchanged stages come from the run-cache)."""
    root, _ = repo
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "before the sweep", check=False)
    names = [f"cal-{method}" for method in ("percentile", "minmax")]
    for name in names:
        run(root, "dvc", "exp", "run", "--queue", "--name", name, *[f"-S{o}" for o in SMALL], f"-Scalibration={name[4:]}")
    try:
        status = _run_queue(root, jobs=2, timeout_s=900)
    finally:
        _stop_queue_workers(root)
    assert status.count("Success") >= 2, f"{status}\n{_queue_logs(root)}"
    shown = json.loads(run(root, "dvc", "exp", "show", "--json").stdout)
    found = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for revision in exp.get("revs", []):
                data = revision.get("data") or {}
                if revision.get("name") in ("cal-percentile", "cal-minmax"):
                    params = data["params"]["params.yaml"]["data"]
                    metrics = data["metrics"]["metrics/builds/digits_cnn-cpu-int8/validate.json"]["data"]
                    found[revision["name"]] = (params["calibration"]["method"], metrics["accuracy"])
    assert set(found) == {"cal-percentile", "cal-minmax"}, shown
    assert found["cal-percentile"][0] == "percentile" and found["cal-minmax"][0] == "minmax"
    assert all(0 < accuracy <= 100 for _, accuracy in found.values())


def _run_queue(root: Path, jobs: int, timeout_s: float) -> str:
    """Start DVC's queue workers and wait until nothing is queued or running; the last `dvc queue status`.
    A worker stops itself when its check of the queue comes back empty, and on a busy machine that check
    can time out while a task is still waiting: workers are started again then, as a user would."""
    deadline = time.monotonic() + timeout_s
    run(root, "dvc", "queue", "start", "--jobs", str(jobs), timeout_s=120)
    while time.monotonic() < deadline:
        status = run(root, "dvc", "queue", "status", timeout_s=120).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        if "Queued" in status and re.search(r"Worker status: 0 active, 0 idle", status):
            run(root, "dvc", "queue", "start", "--jobs", str(jobs), timeout_s=120)
        time.sleep(5)
    raise AssertionError(f"the queue did not finish within {timeout_s:.0f} s:\n{status}\n{_queue_logs(root)}")


def _queue_logs(root: Path) -> str:
    """The tails of the workers' and the experiments' logs, for a failure message."""
    return "\n".join(f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:]
                     for path in sorted((root / ".dvc" / "tmp" / "exps").rglob("*.out")))


def _stop_queue_workers(root: Path) -> None:
    """No worker outlives the test: DVC's stop, then whatever a pid file still names."""
    run(root, "dvc", "queue", "stop", check=False, timeout_s=60)
    for pid_file in (root / ".dvc" / "tmp" / "exps" / "celery").glob("*.pid"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text())
            if b"queue-worker" in Path(f"/proc/{pid}/cmdline").read_bytes():  # not a reused pid
                os.kill(pid, signal.SIGKILL)


def test_gpu_target_joins_the_matrix_and_fails_only_at_build_without_tensorrt(repo):
    """Keep last: it recomposes params.yaml with the h100 target next to cpu."""
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("this machine has datacenter TensorRT: the missing-library path cannot happen here")
    root, _ = repo
    run(root, sys.executable, "-m", "pipeline", "compose", *SMALL, "target=[cpu,h100]")
    listed = run(root, "dvc", "stage", "list").stdout
    for stage in ("calibrate@digits_cnn-h100-int8", "build@digits_cnn-h100-int8", "validate@digits_cnn-h100-fp32", "benchmark@digits_cnn-h100-int8"):
        assert stage in listed
    result = run(root, "dvc", "repro", "build@digits_cnn-h100-int8", check=False)
    assert result.returncode != 0
    assert "calibrate@digits_cnn-h100-int8" in ran(result)
    assert "needs the tensorrt Python module" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
