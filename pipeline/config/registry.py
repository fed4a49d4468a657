"""Registers the schema and the build-matrix resolver with Hydra/OmegaConf.

Imported by ``hydra_plugins/trt_pipeline`` (Hydra imports every module there when it starts, which
is how ``dvc exp run``'s composition gets them) and by :mod:`pipeline.config.compose`.
"""
from __future__ import annotations

from typing import Dict

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from .schema import BuildEntry, PipelineConfig, Precision

SCHEMA_NAME = "pipeline_schema"
MATRIX_RESOLVER = "pipeline.build_matrix"


class InvalidCombination(ValueError):
    pass


def build_matrix(models: DictConfig, targets: DictConfig, precisions: DictConfig, datasets: DictConfig) -> Dict[str, BuildEntry]:
    """Every (model, target, precision) selected, keyed ``<model>-<target>-<precision>``.

    Raises when a target cannot run a selected precision or a model names an unknown dataset, so an
    invalid combination fails at compose time and never reaches dvc.yaml.
    """
    problems = []
    for model_name, model in models.items():
        if model.dataset not in datasets:
            problems.append(
                f"model '{model_name}' uses dataset '{model.dataset}', which is not selected; "
                f"selected datasets: {sorted(datasets)}"
            )
    for target_name, target in targets.items():
        allowed = [str(getattr(p, "value", p)) for p in target.precisions]
        refused = [p for p in precisions if p not in allowed]
        if refused:
            problems.append(
                f"target '{target_name}' cannot run precision {refused}; it supports {allowed}"
            )
    if problems:
        raise InvalidCombination("; ".join(problems))
    return {
        f"{m}-{t}-{p}": BuildEntry(model=m, target=t, precision=Precision(p), dataset=models[m].dataset)
        for m in sorted(models)
        for t in sorted(targets)
        for p in sorted(precisions)
    }


def register() -> None:
    ConfigStore.instance().store(name=SCHEMA_NAME, node=PipelineConfig)
    if not OmegaConf.has_resolver(MATRIX_RESOLVER):
        OmegaConf.register_new_resolver(MATRIX_RESOLVER, build_matrix)


register()
