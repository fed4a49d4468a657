"""Bring-your-own ONNX: make a file from another exporter fit the pipeline.

Handles what other exporters leave behind: weights also listed as graph inputs, opsets too old for
per-channel Q/DQ, a fixed batch dimension (made dynamic when the config asks, else refused), and
inputs that disagree with the config's declaration.
"""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import version_converter

from ..config.schema import ModelConfig
from ..errors import PipelineError
from ..io import atomic_path
from .inspect import load_model, onnx_elem_type, real_inputs

def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


def normalize_onnx(src: Path, cfg: ModelConfig, model_name: str) -> tuple[onnx.ModelProto, dict]:
    model = load_model(src, "bring-your-own ONNX")
    changes: dict = {}
    initializer_names = {i.name for i in model.graph.initializer}
    weights_as_inputs = [i.name for i in model.graph.input if i.name in initializer_names]
    if weights_as_inputs:
        kept = [i for i in model.graph.input if i.name not in initializer_names]
        del model.graph.input[:]
        model.graph.input.extend(kept)
        changes["initializers_removed_from_inputs"] = len(weights_as_inputs)

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < cfg.opset:
        try:
            model = version_converter.convert_version(model, cfg.opset)
        except Exception as exc:  # the converter raises plain RuntimeErrors naming the op
            raise PipelineError(f"cannot upgrade {src} from opset {opset} to {cfg.opset} (per-channel Q/DQ needs >= 13): {exc}") from exc
        changes["opset"] = [opset, cfg.opset]

    inputs = {i.name: i for i in real_inputs(model)}
    declared = {spec.name: spec for spec in cfg.inputs}
    if set(inputs) != set(declared):
        raise PipelineError(f"{src} has inputs {sorted(inputs)}; model.{model_name}.inputs declares {sorted(declared)}")
    for name, value in inputs.items():
        spec, dims = declared[name], _dims(value)
        if len(dims) != len(spec.shape):
            raise PipelineError(f"input '{name}' of {src} has rank {len(dims)} ({dims}); the config declares {spec.shape}")
        if value.type.tensor_type.elem_type != onnx_elem_type(spec.dtype):
            raise PipelineError(f"input '{name}' of {src} is {onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)}; the config declares {spec.dtype}")
        for axis, (have, want) in enumerate(zip(dims, spec.shape)):
            if want >= 0 and have >= 0 and have != want:
                raise PipelineError(f"input '{name}' axis {axis} is {have} in {src}; the config declares {want}")
        if spec.shape[0] < 0 and dims[0] >= 0:
            if not cfg.dynamic_batch:
                raise PipelineError(
                    f"input '{name}' of {src} has a fixed batch dimension of {dims[0]}; set model.{model_name}.dynamic_batch=true "
                    f"to make it dynamic, or declare shape {[dims[0]] + spec.shape[1:]} in the config"
                )
            changes["batch_made_dynamic"] = True

    if changes.get("batch_made_dynamic"):
        for value in list(model.graph.input) + list(model.graph.output):
            shape = value.type.tensor_type.shape
            if shape.dim:
                shape.dim[0].Clear()
                shape.dim[0].dim_param = "batch"
        del model.graph.value_info[:]  # stale static shapes; simplify re-infers them
    # Open dims the config names get its names, so profiles can refer to them.
    for value in model.graph.input:
        if value.name in declared:
            for axis, dim in enumerate(value.type.tensor_type.shape.dim):
                if not dim.HasField("dim_value"):
                    dim.dim_param = declared[value.name].axis_name(axis)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise PipelineError(f"{src} is not valid after normalisation: {str(exc).splitlines()[0]}") from exc
    return model, changes


def import_onnx(src: Path, cfg: ModelConfig, model_name: str, out_path: Path) -> dict:
    model, changes = normalize_onnx(src, cfg, model_name)
    model.producer_name, model.producer_version = "trt-pipeline", ""
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    return changes
