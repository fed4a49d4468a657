"""Run one stage in this process and record what it reads: config keys, project modules, files.

    python tests/stage_reads.py OUT.json stages.calibrate --build digits_cnn-cpu-int8

Run from a project root (dvc.yaml, params.yaml). Records, into OUT.json:
* params: every config key the stage reads (attribute reads on the typed config; a whole mapping
  read by iterating it; a list read as one value);
* modules: the project's source files imported while the stage ran;
* reads / writes: project files opened for reading (Python's open, and every path the pipeline
  checks with require_file, which covers files ONNX Runtime opens itself), and files renamed into
  place (atomic writes), relative to the project root.
The stage's exit status is kept in OUT.json; the test compares all of it with dvc.lock.
"""
from __future__ import annotations

import dataclasses
import json
import os
import runpy
import sys
from pathlib import Path

ROOT = Path.cwd().resolve()
# Files outside the project that count too (a user's model file), as absolute paths.
ALSO = [Path(p).resolve() for p in os.environ.get("STAGE_READS_ALSO", "").split(os.pathsep) if p]
reads, writes, params = set(), set(), set()


def _relative(path) -> str | None:
    try:
        given = Path(os.fsdecode(path))
        if not given.is_absolute() and not given.exists():
            return None  # relative to a directory descriptor (shutil.rmtree's os.open(name, dir_fd=...))
        resolved = given.resolve()
    except (TypeError, ValueError, OSError):
        return None
    try:
        relative = resolved.relative_to(ROOT)
    except ValueError:
        if any(resolved == also or also in resolved.parents for also in ALSO):
            return resolved.as_posix()
        return None  # outside the project: installed packages, the standard library
    parts = relative.parts
    if any(part.startswith(".") and part.endswith(".tmp") for part in parts) or (parts and parts[0] in (".dvc", ".git")):
        return None  # the stage's own work in progress, DVC's and git's internals
    return relative.as_posix()


def _audit(event: str, args) -> None:
    if event == "open" and args[0] is not None and not isinstance(args[0], int):
        mode = str(args[1] or "r")
        relative = _relative(args[0])
        if relative and not any(flag in mode for flag in "wax+") and not os.path.isdir(os.fsdecode(args[0])):
            reads.add(relative)  # a file's contents (a directory opened to walk it is not a read)
    elif event in ("os.rename", "os.replace"):
        relative = _relative(args[1])
        if relative:
            writes.add(relative)


class _TrackedDict(dict):
    """A config mapping: iterating it reads all of it; looking up one key reads only that entry."""

    _path = ""

    def _read(self):
        if self._path:  # copies dataclasses.asdict makes are not the config's own mappings
            params.add(self._path)

    def __iter__(self):
        self._read()
        return dict.__iter__(self)

    def items(self):
        self._read()
        return dict.items(self)

    def keys(self):
        self._read()
        return dict.keys(self)

    def values(self):
        self._read()
        return dict.values(self)

    def __len__(self):
        self._read()
        return dict.__len__(self)


_PATHS: dict = {}


def _track(obj, path: str) -> None:
    """Remember where each config object sits; wrap its mappings."""
    if dataclasses.is_dataclass(obj):
        _PATHS[id(obj)] = path
        for field in dataclasses.fields(obj):
            value = object.__getattribute__(obj, field.name)
            child = f"{path}.{field.name}" if path else field.name
            if isinstance(value, dict):
                tracked = _TrackedDict(value)
                tracked._path = child
                object.__setattr__(obj, field.name, tracked)
                for key, item in value.items():
                    _track(item, f"{child}.{key}")
            elif isinstance(value, list):
                for item in value:
                    _track(item, child)  # an element read is a read of the list
            else:
                _track(value, child)


def _tracking_getattribute(self, name):
    value = object.__getattribute__(self, name)
    owner = _PATHS.get(id(self))
    if owner is not None and name in {f.name for f in dataclasses.fields(type(self))}:
        if not (dataclasses.is_dataclass(value) or isinstance(value, dict)):
            params.add(f"{owner}.{name}" if owner else name)
    return value


def main() -> int:
    out, module, *argv = sys.argv[1:]
    sys.path.insert(0, str(ROOT))
    sys.addaudithook(_audit)
    import pipeline.files as io

    original_require = io.require_file

    def require_file(path, what):
        relative = _relative(path)
        if relative:
            reads.add(relative)
        return original_require(path, what)

    io.require_file = require_file  # before any pipeline module binds the name
    from pipeline.config import load as load_module
    from pipeline.config import schema

    for cls in vars(schema).values():
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            cls.__getattribute__ = _tracking_getattribute
    original_load = load_module.load_params

    def load_params(path="params.yaml"):
        cfg = original_load(path)
        _track(cfg, "")
        return cfg

    load_module.load_params = load_params
    sys.argv = [module, *argv]
    status = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        status = exit_.code or 0
    modules = set()
    for name, loaded in list(sys.modules.items()):
        origin = getattr(loaded, "__file__", None)
        relative = _relative(origin) if origin else None
        if relative and relative.endswith(".py") and relative.split("/")[0] in ("pipeline", "stages"):
            modules.add(relative)
    modules.add(module.replace(".", "/") + ".py")  # the stage script itself runs as __main__
    own = {r for r in reads if r.endswith((".pyc", ".lock")) or r == "params.yaml"}  # bytecode, write locks, params (tracked by key)
    Path(out).write_text(json.dumps({"status": status, "params": sorted(params), "modules": sorted(modules),
                                     "reads": sorted(reads - modules - own), "writes": sorted(writes)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
