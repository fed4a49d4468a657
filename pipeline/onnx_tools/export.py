"""PyTorch -> ONNX with named inputs/outputs and a dynamic batch axis; byte-deterministic."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx

from ..config.schema import ModelConfig
from ..errors import PipelineError
from ..files import atomic_path


def export_onnx(model, cfg: ModelConfig, out_path: Path) -> onnx.ModelProto:
    import torch

    if cfg.opset < 13:
        raise PipelineError(f"opset {cfg.opset} is too old: per-channel Q/DQ needs opset >= 13")
    # Dynamic dims get sizes other than 1 so the tracer cannot specialise on them.
    dummies = tuple(
        torch.ones([(2 if i == 0 else 16) if d < 0 else d for i, d in enumerate(spec.shape)], dtype=getattr(torch, spec.dtype))
        for spec in cfg.inputs
    )
    dynamic_axes = {spec.name: {i: spec.axis_name(i) for i, d in enumerate(spec.shape) if d < 0} for spec in cfg.inputs}
    dynamic_axes.update({name: {0: "batch"} for name in cfg.outputs})
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        # The TorchScript exporter: stable opset control and byte-identical output for equal weights.
        torch.onnx.export(
            model.eval(), dummies, buffer,
            input_names=[spec.name for spec in cfg.inputs], output_names=list(cfg.outputs),
            dynamic_axes=dynamic_axes, opset_version=cfg.opset, do_constant_folding=True, dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.producer_name, proto.producer_version = "trt-pipeline", ""
    with atomic_path(out_path) as tmp:
        onnx.save(proto, str(tmp))
    return proto
