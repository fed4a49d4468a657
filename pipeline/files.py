"""Atomic, deterministic artifact writing and content hashing.

Every artifact is written to a temporary sibling and renamed into place, so a stage killed midway
leaves either the previous file or nothing, never half a file.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def output_lock(final: Path) -> Iterator[None]:
    """Exclusive right to write ``final``: a second writer of the same output is refused at once,
    instead of deleting the first one's temporaries as stale under it."""
    from .errors import PipelineError

    lock = final.parent / f".{final.name}.lock"
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PipelineError(f"another run is writing {final} right now (it holds {lock}); wait for it to finish") from None
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break  # still the lock file on disk, not one a finishing writer just removed
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        os.unlink(lock)
        os.close(fd)


def stages_lock_file(project: Path) -> Path:
    """The lock every stage of ``project`` holds shared while it runs, and compose takes exclusively:
    DVC releases its own lock while stage commands run, so it cannot keep params.yaml still."""
    project = Path(project)
    return project / ".dvc" / "tmp" / "pipeline-stages.lock" if (project / ".dvc").is_dir() else project / ".pipeline-stages.lock"


@contextlib.contextmanager
def project_lock(project: Path, exclusive: bool, refusal: str = "") -> Iterator[None]:
    """Shared (a stage running; waits for a compose to finish writing) or exclusive (compose: refused at
    once, with ``refusal``, while any stage of the project runs)."""
    from .errors import PipelineError

    lock = stages_lock_file(project)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
        except BlockingIOError:
            raise PipelineError(f"{refusal} (a stage holds {lock})") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock; the file stays for the next run


def _temporaries(final: Path) -> list:
    return list(final.parent.glob(f".{final.name}.*.tmp"))


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def _lock_key(temporary: Path) -> Path:
    """The output whose lock guards a temporary: ``.<output>.<random>.tmp`` -> <output>; a scratch
    folder ``.<output>.scratch-<random>.tmp`` has a lock of its own."""
    name = temporary.name[1 : -len(".tmp")]
    return temporary.parent / (name if ".scratch-" in name else name.rsplit(".", 1)[0])


def remove_stale_temporaries(root: str | os.PathLike) -> int:
    """Temporaries (and lock files) under ``root`` whose writer is gone (killed): removed, unless a
    live writer holds their lock. Stages call this on start, so a kill leaves nothing behind for long,
    even when DVC restores the killed stage's output from its run-cache instead of rerunning it."""
    from .errors import PipelineError

    removed = 0
    for temporary in sorted(Path(root).rglob(".*.tmp")):
        try:
            with output_lock(_lock_key(temporary)):
                if temporary.exists():
                    _remove(temporary)
                    removed += 1
        except PipelineError:
            continue  # a live writer: not stale
    for lock in sorted(Path(root).rglob(".*.lock")):  # left by a killed writer; taking it removes it
        try:
            with output_lock(lock.parent / lock.name[1 : -len(".lock")]):
                pass
        except (PipelineError, FileNotFoundError):
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(final):
        for stale in _temporaries(final):  # left by a killed earlier run of this writer
            _remove(stale)
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
    with output_lock(final):
        for stale in _temporaries(final):
            _remove(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        try:
            yield tmp
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)


@contextlib.contextmanager
def scratch_dir(output: str | os.PathLike) -> Iterator[Path]:
    """Working space for the stage writing ``output`` (intermediate models, calibration graphs):
    next to the output, never in the system temp folder, removed on exit; if the stage is killed,
    the next run of the writer or any stage's start removes it (its name is a stale temporary's)."""
    final = Path(output)
    final.parent.mkdir(parents=True, exist_ok=True)
    key = final.parent / f"{final.name}.scratch-{secrets.token_hex(6)}"
    with output_lock(key):  # held while the folder lives: no other run's sweep takes it as stale
        work = key.parent / f".{key.name}.tmp"
        work.mkdir()
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)


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
