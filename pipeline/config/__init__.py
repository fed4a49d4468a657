"""Config layer: typed schemas, Hydra composition into params.yaml, and typed loading back."""
from .compose import CONF_DIR, compose, compose_yaml, write_params
from .load import BuildContext, load_params, resolve_build, resolve_model
from .schema import PipelineConfig

__all__ = [
    "CONF_DIR",
    "BuildContext",
    "PipelineConfig",
    "compose",
    "compose_yaml",
    "load_params",
    "resolve_build",
    "resolve_model",
    "write_params",
]
