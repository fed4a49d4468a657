"""Config layer: typed schemas, Hydra composition into params.yaml, and typed loading back.

Names are imported on first use: a stage that only loads params.yaml does not import Hydra's
composition (and so does not depend on it; see dvc.yaml).
"""
from __future__ import annotations

import importlib

_MODULE_OF = {
    "CONF_DIR": "compose", "compose": "compose", "compose_yaml": "compose", "write_params": "compose", "cpu_target_isas": "compose",
    "BuildContext": "load", "ModelContext": "load", "load_params": "load", "resolve_build": "load", "resolve_model": "load",
    "PipelineConfig": "schema",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
