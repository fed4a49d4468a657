"""Every TensorRT name the backend uses exists in the real TensorRT 11 Python bindings.

The bindings are tensorrt-cu13-bindings 11.4.0.106 (pinned in requirements.lock): TensorRT 11.4's
real extension module. It cannot be imported without libnvinfer, but pybind11 keeps every class,
method, property and enum member name as a string in the binary, so the names can be read.
Names used only behind the TensorRT <= 10 check (``_attach_implicit_calibrator``) are exempt, and
the test proves it can fail: those 10.x-only names are absent from the 11 binary.
"""
from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path

import pytest

from .conftest import REPO

BACKEND_FILES = [REPO / "pipeline" / "backends" / "tensorrt_backend.py", REPO / "pipeline" / "backends" / "cuda_runtime.py"]
TRT10_ONLY_FUNCTIONS = {"_attach_implicit_calibrator"}
RTX_ONLY_FUNCTIONS = {"_set_rtx_compute_capability"}  # checked against the real tensorrt_rtx module
# Attribute names in those files that belong to Python, numpy, pycuda, ctypes or this project.
NOT_TENSORRT = {
    "append", "items", "get", "replace", "split", "startswith", "upper", "read_bytes", "write_bytes", "is_file",
    "ravel", "reshape", "copy", "size", "dtype", "itemsize", "host", "device", "capacity", "byref", "value", "CDLL",
    "cuInit", "cuDeviceGet", "cuDeviceGetAttribute", "c_int", "init", "Device", "retain_primary_context", "push", "pop",
    "Stream", "handle", "pagelocked_empty", "mem_alloc", "memcpy_htod_async", "memcpy_dtoh_async", "synchronize",
    "dumps", "loads", "json", "name", "shape", "onnx_path", "out_dir", "target", "model", "precision", "extra",
    "build", "compute_capability", "profiles", "min", "opt", "max", "workspace_mib", "builder_optimization_level_cfg",
    "profiling_verbosity_cfg", "hardware_compatibility", "version_compatible", "target_name", "config_hash",
    "rtx", "cuda", "context_handle", "runtime", "engine", "context", "stream", "inputs", "output_names", "buffers",
    "ensure", "check_feeds", "close", "nptype", "read_sidecar", "__version__", "__init__", "message", "join", "prod",
}
BINDINGS = "tensorrt-cu13-bindings"


def _binary_names() -> set:
    distribution = importlib.metadata.distribution(BINDINGS)
    assert distribution.version.startswith("11."), "the pinned bindings must be TensorRT 11"
    binary = Path(distribution.locate_file("tensorrt_bindings/tensorrt.so"))
    return set(re.findall(rb"[A-Za-z_][A-Za-z0-9_]{1,}", binary.read_bytes()))


def _tensorrt_code():
    """The TensorRT code: all of tensorrt_backend.py and the TensorRTRunner class of cuda_runtime.py
    (the rest of that module is the pycuda/ONNX Runtime/NVML layer, not TensorRT)."""
    backend, runtime = (ast.parse(path.read_text()) for path in BACKEND_FILES)
    runner = next(n for n in ast.walk(runtime) if isinstance(n, ast.ClassDef) and n.name == "TensorRTRunner")
    return [(BACKEND_FILES[0].name, backend), (BACKEND_FILES[1].name, runner)]


def _own_names() -> set:
    """Attributes the project assigns on self and functions/methods it defines: not TensorRT names."""
    names = set()
    for path in BACKEND_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self" and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return names


def _used_names():
    used, trt10_only, rtx_only = {}, set(), set()
    for filename, tree in _tensorrt_code():
        exempt_nodes = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in TRT10_ONLY_FUNCTIONS | RTX_ONLY_FUNCTIONS:
                exempt_nodes |= {id(n) for n in ast.walk(node)}
                attrs = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
                (trt10_only if node.name in TRT10_ONLY_FUNCTIONS else rtx_only).update(attrs)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and id(node) not in exempt_nodes:
                used.setdefault(node.attr, f"{filename}:{node.lineno}")
            # getattr(trt.X, "NAME") with a literal name
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr") and len(node.args) > 1:
                if isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                    used.setdefault(node.args[1].value, f"{filename}:{node.lineno}")
    return used, trt10_only, rtx_only


def test_backend_uses_only_names_that_exist_in_tensorrt_11():
    names = _binary_names()
    used, _, _ = _used_names()
    ours = _own_names()
    missing = {name: where for name, where in used.items() if name not in NOT_TENSORRT | ours and name.encode() not in names}
    assert not missing, f"not in TensorRT 11.4's bindings (put 10.x-only calls behind the version check): {missing}"


def test_config_driven_enum_names_exist_in_tensorrt_11():
    """Names the backend builds from config strings (ProfilingVerbosity, HardwareCompatibilityLevel)."""
    names = _binary_names()
    for member in ("DETAILED", "LAYER_NAMES_ONLY", "NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY", "ProfilingVerbosity", "HardwareCompatibilityLevel"):
        assert member.encode() in names, member


def test_the_check_can_fail_tensorrt_10_only_names_are_absent_from_11():
    names = _binary_names()
    _, trt10_only, _ = _used_names()
    removed = {"int8_calibrator", "IInt8EntropyCalibrator2"}
    assert removed <= trt10_only
    for name in removed:
        assert name.encode() not in names, f"{name} was removed in TensorRT 11 but appears in the bindings"


@pytest.mark.parametrize("name", ["STRONGLY_TYPED", "parse_from_file", "build_serialized_network", "execute_async_v3", "set_tensor_address", "create_engine_inspector"])
def test_core_calls_are_present(name):
    assert name.encode() in _binary_names()


def test_tensorrt_rtx_only_names_exist_in_the_installed_tensorrt_rtx():
    import tensorrt_rtx as trt

    _, _, rtx_only = _used_names()
    known = set(dir(trt)) | set(dir(trt.IBuilderConfig)) | set(dir(trt.ComputeCapability))
    assert {"ComputeCapability", "set_compute_capability", "num_compute_capabilities"} <= rtx_only
    assert rtx_only - NOT_TENSORRT - _own_names() <= known
