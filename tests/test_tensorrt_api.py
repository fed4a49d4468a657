"""Every TensorRT name the backend uses exists, on the class it is used on, in the real TensorRT 11
Python bindings.

The bindings are tensorrt-cu13-bindings 11.4 (pinned in requirements.lock): TensorRT 11.4's real
extension module. It links libnvinfer/libnvonnxparser/libnvinfer_plugin, which no machine here has,
but it only calls nine factory functions of theirs. A stub library exporting those nine (compiled
here with gcc) lets the real module import in a child process, so every class, method, property and
enum member is read with ``dir()`` and every return type from its pybind11 signature, as defined.

The backend's code is then type-checked against that API: ``trt.X`` is the bindings' class X, a
method's result has the type its signature names, and variables holding TensorRT objects are typed
by their conventional names (``config`` is an IBuilderConfig, ...). An attribute on a TensorRT type
that the type lacks fails the test, with the line.
"""
from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from .conftest import REPO

BACKEND = REPO / "pipeline" / "backends" / "tensorrt_backend.py"
RUNTIME = REPO / "pipeline" / "backends" / "cuda_runners.py"
RTX_ONLY_FUNCTIONS = {"_set_rtx_compute_capability"}  # checked against the real tensorrt_rtx module

# Variables (and self attributes) that hold TensorRT objects, by name, as the backend writes them.
NAME_TYPES = {
    "builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser", "config": "IBuilderConfig",
    "profile": "IOptimizationProfile", "cache": "ITimingCache", "engine": "ICudaEngine", "runtime": "Runtime",
    "inspector": "EngineInspector", "context": "IExecutionContext", "layer": "ILayer", "tensor": "ITensor",
    "error": "ParserError", "logger": "Logger", "dtype": "DataType",
}

STUB_C = """
void *createInferBuilder_INTERNAL(void *l, int v) { return 0; }
void *createInferRefitter_INTERNAL(void *e, void *l, int v) { return 0; }
void *createInferRuntime_INTERNAL(void *l, int v) { return 0; }
void *createNvOnnxParserRefitter_INTERNAL(void *r, void *l, int v) { return 0; }
void *createNvOnnxParser_INTERNAL(void *n, void *l, int v) { return 0; }
void *getBuilderPluginRegistry(int c) { return 0; }
int getNvOnnxParserVersion(void) { return 0; }
void *getPluginRegistry(void) { return 0; }
int initLibNvInferPlugins(void *l, const char *n) { return 1; }
"""
STUBBED = ["libnvinfer.so.11", "libnvinfer_plugin.so.11", "libnvonnxparser.so.11"]

# Runs in a child process: import the module, print {class: {member: return type or null}}.
DUMP = textwrap.dedent(r'''
    import ctypes, importlib, importlib.util, inspect, json, re, sys
    so, package, stubs = sys.argv[1], sys.argv[2], sys.argv[3:]
    for stub in stubs:
        ctypes.CDLL(stub, mode=ctypes.RTLD_GLOBAL)
    if so == "-":
        module = importlib.import_module(package)
    else:
        spec = importlib.util.spec_from_file_location("tensorrt", so)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    RETURNS = re.compile(r"^\s*(?:\d+\.\s*)?[\w]*\(.*\)\s*->\s*([\w.]+)", re.M)

    def returns(obj):
        doc = getattr(getattr(obj, "fget", None), "__doc__", None) or getattr(obj, "__doc__", None) or ""
        found = RETURNS.search(doc)
        return found.group(1).rsplit(".", 1)[-1] if found else None

    api = {"": {name: returns(getattr(module, name)) if not inspect.isclass(getattr(module, name)) else name for name in dir(module)}}
    for name in dir(module):
        cls = getattr(module, name)
        if inspect.isclass(cls):
            api[name] = {}
            for member in dir(cls):
                raw = inspect.getattr_static(cls, member, None)
                api[name][member] = name if isinstance(getattr(cls, member, None), cls) else returns(raw)
    print(json.dumps(api))
''')


def _dump(so: str, package: str, stubs: List[str]) -> Dict[str, Dict[str, Optional[str]]]:
    result = subprocess.run([sys.executable, "-c", DUMP, so, package, *stubs], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _python_level_names(init_py: Path) -> set:
    """Names the package's __init__.py defines around the extension (nptype, __version__, ...)."""
    names = set()
    for node in ast.parse(init_py.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names | {"__version__"}


@pytest.fixture(scope="module")
def trt11(tmp_path_factory) -> Dict[str, Dict[str, Optional[str]]]:
    distribution = importlib.metadata.distribution("tensorrt-cu13-bindings")
    assert distribution.version.startswith("11."), "the pinned bindings must be TensorRT 11"
    stubs = tmp_path_factory.mktemp("trt_stubs")
    (stubs / "stub.c").write_text(STUB_C)
    for soname in STUBBED:
        subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(stubs / soname), str(stubs / "stub.c")], check=True)
    package = Path(distribution.locate_file("tensorrt_bindings"))
    api = _dump(str(package / "tensorrt.so"), "tensorrt", [str(stubs / s) for s in STUBBED])
    api[""].update(dict.fromkeys(_python_level_names(package / "__init__.py")))
    return api


@pytest.fixture(scope="module")
def rtx_api() -> Dict[str, Dict[str, Optional[str]]]:
    import tensorrt_rtx

    api = _dump("-", "tensorrt_rtx", [])
    api[""].update(dict.fromkeys(_python_level_names(Path(tensorrt_rtx.__file__))))
    return api


