"""A real Triton Inference Server process, from the nvidia-pytriton wheel, as one context manager.

The wheel carries Triton 2.51 (server binary, core library, Python backend and one Python-backend
stub per Python version). Its Python package pins numpy < 2, so the project installs the wheel with
--no-deps for the binaries only. The server's lifetime is the ``with`` block: it is stopped (its whole
process group) on exit, on an exception and on Ctrl-C, and it dies with its parent if that is killed.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Optional, Sequence

from ..errors import PipelineError
from .http_guard import HttpBodyGuard

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    library_path: str  # LD_LIBRARY_PATH for the binary and its backends
    backends: Path  # backend directory holding the Python backend and this Python's stub


def find_triton() -> TritonInstall:
    """The server from the installed nvidia-pytriton wheel (or the folder laid out like the wheel's
    ``tritonserver/`` that TRT_PIPELINE_TRITON_HOME names), or one error saying how to install it."""
    if os.environ.get("TRT_PIPELINE_TRITON_HOME"):
        triton = Path(os.environ["TRT_PIPELINE_TRITON_HOME"])
        wheel_libs = triton.parent / "nvidia_pytriton.libs"
    else:
        spec = find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise PipelineError("serving needs Triton Inference Server from the nvidia-pytriton wheel: run `make venv` "
                                "(it installs nvidia-pytriton==0.7.0 with --no-deps from requirements-serving.txt)")
        package = Path(list(spec.submodule_search_locations)[0])
        triton, wheel_libs = package / "tritonserver", package.parent / "nvidia_pytriton.libs"
    binary = triton / "bin" / "tritonserver"
    if not binary.is_file():
        raise PipelineError(f"the Triton server binary is missing: {binary} is not a file; reinstall nvidia-pytriton (`make venv`)"
                            + (" or fix TRT_PIPELINE_TRITON_HOME" if os.environ.get("TRT_PIPELINE_TRITON_HOME") else ""))
    stub = triton / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
    if not stub.is_file():
        raise PipelineError(f"nvidia-pytriton has no Python-backend stub for Python {sys.version_info.major}.{sys.version_info.minor} ({stub})")
    # The Python backend looks for the stub next to itself: a backend folder of our own holds both
    # (one per Triton install, should TRT_PIPELINE_TRITON_HOME name another).
    install_key = hashlib.sha256(str(triton.resolve()).encode()).hexdigest()[:12]
    backends = Path(sys.prefix) / "share" / "trt-pipeline" / f"triton-backends-{install_key}"
    python_backend = backends / "python"
    if not (python_backend / "triton_python_backend_stub").is_file():
        staging = backends.with_name(backends.name + f".{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(triton / "backends", staging)
        shutil.copy2(stub, staging / "python" / "triton_python_backend_stub")
        shutil.rmtree(backends, ignore_errors=True)
        os.replace(staging, backends)
    libs = [wheel_libs, triton / "external_libs"]
    return TritonInstall(binary, os.pathsep.join(str(p) for p in libs if p.is_dir()), backends)


def serving_environment() -> Path:
    """The Python backend's environment (numpy < 2, onnxruntime): .venv-serving, made by `make venv`
    (TRT_PIPELINE_SERVING_ENV names another)."""
    env = Path(os.environ.get("TRT_PIPELINE_SERVING_ENV", ".venv-serving"))
    if not (env / "bin" / "activate").is_file():
        raise PipelineError(f"the serving environment {env} is missing: run `make venv` (requirements-serving-env.lock)")
    return env


class TritonHttp:
    """Triton's HTTP API at ``address`` (host:port): health, model readiness, repository load/unload."""

    def __init__(self, address: str):
        self.address = address

    def request(self, method: str, path: str, body: Optional[dict] = None, timeout: float = 5.0) -> tuple:
        """(status, body); status 0 when nothing answers (a server still starting, or none)."""
        data = json.dumps(body or {}).encode() if method == "POST" else None
        request = urllib.request.Request(f"http://{self.address}{path}", data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")
        except OSError as error:
            return 0, str(error)

    def live(self) -> bool:
        return self.request("GET", "/v2/health/live")[0] == 200

    def ready(self, model: str = "", version: str = "") -> bool:
        path = "/v2/health/ready" if not model else f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/ready"
        return self.request("GET", path)[0] == 200

    def load(self, model: str, config: Optional[dict] = None) -> tuple:
        body = {"parameters": {"config": json.dumps(config)}} if config else None
        return self.request("POST", f"/v2/repository/models/{model}/load", body, timeout=300.0)

    def unload(self, model: str) -> tuple:
        return self.request("POST", f"/v2/repository/models/{model}/unload", timeout=300.0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_in_use(port: int) -> bool:
    """Whether something listens on ``port``. SO_REUSEADDR, as Triton's own listeners: a port a stopped
    server left in TIME_WAIT is free to it, and must not read as taken for a minute."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _libpython_dir() -> str:
    """The folder holding this Python's shared libpython, or '' (a static build, or one the loader finds)."""
    name = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    for folder in (sysconfig.get_config_var("LIBDIR"), os.path.join(sys.base_prefix, "lib")):
        if folder and os.path.isfile(os.path.join(folder, name)):
            return folder
    return ""


def _die_with_parent() -> None:  # runs in the child before exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class TritonServer:
    """``with TritonServer(repository) as server:`` -- started, live and ready inside the block."""

    def __init__(self, repository: Path, log_path: Path, http_port: Optional[int] = None, grpc_port: Optional[int] = None,
                 metrics_port: Optional[int] = None, explicit_models: bool = False, startup_timeout_s: float = 60.0,
                 backend_config: Sequence[str] = (), max_http_body_bytes: Optional[int] = None):
        self.repository, self.log_path = Path(repository), Path(log_path)
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.explicit_models, self.startup_timeout_s = explicit_models, startup_timeout_s
        self.backend_config = list(backend_config)  # e.g. "python,shm-default-byte-size=134217728" for large batches
        # The Python backend's shared-memory regions get a name of this server's own, so stopping can remove
        # them even after the server was killed (it removes them itself only when it exits cleanly).
        self.shm_prefix = f"trt_pipeline_{os.getpid()}_{secrets.token_hex(4)}"
        # With a limit, the HTTP port is a guard that refuses larger bodies; Triton listens behind it.
        self.max_http_body_bytes = max_http_body_bytes
        self.guard: Optional[HttpBodyGuard] = None
        self.process: Optional[subprocess.Popen] = None
        self.startup_seconds: Optional[float] = None

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.ports['http']}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    def __enter__(self) -> "TritonServer":
        install = find_triton()
        for kind, port in self.ports.items():
            if port is not None and not 1 <= port <= 65535:
                raise PipelineError(f"the Triton {kind} port {port} is not a port: use 1-65535 (or none, for a free one)")
            if port is not None and _port_in_use(port):
                raise PipelineError(f"the Triton {kind} port {port} is already in use on 127.0.0.1; choose another or stop what holds it")
            self.ports[kind] = port or free_port()
        self.api = TritonHttp(self.http)
        triton_http_port = self.ports["http"]
        if self.max_http_body_bytes is not None:
            triton_http_port = free_port()
            try:
                self.guard = HttpBodyGuard(self.ports["http"], triton_http_port, self.max_http_body_bytes).__enter__()
            except OSError as exc:
                raise PipelineError(f"the Triton http port {self.ports['http']} cannot be listened on: {exc}") from exc
        command = [str(install.binary), f"--model-repository={self.repository.resolve()}", f"--backend-directory={install.backends}",
                   f"--http-port={triton_http_port}", f"--grpc-port={self.ports['grpc']}", f"--metrics-port={self.ports['metrics']}",
                   "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--log-verbose=0", "--exit-on-error=true",
                   f"--model-control-mode={'explicit' if self.explicit_models else 'none'}", "--strict-readiness=true",
                   "--allow-gpu-metrics=false", "--allow-cpu-metrics=true", f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}"]
        command += [f"--backend-config={item}" for item in self.backend_config]
        # The Python-backend stub links libpython of this Python's version: where a relocated Python
        # (python-build-standalone, uv) keeps it, the loader does not look on its own.
        library_path = [install.library_path, _libpython_dir(), os.environ.get("LD_LIBRARY_PATH")]
        env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(filter(None, library_path)))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                                preexec_fn=_die_with_parent)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - started
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        died = self.process is not None and self.process.poll() is not None  # before stop(): not by our hand
        self.stop()
        if exc is not None and died:  # a client's error is only the symptom: say what happened to the server
            raise PipelineError(f"Triton exited with status {self.process.returncode}; server log ({self.log_path}):\n{self.log_tail()}") from exc

    def log_tail(self, lines: int = 10) -> str:
        """Triton's error lines (glog 'E' lines: why a model failed to load) and the last lines of its log."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        errors = [line[:400] for line in text if line.startswith("E") and line[1:5].isdigit()]
        return "\n".join(errors[:5] + ["..."] + text[-lines:] if errors else text[-lines:])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PipelineError(f"Triton exited with status {self.process.returncode} while starting; server log ({self.log_path}):\n{self.log_tail()}")
            if self.api.live() and self.api.ready():
                return
            time.sleep(0.1)
        raise PipelineError(f"Triton was not ready within {self.startup_timeout_s:.0f} s; server log ({self.log_path}):\n{self.log_tail()}")

    def wait_model_ready(self, name: str, version: str = "", timeout_s: float = 60.0) -> float:
        """Seconds until model ``name`` (``version``) was ready."""
        started = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.api.ready(name, version):
                return time.perf_counter() - started
            if self.process.poll() is not None:
                raise PipelineError(f"Triton died while loading model '{name}'; server log:\n{self.log_tail()}")
            time.sleep(0.1)
        raise PipelineError(f"model '{name}' was not ready within {timeout_s:.0f} s; server log:\n{self.log_tail()}")

    def load_model(self, name: str, config=None, timeout_s: float = 60.0) -> float:
        """(Re)load model ``name`` (explicit model control), with ``config`` (a ModelConfig message)
        instead of its config.pbtxt if given; seconds until it was ready. A refusal is one error with
        Triton's reason and the log tail."""
        from google.protobuf import json_format

        body = json_format.MessageToDict(config, preserving_proto_field_name=True) if config is not None else None
        status, answer = self.api.load(name, body)
        if status != 200:
            raise PipelineError(f"Triton did not load model '{name}': {answer}; server log:\n{self.log_tail()}")
        return self.wait_model_ready(name, timeout_s=timeout_s)

    def stop(self) -> None:
        """Stop the server and everything it started (the Python-backend stubs): TERM, then KILL; and
        remove its shared memory. Also when the server is already dead (killed): its stubs live on in
        its process group, and its regions stay in /dev/shm, unless removed here."""
        if self.guard is not None:
            self.guard.__exit__(None, None, None)
            self.guard = None
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        try:  # stubs that outlived the server in its process group
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)
