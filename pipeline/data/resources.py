"""Paths to files inside installed packages: ``pkg://package/sub/dir`` or a plain path."""
from __future__ import annotations

from pathlib import Path

from ..errors import PipelineError


def resolve_path(location: str | None) -> Path:
    if not location:
        raise PipelineError("a model or tokenizer location is required (a path or pkg://package/subdir)")
    if location.startswith("pkg://"):
        package, _, inner = location[len("pkg://"):].partition("/")
        from importlib.util import find_spec

        spec = find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise PipelineError(f"package '{package}' is not installed (needed for {location}); it is in requirements.lock: run `make venv`")
        path = Path(list(spec.submodule_search_locations)[0]) / inner
    else:
        path = Path(location)
    if not path.exists():
        raise PipelineError(f"{location} not found ({path})")
    return path