class _Checker(ast.NodeVisitor):
    """Types expressions built from ``trt`` and TensorRT-typed names; records attributes a type lacks."""

    def __init__(self, api: Dict[str, Dict[str, Optional[str]]], rtx_only: bool):
        self.api, self.rtx_only, self.where = api, rtx_only, ""
        self.inside = 0  # > 0 while inside a function this checker covers
        self.missing: List[str] = []
        self.checked: List[Tuple[str, str]] = []

    def type_of(self, node: ast.AST) -> Optional[str]:
        if isinstance(node, ast.Name):
            return "" if node.id == "trt" else NAME_TYPES.get(node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return NAME_TYPES.get(node.attr)
            owner = self.type_of(node.value)
            if owner is None or owner not in self.api:
                return None
            return self.api[owner].get(node.attr)
        if isinstance(node, ast.Call):
            return self.type_of(node.func)
        return None

    def check(self, owner: str, member: str, line: int) -> None:
        self.checked.append((owner or "tensorrt", member))
        if member not in self.api.get(owner, {}):
            self.missing.append(f"{owner or 'tensorrt'}.{member} ({self.where}:{line})")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if (node.name in RTX_ONLY_FUNCTIONS) == self.rtx_only or self.inside:
            self.inside += 1
            self.generic_visit(node)
            self.inside -= 1
        elif not self.rtx_only:
            pass  # an RTX-only function: checked against tensorrt_rtx instead
        else:
            self.generic_visit(node)  # look inside for RTX-only functions

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if not (isinstance(node.value, ast.Name) and node.value.id == "self"):
            owner = self.type_of(node.value)
            if owner is not None and owner in self.api and (self.inside or not self.rtx_only):
                self.check(owner, node.attr, node.lineno)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        # getattr(trt.X, "NAME") / hasattr(...) with a literal member name
        if getattr(node.func, "id", None) in ("getattr", "hasattr") and len(node.args) > 1:
            owner = self.type_of(node.args[0])
            name = node.args[1]
            if owner is not None and isinstance(name, ast.Constant) and isinstance(name.value, str) and (self.inside or not self.rtx_only):
                self.check(owner, name.value, node.lineno)
        self.generic_visit(node)


def _tensorrt_code() -> List[Tuple[str, ast.AST]]:
    """All of tensorrt_backend.py and the TensorRTRunner class of cuda_runners.py (the rest of that
    module is the stream runner and the ONNX Runtime CUDA runner)."""
    runtime = ast.parse(RUNTIME.read_text())
    runner = next(n for n in ast.walk(runtime) if isinstance(n, ast.ClassDef) and n.name == "TensorRTRunner")
    return [(BACKEND.name, ast.parse(BACKEND.read_text())), (RUNTIME.name, runner)]


def _check(api, trees, include_rtx_only: bool) -> _Checker:
    """Check the RTX-only functions (``include_rtx_only``) or everything else."""
    checker = _Checker(api, rtx_only=include_rtx_only)
    for where, tree in trees:
        checker.where = where
        checker.visit(tree)
    return checker


def test_backend_uses_only_names_tensorrt_11_defines_on_those_classes(trt11):
    checker = _check(trt11, _tensorrt_code(), include_rtx_only=False)
    assert not checker.missing, f"not in TensorRT 11.4's bindings: {checker.missing}"
    owners = {owner for owner, _ in checker.checked}
    # The check reaches every kind of object the backend touches, not only module-level names.
    assert {"tensorrt", "Builder", "IBuilderConfig", "INetworkDefinition", "OnnxParser", "ITensor", "ILayer",
            "ICudaEngine", "IExecutionContext", "Runtime", "IOptimizationProfile"} <= owners, owners
    assert len(checker.checked) > 60


def test_rtx_only_calls_exist_in_the_installed_tensorrt_rtx(rtx_api, trt11):
    checker = _check(rtx_api, _tensorrt_code(), include_rtx_only=True)
    assert not checker.missing, checker.missing
    assert {("IBuilderConfig", "set_compute_capability"), ("tensorrt", "ComputeCapability")} <= set(checker.checked)
    assert "ComputeCapability" not in trt11[""], "datacenter TensorRT builds for the GPU it runs on"


def test_config_driven_enum_members_exist_in_tensorrt_11(trt11):
    """Members the backend picks by config value (ProfilingVerbosity, HardwareCompatibilityLevel)."""
    from pipeline.config.schema import HardwareCompatibility, ProfilingVerbosity

    for option, enum in ((ProfilingVerbosity, "ProfilingVerbosity"), (HardwareCompatibility, "HardwareCompatibilityLevel")):
        for value in option:
            assert value.value.upper() in trt11[enum], f"{enum}.{value.value.upper()}"


def test_the_check_fails_on_names_tensorrt_11_removed(trt11):
    """TensorRT 10's weakly typed INT8 (BuilderFlag.INT8, IBuilderConfig.int8_calibrator) is gone in 11."""
    snippet = ast.parse(textwrap.dedent("""
        def weakly_typed(trt, config):
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = trt.IInt8EntropyCalibrator2()
            config.set_flag(trt.BuilderFlag.TF32)
    """))
    checker = _check(trt11, [("snippet.py", snippet)], include_rtx_only=False)
    assert sorted(m.split(" ")[0] for m in checker.missing) == ["BuilderFlag.INT8", "IBuilderConfig.int8_calibrator", "tensorrt.IInt8EntropyCalibrator2"]
    assert ("BuilderFlag", "TF32") in checker.checked
