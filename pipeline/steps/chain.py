"""Stages run back to back in one process, for scripts and tests that need an artifact without DVC
(`dvc repro` runs each as its own stage; no stage imports this module)."""
from __future__ import annotations

from ..config import ModelContext, resolve_model
from . import export, prepare, simplify


def prepare_model(cfg, model: str) -> ModelContext:
    """prepare, export and simplify ``model``: its ModelContext."""
    ctx = resolve_model(cfg, model)
    for stage in (prepare, export, simplify):
        stage(cfg, ctx)
    return ctx
