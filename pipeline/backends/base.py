"""One interface for every engine library: build an artifact, load it, run it.

Loaders and runners are split as in Polygraphy: ``Backend.build`` turns an ONNX file into an
artifact folder (engine file + sidecar JSON), ``Backend.load`` returns a ``Runner`` for it.
"""
from __future__ import annotations

import abc
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..config.schema import ModelConfig, TargetConfig, TensorSpec
from ..errors import PipelineError
from ..files import read_json, require_file, sha256_file

SIDECAR = "sidecar.json"
SIDECAR_KEYS = ("backend", "artifact", "artifact_sha256", "build", "precision", "inputs", "outputs")


@functools.lru_cache(maxsize=None)
def cpuinfo() -> Dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ({} off Linux): the host CPU's model and flags, which
    decide whether code compiled for a CPU kind runs here and what the reports name."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return {}
    fields: Dict[str, str] = {}
    for line in info.read_text().splitlines():
        if not line.strip():
            break  # the first processor's block ends here
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def ort_numpy_dtype(ort_type: str) -> np.dtype:
    """ONNX Runtime's type string -> numpy dtype ('tensor(float)' -> float32). Free of onnx: runners
    also run inside Triton's Python backend, whose environment holds numpy and onnxruntime only."""
    name = ort_type[len("tensor("):-1]
    name = {"float": "float32", "double": "float64"}.get(name, name)
    try:
        return np.dtype(name)
    except TypeError:
        if name == "bfloat16":
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        raise PipelineError(f"no numpy type for ONNX Runtime's {ort_type}") from None


