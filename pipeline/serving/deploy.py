"""Deploy a packaged build as the next version of a model served by a running Triton server (explicit
model control), with automatic rollback: the candidate is loaded under a name of its own, checked
(readiness, agreement with the FP32 reference within the build's gates, p99 under a short load), and
only then becomes the served version; a failure leaves the previous version serving untouched.
A history of every attempt lives in the repository (``<model>/deployments.json``)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

from ..backends import Runner
from ..config.schema import TensorSpec
from ..errors import PipelineError
from ..files import write_json
from .load_generator import infer_inputs
from .repository import VERSION, live_copy, read_config
from .server import TritonHttp

HISTORY = "deployments.json"


class TritonRunner(Runner):
    """A served model behind the project's Runner interface (for evaluate's agreement metrics)."""

    def __init__(self, grpc: str, model: str, inputs: List[TensorSpec], output_names: List[str]):
        import tritonclient.grpc as grpcclient

        self.grpcclient, self.client, self.model = grpcclient, grpcclient.InferenceServerClient(grpc), model
        self.inputs, self.output_names = inputs, output_names

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        (tensors,) = infer_inputs(self.grpcclient, [feeds])
        result = self.client.infer(self.model, tensors)
        return {name: result.as_numpy(name) for name in self.output_names}

    def close(self) -> None:
        self.client.close()


def history(model_dir: Path) -> List[dict]:
    """The deployment history, or one error naming the file when it is not one (refused before anything changes)."""
    path = model_dir / HISTORY
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path} is not valid JSON ({exc}); nothing was changed: restore it from a backup or move it away") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) and {"version", "build", "outcome"} <= set(e) for e in entries):
        raise PipelineError(f"{path} is not a deployment history (a list of entries with version, build and outcome); nothing was changed")
    return entries


def check_target(repository: Path, name: str, server: "TritonHttp") -> None:
    """Refuse, before anything is written, a model name that is not one folder name, and a repository
    that is not the running server's (its models must be the ones the server's repository index lists)."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name) or name in (".", ".."):
        raise PipelineError(f"model name {name!r} is not one folder name (letters, digits, '_', '.', '-'; no '/' or '..')")
    if not repository.is_dir():
        raise PipelineError(f"repository {repository} is not a folder; give the folder the server was started with (--model-repository)")
    status, body = server.request("POST", "/v2/repository/index")
    if status != 200:
        raise PipelineError(f"the server at {server.address} did not list its repository ({status}: {body[:200]}); is it in explicit model-control mode?")
    listed = {entry["name"] for entry in json.loads(body)}
    here = {p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file() and not p.name.endswith("-candidate")}
    if here - listed or (listed and not here):
        raise PipelineError(f"{repository} is not the server's repository: it holds {sorted(here)}, the server at {server.address} "
                            f"lists {sorted(listed)}; give the folder the server was started with (--model-repository)")


def _record(model_dir: Path, entry: dict) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    write_json(model_dir / HISTORY, history(model_dir) + [{**entry, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}])


def _serve_only(server: TritonHttp, model_dir: Path, name: str, version: str) -> None:
    """Make ``version`` the one served version: Triton loads it while the old one keeps serving, then retires the old."""
    config = _config_json(model_dir)
    config["version_policy"] = {"specific": {"versions": [int(version)]}}
    status, body = server.load(name, config)
    if status != 200 or not server.ready(name, version):
        raise PipelineError(f"Triton could not serve {name} version {version}: {body}")


def _config_json(model_dir: Path) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(read_config(model_dir / "config.pbtxt"), preserving_proto_field_name=True)


def deploy(package: Path, repository: Path, name: str, http: str, grpc: str, execution_env: Path,
           smoke_check: Callable[[Runner, str, str], List[str]]) -> dict:
    """Promote ``package`` (a Python-form model) to the next version of model ``name`` in ``repository``;
    returns the history entry. ``smoke_check(runner, grpc_url, model_name)`` returns why the candidate
    is unfit (nothing: fit)."""
    server = TritonHttp(http)
    if not server.live():
        raise PipelineError(f"no Triton server answers at {http}: start one in explicit model-control mode on {repository}")
    check_target(repository, name, server)
    config = read_config(package / "config.pbtxt")
    model_dir = repository / name
    history(model_dir)  # a damaged history is refused here, before a candidate is loaded or a version copied
    served = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    version = str(max(served, default=0) + 1)
    entry = {"version": int(version), "build": config.parameters["pipeline_build"].string_value,
             "config_hash": config.parameters["pipeline_config_hash"].string_value}
    candidate = f"{name}-candidate"
    candidate_dir = live_copy(package, repository, VERSION, execution_env, name=candidate)
    try:
        status, body = server.load(candidate)
        if status != 200 or not server.ready(candidate):
            reasons = [f"the candidate did not load: {body.strip()[:600]}"]
        else:
            inputs = [TensorSpec(name=i.name, shape=[-1, *i.dims]) for i in config.input]
            runner = TritonRunner(grpc, candidate, inputs, [o.name for o in config.output])
            try:
                reasons = smoke_check(runner, grpc, candidate)
            finally:
                runner.close()
    finally:
        server.unload(candidate)
        shutil.rmtree(candidate_dir, ignore_errors=True)
    if reasons:
        _record(model_dir, {**entry, "outcome": "rejected", "reasons": reasons})
        raise PipelineError(f"deployment of {entry['build']} as {name} version {version} rejected; the previous version keeps serving: "
                            + "; ".join(reasons))
    live_copy(package, repository, version, execution_env, name=name)
    _serve_only(server, model_dir, name, version)
    _record(model_dir, {**entry, "outcome": "deployed"})
    return history(model_dir)[-1]


def rollback(repository: Path, name: str, http: str) -> dict:
    """Serve the deployment before the current one again."""
    server = TritonHttp(http)
    check_target(repository, name, server)
    model_dir = repository / name
    deployed = [e for e in history(model_dir) if e["outcome"] in ("deployed", "rolled back")]
    if len(deployed) < 2:
        raise PipelineError(f"{name} has no earlier good version to roll back to (history: {model_dir / HISTORY})")
    current, previous = deployed[-1], deployed[-2]
    _serve_only(server, model_dir, name, str(previous["version"]))
    _record(model_dir, {"version": previous["version"], "build": previous["build"], "config_hash": previous["config_hash"],
                        "outcome": "rolled back", "from_version": current["version"]})
    return history(model_dir)[-1]

