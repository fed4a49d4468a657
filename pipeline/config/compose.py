"""Compose conf/ into params.yaml exactly as ``dvc exp run`` does (compose, resolve, dump)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from ..errors import PipelineError
from ..files import write_text
from . import registry  # noqa: F401  (schema + resolver)
from .schema import PipelineConfig

CONF_DIR = registry.CONF_DIR


def compose(overrides: Sequence[str] = (), config_dir: Path | str = CONF_DIR, project: Optional[Path] = None) -> DictConfig:
    """conf/ with ``overrides``, resolved and checked; ``project``: the folder the params file is for
    (output folders must stay inside it; default: the DVC repository around the working directory)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    registry.check_group_overrides(overrides, Path(config_dir))
    token = registry.COMPOSE_ROOT.set(Path(project).resolve() if project is not None else None)
    try:
        with initialize_config_dir(str(Path(config_dir).resolve()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        OmegaConf.resolve(cfg)
        # `+key=value` overrides bypass struct mode; re-check the result against the schema.
        OmegaConf.merge(OmegaConf.structured(PipelineConfig), OmegaConf.to_container(cfg))
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise PipelineError(f"config composition failed: {_explain(exc, Path(config_dir))}") from exc
    finally:
        registry.COMPOSE_ROOT.reset(token)
    return cfg


def _explain(exc: Exception, config_dir: Path) -> str:
    """Hydra's message, plus the options that exist when a group option is unknown."""
    message = str(exc).split("\n\nConfig search path")[0]
    if exc.__cause__ is not None:  # Hydra wraps the OmegaConf error that names key and type
        message += f": {exc.__cause__}"
    unknown = re.search(r"Could not (?:load|find) '(\w+)/([^']+)'", message)
    if unknown:
        group = unknown.group(1)
        options = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        message = f"unknown {group} option '{unknown.group(2)}'; available {group} options: {', '.join(options)}"
    return message


def cpu_target_isas(config_dir: Path | str = CONF_DIR) -> Dict[str, Optional[str]]:
    """Every CPU target option in conf/ and the instruction set it is built for (target name -> ISA)."""
    import yaml

    targets = {path.stem: yaml.safe_load(path.read_text()) for path in sorted((Path(config_dir) / "target").glob("*.yaml"))}
    return {name: conf.get("cpu_isa") for name, conf in targets.items() if conf.get("device") == "cpu"}


def compose_yaml(overrides: Sequence[str] = (), config_dir: Path | str = CONF_DIR, project: Optional[Path] = None) -> str:
    return OmegaConf.to_yaml(compose(overrides, config_dir, project))


def write_params(path: Path | str = "params.yaml", overrides: Sequence[str] = (), config_dir: Path | str = CONF_DIR) -> str:
    from .checks import check_out_dirs

    project = Path(path).resolve().parent
    cfg = compose(overrides, config_dir, project)
    check_out_dirs(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PipelineConfig), cfg)), project)
    text = OmegaConf.to_yaml(cfg)
    write_text(path, text)
    return text