def tensor_entries(inputs: List[TensorSpec], outputs: List[TensorSpec]) -> dict:
    """The sidecar's record of an artifact's tensors: what load, package and serving read back."""
    return {"inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in inputs],
            "outputs": [s.name for s in outputs],
            "output_specs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in outputs]}


def input_specs(sidecar: dict) -> List[TensorSpec]:
    """The artifact's inputs as its sidecar records them."""
    return [TensorSpec(name=i["name"], shape=list(i["shape"]), dtype=i["dtype"]) for i in sidecar["inputs"]]


@dataclass
class BuildRequest:
    """What a backend needs to build one artifact."""

    onnx_path: Path
    out_dir: Path  # the artifact folder to fill (a temporary folder renamed into place by the caller)
    target_name: str
    target: TargetConfig
    model: ModelConfig
    precision: str
    config_hash: str
    build_name: str = ""  # the build-matrix cell, recorded so load can refuse another build's artifact
    checkpoint: Optional[Path] = None  # the prepared PyTorch weights (backends that compile the PyTorch source); None for ONNX models


class Runner(abc.ABC):
    """Runs a loaded artifact on numpy feeds."""

    inputs: List[TensorSpec]
    output_names: List[str]

    @abc.abstractmethod
    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        ...

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def check_feeds(self, feeds: Dict[str, np.ndarray]) -> None:
        """Reject missing inputs and wrong static dimensions with one message naming both shapes."""
        for spec in self.inputs:
            if spec.name not in feeds:
                raise PipelineError(f"missing input '{spec.name}'; the model takes {[s.name for s in self.inputs]}")
            shape = feeds[spec.name].shape
            expected = tuple(spec.shape)
            if len(shape) != len(expected) or any(e >= 0 and e != s for s, e in zip(shape, expected)):
                raise PipelineError(
                    f"input '{spec.name}' has shape {tuple(shape)}; the model expects {expected} (-1 = any size)"
                )


class RunnerPerShape(Runner):
    """One runner per input shape, each made the first time its shape is fed. For engines that set
    their kernels up for the shape of the last run and again on every change (ONNX Runtime's CUDA
    convolutions): a caller that feeds a few shapes in turn (a server padding its batches to a few
    sizes) pays that set-up once per shape, not once per change. Past ``max_shapes`` distinct shapes,
    the rest share one more runner, correct but paying the set-up whenever their shape changes."""

    def __init__(self, make: Callable[[], Runner], max_shapes: int = 16):
        self._make, self.max_shapes = make, max_shapes
        self._runners: Dict[Tuple, Runner] = {}
        self._spare: Optional[Runner] = make()  # the first shape's runner; it also tells inputs and outputs
        self._overflow: Optional[Runner] = None
        self.inputs, self.output_names = self._spare.inputs, self._spare.output_names
        self.last_runner: Runner = self._spare

    def runner_for(self, feeds: Dict[str, np.ndarray]) -> Runner:
        key = tuple((spec.name, tuple(feeds[spec.name].shape)) for spec in self.inputs)
        runner = self._runners.get(key)
        if runner is None:
            if len(self._runners) < self.max_shapes:
                runner = self._runners[key] = self._spare or self._make()
                self._spare = None
            else:
                runner = self._overflow = self._overflow or self._make()
        return runner

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        self.check_feeds(feeds)  # before a bad feed takes a shape's place
        self.last_runner = self.runner_for(feeds)
        return self.last_runner.run(feeds)

    @property
    def last_timing(self) -> Dict[str, float]:
        """The last run's per-stage GPU milliseconds, where its runner times them (CUDA events)."""
        return getattr(self.last_runner, "last_timing", {})

    @property
    def shapes(self) -> List[Tuple]:
        """The input shapes that have a runner of their own, in the order they were first fed."""
        return list(self._runners)

    def close(self) -> None:
        made = [r for r in (*self._runners.values(), self._overflow, self._spare) if r is not None]
        for runner in reversed(made):  # the reverse of creation: GPU runners pop the contexts they pushed
            runner.close()
        self._runners, self._overflow, self._spare = {}, None, None


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    def check_available(self) -> None:
        """Raise a PipelineError saying what to install when the library or device is missing."""

    @abc.abstractmethod
    def versions(self) -> Dict[str, str]:
        """{library: version} of what this backend's artifacts are tied to ("not installed" where missing)."""

    @abc.abstractmethod
    def build(self, request: BuildRequest) -> dict:
        """Write the artifact into ``request.out_dir``; return the sidecar dict (also written there)."""

    @abc.abstractmethod
    def load(self, artifact_dir: Path, threads: int = 0, cuda_graph: bool = False, expect: Optional[Dict[str, str]] = None,
             gpu: int = 0, varying_shapes: bool = False) -> Runner:
        """A runner for the artifact; ``cuda_graph`` replays captured CUDA graphs on GPU backends, and
        ``gpu`` is the GPU they run on (CUDA's index; CPU artifacts ignore it). ``varying_shapes``: the
        caller feeds many batch sizes (a server's dynamic batching): a backend whose kernels are set up
        per shape returns a ``RunnerPerShape`` and picks kernels by heuristics rather than timing them.
        ``expect`` ({"build": ..., "precision": ...}) must match the sidecar, or the load is refused."""

    def read_sidecar(self, artifact_dir: Path, expect: Optional[Dict[str, str]] = None) -> dict:
        """The sidecar, checked: well-formed, this backend, the expected build, and an artifact file
        whose bytes are the ones that were built (a copied-over or corrupted engine is refused)."""
        path = require_file(Path(artifact_dir) / SIDECAR, "artifact sidecar")
        try:
            sidecar = read_json(path)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PipelineError(f"malformed artifact sidecar {path}: {exc}; rebuild the artifact (dvc repro)") from exc
        missing = [k for k in SIDECAR_KEYS if not isinstance(sidecar, dict) or k not in sidecar]
        if missing:
            raise PipelineError(f"malformed artifact sidecar {path}: missing {missing}; rebuild the artifact (dvc repro)")
        if sidecar["backend"] != self.name:
            raise PipelineError(
                f"{artifact_dir} was built by backend '{sidecar['backend']}', not '{self.name}'"
            )
        for key, wanted in (expect or {}).items():
            if sidecar.get(key) != wanted:
                raise PipelineError(
                    f"{artifact_dir} holds the artifact of {key} '{sidecar.get(key)}' (build '{sidecar.get('build')}', "
                    f"precision {sidecar.get('precision')}), not the expected {key} '{wanted}'; rebuild it (dvc repro)"
                )
        artifact = require_file(Path(artifact_dir) / sidecar["artifact"], "artifact")
        found = sha256_file(artifact)
        if found != sidecar["artifact_sha256"]:
            raise PipelineError(
                f"{artifact} is not the file that was built (sha256 {found[:12]}…, sidecar records "
                f"{sidecar['artifact_sha256'][:12]}…): it was replaced or corrupted; rebuild it (dvc repro)"
            )
        return sidecar
