"""Transformer kernel fusions with ONNX Runtime's transformer optimizer, for ONNX Runtime targets.

CPU (dynamic INT8): Attention, EmbedLayerNormalization and BiasGelu become single com.microsoft kernels,
so dynamic INT8 quantization turns each attention block's Q/K/V projections into one QAttention.
SkipLayerNormalization is left out: on INT8 BERT its fused kernel ran slower than Add +
LayerNormalization (ONNX Runtime 1.32, docs/benchmarks.md), and leaving it to the session optimizer lets
a target turn it off.

CUDA (FP16): every fusion the GPU kernels have (attention, SkipLayerNormalization, bias GELU), then the
graph converted to float16 with float32 inputs and outputs, as ONNX Runtime's own BERT recipe does:
generic AutoCast leaves the unfused ops, and most of the FP16 speed, on the table.
"""
from __future__ import annotations

import logging
from pathlib import Path

import onnx

from ..errors import PipelineError
from ..files import atomic_path
from ..scoped import logger_levels


def transformer_model_types() -> list:
    """The model_type names ONNX Runtime's transformer optimizer knows."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    return sorted(MODEL_TYPES)


def fuse_transformer(src: Path, dst: Path, model_type: str, num_heads: int = 0, hidden_size: int = 0,
                     gelu_approximation: bool = False) -> dict:
    """Write ``src`` with ``model_type``'s CPU fusions applied; returns {fused op: count} (non-zero only).
    ``gelu_approximation``: GELU fused as FastGelu (tanh approximation) rather than BiasGelu (erf).

    ``num_heads``/``hidden_size`` 0: read from the graph. A config that asks for attention fusion and
    gets none is an error naming what was fused, rather than a silently slower build."""
    fused, counts = _optimized(src, model_type, num_heads, hidden_size, gelu_approximation, use_gpu=False)
    _save(fused.model, dst)
    return counts


def fuse_transformer_fp16_gpu(src: Path, dst: Path, model_type: str, num_heads: int = 0, hidden_size: int = 0,
                              gelu_approximation: bool = False) -> dict:
    """Write ``src`` fused for ONNX Runtime's CUDA kernels and converted to float16, inputs and outputs kept
    float32; returns {fused op: count}. The fusions are graph rewrites: no GPU is needed to make the file."""
    fused, counts = _optimized(src, model_type, num_heads, hidden_size, gelu_approximation, use_gpu=True)
    fused.convert_float_to_float16(keep_io_types=True)
    _save(fused.model, dst)
    return counts


def _optimized(src: Path, model_type: str, num_heads: int, hidden_size: int, gelu_approximation: bool, use_gpu: bool):
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    if model_type not in transformer_model_types():
        raise PipelineError(f"transformer_fusions '{model_type}' is not an ONNX Runtime transformer model type; "
                            f"allowed: {transformer_model_types()}")
    options = FusionOptions(model_type)
    options.enable_skip_layer_norm = use_gpu  # the CPU's fused kernel is the slower one (module docstring)
    options.enable_gelu_approximation = gelu_approximation
    # The optimizer logs a warning when the producer is not the exporter it expects: quiet, for this call only.
    with logger_levels(logging.ERROR, "", "onnxruntime.transformers"):
        try:
            fused = optimizer.optimize_model(str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                                             optimization_options=options, opt_level=0, use_gpu=use_gpu)
        except Exception as exc:  # the optimizer raises assorted errors on graphs it cannot read
            raise PipelineError(f"ONNX Runtime's transformer optimizer ({model_type}) failed on {src}: {exc}") from exc
    counts = {op: int(n) for op, n in fused.get_fused_operator_statistics().items() if n}
    if not counts.get("Attention") and not counts.get("MultiHeadAttention"):
        raise PipelineError(f"transformer_fusions ({model_type}, num_heads={num_heads}, hidden_size={hidden_size}) fused no attention "
                            f"in {src} (fused: {counts or 'nothing'}); set the model's num_heads and hidden_size, or transformer_fusions.model_type: null")
    return fused, counts


def _save(model: onnx.ModelProto, dst: Path) -> None:
    if not any(entry.domain == "com.microsoft" for entry in model.opset_import):  # the fused kernels' domain
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    model.producer_name, model.producer_version = "trt-pipeline", ""
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
