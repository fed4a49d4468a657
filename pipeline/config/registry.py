"""Registers the schema and the build-matrix resolver with Hydra/OmegaConf.

Imported by ``hydra_plugins/trt_pipeline`` (Hydra imports every module there when it starts, which
is how ``dvc exp run``'s composition gets them) and by :mod:`pipeline.config.compose`.
"""
from __future__ import annotations

from typing import Dict

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from .schema import BuildEntry, ModelEntry, PipelineConfig, Precision, option_value

SCHEMA_NAME = "pipeline_schema"
MATRIX_RESOLVER = "pipeline.build_matrix"
MODELS_RESOLVER = "pipeline.model_entries"


class InvalidCombination(ValueError):
    pass


def build_matrix(models: DictConfig, targets: DictConfig, precisions: DictConfig, datasets: DictConfig, *, _root_: DictConfig) -> Dict[str, BuildEntry]:
    """Every (model, target, precision) selected, keyed ``<model>-<target>-<precision>``.

    Raises when a target cannot run a selected precision, a model names an unknown dataset or any
    value is out of range (checks.py), so bad config fails at compose time (``make params`` and
    ``dvc exp run`` alike) and never reaches dvc.yaml.
    """
    from .checks import config_problems

    values = OmegaConf.to_container(_root_, resolve=False)
    values.pop("builds", None)  # this resolver computes it
    values.pop("models", None)  # computed by its own resolver
    values.pop("servable", None)
    problems = config_problems(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PipelineConfig), values)))
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


SERVABLE_RESOLVER = "pipeline.servable_builds"
NO_SOURCE_FILE = "stages/prepare.py"


def servable_builds(builds: DictConfig, targets: DictConfig, precisions) -> Dict[str, BuildEntry]:
    """The builds the embedded Triton server serves in the Python-backend form, at the precisions chosen:
    ONNX Runtime builds, on the CPU or the CUDA provider (TensorRT builds are packaged for their own hosts)."""
    chosen = {option_value(p) for p in precisions}
    return {name: entry for name, entry in builds.items()
            if option_value(targets[entry.target].backend) == "onnxruntime" and option_value(entry.precision) in chosen}


def _has_external_data(path) -> bool:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # a broken file: prepare reports it, naming the file
        return False
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def model_entries(models: DictConfig) -> Dict[str, ModelEntry]:
    """Per selected model: its dataset and the weights file prepare reads, so DVC reruns prepare
    when the user replaces that file. pkg:// resources are pinned with the package in
    requirements.lock, so they need no file dependency."""
    from pathlib import Path

    entries = {}
    for name, model in models.items():
        location = model.get("weights_path")
        source = NO_SOURCE_FILE
        if location and not str(location).startswith("pkg://"):
            source = str(location)
            if option_value(model.source) == "onnx" and Path(location).is_file() and _has_external_data(Path(location)):
                source = str(Path(location).parent)  # the .onnx and its data files: track the folder
        entries[name] = ModelEntry(dataset=model.dataset, source=source)
    return entries


def register() -> None:
    ConfigStore.instance().store(name=SCHEMA_NAME, node=PipelineConfig)
    if not OmegaConf.has_resolver(MATRIX_RESOLVER):
        OmegaConf.register_new_resolver(MATRIX_RESOLVER, build_matrix)
    if not OmegaConf.has_resolver(SERVABLE_RESOLVER):
        OmegaConf.register_new_resolver(SERVABLE_RESOLVER, servable_builds)
    if not OmegaConf.has_resolver(MODELS_RESOLVER):
        OmegaConf.register_new_resolver(MODELS_RESOLVER, model_entries)


register()
