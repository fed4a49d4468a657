"""Atomic, deterministic artifact writing and content hashing.

Every artifact is written to a temporary sibling and renamed into place, so a stage killed midway
leaves either the previous file or nothing, never half a file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _remove_stale(final: Path) -> None:
    """Temporaries left by a killed earlier run of the same writer."""
    for stale in final.parent.glob(f".{final.name}.*.tmp"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_path` for a directory: fill the yielded folder, then it replaces ``path``."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _finite(data: Any) -> Any:
    """NaN/Inf -> null: JSON has no such numbers, and tools reading metrics reject Python's."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def canonical_json(data: Any) -> str:
    """Stable, standard JSON text: sorted keys, fixed separators, trailing newline, no NaN."""
    return json.dumps(_finite(data), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(canonical_json(data), encoding="utf-8")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(data: Any) -> str:
    return sha256_bytes(canonical_json(data).encode("utf-8"))


def require_file(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` if it is a file, else raise a PipelineError naming what was expected."""
    from .errors import PipelineError

    candidate = Path(path)
    if not candidate.is_file():
        raise PipelineError(f"{what} not found: {candidate} (run the stage that produces it first)")
    return candidate
