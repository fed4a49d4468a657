"""What each DVC stage does, as plain functions of the composed config (the top layer).

One module per stage, so a stage imports only the code it runs: dvc.yaml declares exactly those
modules as the stage's dependencies (a test checks), and a change reruns only the stages it can
affect. stages/*.py only parse arguments, load params.yaml and call one function here.
``from pipeline import steps; steps.calibrate(ctx)`` imports the one module it needs, on first use.
"""
from __future__ import annotations

import importlib

# <stage>_step.py: a module named like its function would shadow it once imported.
_MODULE_OF = {name: f"{name}_step" for name in ("environment", "prepare", "export", "simplify", "calibrate", "build", "validate",
                                                   "benchmark", "package", "serve")}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
