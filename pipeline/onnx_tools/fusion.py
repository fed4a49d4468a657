"""Transformer kernel fusions with ONNX Runtime's transformer optimizer, for ONNX Runtime CPU targets.

Attention, EmbedLayerNormalization and BiasGelu become single com.microsoft kernels, so dynamic INT8
quantization turns each attention block's Q/K/V projections into one QAttention. SkipLayerNormalization
is left out: on INT8 BERT its fused kernel ran slower than Add + LayerNormalization (ONNX Runtime
1.32, docs/benchmarks.md), and leaving it to the session optimizer lets a target turn it off.
"""
from __future__ import annotations

import logging
from pathlib import Path

import onnx

from ..errors import PipelineError
from ..io import atomic_path
from ..scoped import logger_levels


def transformer_model_types() -> list:
    """The model_type names ONNX Runtime's transformer optimizer knows."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    return sorted(MODEL_TYPES)


def fuse_transformer(src: Path, dst: Path, model_type: str, num_heads: int = 0, hidden_size: int = 0,
                     gelu_approximation: bool = False) -> dict:
    """Write ``src`` with ``model_type``'s fusions applied; returns {fused op: count} (non-zero only).
    ``gelu_approximation``: GELU fused as FastGelu (tanh approximation) rather than BiasGelu (erf).

    ``num_heads``/``hidden_size`` 0: read from the graph. A config that asks for attention fusion and
    gets none is an error naming what was fused, rather than a silently slower build."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    if model_type not in transformer_model_types():
        raise PipelineError(f"transformer_fusions '{model_type}' is not an ONNX Runtime transformer model type; "
                            f"allowed: {transformer_model_types()}")
    options = FusionOptions(model_type)
    options.enable_skip_layer_norm = False
    options.enable_gelu_approximation = gelu_approximation
    # The optimizer logs a warning when the producer is not the exporter it expects: quiet, for this call only.
    with logger_levels(logging.ERROR, "", "onnxruntime.transformers"):
        try:
            fused = optimizer.optimize_model(str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                                             optimization_options=options, opt_level=0)
        except Exception as exc:  # the optimizer raises assorted errors on graphs it cannot read
            raise PipelineError(f"ONNX Runtime's transformer optimizer ({model_type}) failed on {src}: {exc}") from exc
    counts = {op: int(n) for op, n in fused.get_fused_operator_statistics().items() if n}
    if not counts.get("Attention"):
        raise PipelineError(f"transformer_fusions ({model_type}, num_heads={num_heads}, hidden_size={hidden_size}) fused no attention "
                            f"in {src} (fused: {counts or 'nothing'}); set the model's num_heads and hidden_size, or transformer_fusions.model_type: null")
    model = fused.model
    if not any(entry.domain == "com.microsoft" for entry in model.opset_import):  # the fused kernels' domain
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    model.producer_name, model.producer_version = "trt-pipeline", ""
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return counts
