"""FP16/BF16 conversion with ModelOpt AutoCast (runs on the CPU; keeps overflow-prone ops in FP32)."""
from __future__ import annotations

import logging
from pathlib import Path

import onnx

from ..errors import PipelineError
from ..files import atomic_path
from ..scoped import logger_levels

_AUTOCAST_TYPES = {"float16": "fp16", "bfloat16": "bf16"}


def autocast_file(src: Path, dst: Path, dtype: str) -> dict:
    """Convert ``src`` to mixed ``dtype``; return which nodes stayed in FP32 (for the report)."""
    if dtype not in _AUTOCAST_TYPES:
        raise PipelineError(f"AutoCast converts to {sorted(_AUTOCAST_TYPES)}, not '{dtype}'")
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError as exc:
        raise PipelineError(f"fp16/bf16 conversion needs nvidia-modelopt ({exc}); run `make venv`") from exc
    with logger_levels(logging.WARNING, "modelopt", "modelopt.onnx", "modelopt.onnx.autocast"):
        converted = convert_to_mixed_precision(
            onnx_path=str(src), low_precision_type=_AUTOCAST_TYPES[dtype], keep_io_types=True, providers=["cpu"]
        )
    low = onnx.TensorProto.FLOAT16 if dtype == "float16" else onnx.TensorProto.BFLOAT16
    converted_nodes, kept_fp32 = _classify_nodes(converted, low)
    with atomic_path(dst) as tmp:
        onnx.save(converted, str(tmp))
    return {"dtype": dtype, "nodes_low_precision": converted_nodes, "nodes_kept_fp32": kept_fp32}


def _classify_nodes(model: onnx.ModelProto, low: int) -> tuple[int, list[str]]:
    """Count compute nodes whose outputs are ``low`` and list those that stayed float32."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    low_count, kept = 0, []
    for node in model.graph.node:
        if node.op_type in ("Cast", "Constant") or not node.output:
            continue
        elem = types.get(node.output[0])
        if elem == low:
            low_count += 1
        elif elem == onnx.TensorProto.FLOAT:
            kept.append(f"{node.name} ({node.op_type})")
    return low_count, kept
