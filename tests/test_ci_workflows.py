"""The CI workflows, checked against their published JSON schemas (SchemaStore's, as vendored by
check-jsonschema: no network) and against the project: every matrix target is a target option, each
build job runs that target's share through the remote, and the report job waits for all of them."""
from __future__ import annotations

import copy
import json
from importlib import resources

import jsonschema
import pytest
import yaml

from .conftest import REPO


def _schema(name: str) -> dict:
    return json.loads((resources.files("check_jsonschema.builtin_schemas.vendor") / f"{name}.json").read_text())


def _errors(document: dict, schema: dict) -> list:
    validator = jsonschema.validators.validator_for(schema)(schema)
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document))


def _load(path) -> dict:
    # YAML 1.1 reads the key `on` as True; the schema expects the string.
    document = yaml.safe_load(path.read_text())
    if True in document:
        document["on"] = document.pop(True)
    return document


TARGET_OPTIONS = {p.stem for p in (REPO / "conf" / "target").glob("*.yaml")}


def test_the_github_workflow_is_valid_and_splits_the_matrix_by_target():
    workflow = _load(REPO / ".github" / "workflows" / "pipeline.yml")
    assert _errors(workflow, _schema("github-workflows")) == []
    build = workflow["jobs"]["build"]
    targets = [row["target"] for row in build["strategy"]["matrix"]["include"]]
    assert set(targets) <= TARGET_OPTIONS and "cpu" in targets
    assert f"target=[{','.join(targets)}]" == workflow["env"]["MATRIX_TARGETS"], "every job composes the same matrix"
    commands = " ".join(step.get("run", "") for step in build["steps"])
    assert "python -m pipeline run --target ${{ matrix.target }}" in commands
    assert build["runs-on"] == "${{ matrix.runner }}" and build["needs"] == "test"
    gpu_rows = [row for row in build["strategy"]["matrix"]["include"] if row["target"] != "cpu"]
    assert all("self-hosted" in row["runner"] and f"gpu-{row['target']}" in row["runner"] for row in gpu_rows)
    report = workflow["jobs"]["report"]
    assert report["needs"] == "build" and any("pipeline run --report" in step.get("run", "") for step in report["steps"])
    assert any("bash .ci/run" in step.get("run", "") for step in workflow["jobs"]["test"]["steps"])


def test_the_gitlab_pipeline_is_valid_and_runs_the_same_matrix():
    pipeline = yaml.safe_load((REPO / ".gitlab-ci.yml").read_text())
    assert _errors(pipeline, _schema("gitlab-ci")) == []
    rows = pipeline["build"]["parallel"]["matrix"]
    github = _load(REPO / ".github" / "workflows" / "pipeline.yml")
    assert [row["TARGET"] for row in rows] == [row["target"] for row in github["jobs"]["build"]["strategy"]["matrix"]["include"]]
    assert pipeline["variables"]["MATRIX_TARGETS"] == github["env"]["MATRIX_TARGETS"]


@pytest.mark.parametrize("break_it, expected", [  # where the schema reports it (a job is a oneOf: reported at the job)
    (lambda w: w["jobs"]["build"].pop("runs-on"), "jobs/build"),
    (lambda w: w["jobs"]["report"].update({"needs": 3}), "jobs/report"),
    (lambda w: w["jobs"]["build"]["steps"][0].update({"uses": None}), "jobs/build"),
    (lambda w: w.pop("jobs"), "'jobs' is a required property"),
])
def test_a_broken_workflow_fails_the_schema(break_it, expected):
    """The check is not vacuous: the schema rejects what GitHub would reject."""
    workflow = copy.deepcopy(_load(REPO / ".github" / "workflows" / "pipeline.yml"))
    break_it(workflow)
    errors = _errors(workflow, _schema("github-workflows"))
    assert errors and any(expected in error for error in errors), errors
