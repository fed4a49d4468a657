"""Stages run back to back in one process, for scripts and tests that need an artifact without DVC
(`dvc repro` runs each as its own stage; no stage imports this module)."""
from __future__ import annotations

from ..config import BuildContext, ModelContext, resolve_build, resolve_model
from ..errors import PipelineError
from . import benchmark, build, calibrate, export, package, prepare, simplify, validate

# The per-build stages in dvc.yaml's order (serve needs a Triton server; scripts start it themselves).
BUILD_STAGES = {"calibrate": calibrate, "build": build, "validate": validate, "benchmark": benchmark, "package": package}


def prepare_model(cfg, model: str) -> ModelContext:
    """prepare, export and simplify ``model``: its ModelContext."""
    ctx = resolve_model(cfg, model)
    for stage in (prepare, export, simplify):
        stage(cfg, ctx)
    return ctx


def build_through(cfg, build_name: str, last: str = "build") -> BuildContext:
    """The per-build stages of ``build_name`` from calibrate up to and including ``last`` (its model
    prepared already, e.g. by ``prepare_model``): its BuildContext."""
    if last not in BUILD_STAGES:
        raise PipelineError(f"build_through stops at one of {list(BUILD_STAGES)}, not '{last}'")
    ctx = resolve_build(cfg, build_name)
    for name, stage in BUILD_STAGES.items():
        stage(ctx)
        if name == last:
            break
    return ctx
