"""Load params.yaml back into typed config and look up one build's or model's settings."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import PipelineError
from .checks import check_config, check_out_dirs
from .schema import (
    BuildEntry,
    DatasetConfig,
    ModelConfig,
    PipelineConfig,
    PrecisionConfig,
    TargetConfig,
    as_plain,
    option_value,
)


def load_params(path: Path | str = "params.yaml") -> PipelineConfig:
    params_path = Path(path)
    if not params_path.is_file():
        raise PipelineError(f"{params_path} not found: run `make params` to compose it from conf/")
    import yaml

    try:
        merged = OmegaConf.merge(OmegaConf.structured(PipelineConfig), OmegaConf.load(params_path))
        cfg: PipelineConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except yaml.YAMLError as exc:  # a hand-edited file that is no longer YAML
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise PipelineError(f"{params_path} is not valid YAML{line} ({getattr(exc, 'problem', None) or exc}); "
                            f"fix it or compose it again with `make params`") from exc
    except OmegaConfBaseException as exc:
        raise PipelineError(f"invalid {params_path}: {exc}") from exc
    check_config(cfg)  # params.yaml may have been edited, or written by `dvc exp run -S`
    check_out_dirs(cfg, params_path.parent)
    return cfg


def _lookup(table: dict, key: str, group: str):
    if key not in table:
        raise PipelineError(f"unknown {group} '{key}'; params.yaml has: {sorted(table)}")
    return table[key]


@dataclass
class ModelContext:
    name: str
    model: ModelConfig
    dataset_name: str
    dataset: DatasetConfig


@dataclass
class BuildContext:
    """Everything one build-matrix cell needs, resolved from params.yaml."""

    name: str
    entry: BuildEntry
    model: ModelConfig
    target: TargetConfig
    precision: PrecisionConfig
    dataset: DatasetConfig
    config: PipelineConfig

    @property
    def precision_name(self) -> str:
        return self.entry.precision.value

    def artifact_identity(self) -> dict:
        """What this build's engine sidecar must say (load refuses any other build's engine)."""
        return {"build": self.name, "target": self.entry.target, "precision": self.precision_name}

    def image_preprocess(self) -> Optional[dict]:
        """The resolved preprocessing of an image dataset (None for other data): recorded in the sidecar
        and the Triton package, so whoever serves the artifact feeds it the same way."""
        preprocess = as_plain(self.dataset.preprocess)  # read for every build: a DVC param of build
        return preprocess if option_value(self.dataset.source) in ("image_folder", "photo_crops") else None

    def config_fingerprint(self) -> dict:
        """The settings the build stage turns into this artifact (its declared DVC params), hashed
        into the sidecar: the hash changes exactly when the build reruns."""
        return as_plain(
            {
                "build": self.name,
                "target": self.target,
                "model": {"inputs": self.model.inputs, "profiles": self.model.profiles},
                "preprocess": self.image_preprocess(),
            }
        )


def resolve_model(cfg: PipelineConfig, name: str) -> ModelContext:
    model = _lookup(cfg.model, name, "model")
    dataset_name = _lookup(cfg.models, name, "model").dataset  # the computed entry DVC's stage reads
    return ModelContext(name=name, model=model, dataset_name=dataset_name, dataset=_lookup(cfg.dataset, dataset_name, "dataset"))


def resolve_build(cfg: PipelineConfig, name: str) -> BuildContext:
    entry = _lookup(cfg.builds, name, "build")
    model = _lookup(cfg.model, entry.model, "model")
    return BuildContext(
        name=name,
        entry=entry,
        model=model,
        target=_lookup(cfg.target, entry.target, "target"),
        precision=_lookup(cfg.precision, entry.precision.value, "precision"),
        dataset=_lookup(cfg.dataset, entry.dataset, "dataset"),
        config=cfg,
    )
