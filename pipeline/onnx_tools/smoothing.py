"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before INT8.

Input channel j of a MatMul is divided by s_j and row j of its constant weight multiplied by s_j, so
the product is unchanged in exact arithmetic, with s_j = max|x_j|^alpha / max|w_j|^(1 - alpha) taken
from calibration data. A per-tensor activation range is then no longer set by the few outlier channels
that transformers carry (MiniLM's FFN inputs: channel maxima 4-17x their median), and the weights,
quantized per output channel, absorb the difference.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import PipelineError
from ..files import atomic_path
from .quantize import round_to_bits


def smoothable_inputs(model: onnx.ModelProto) -> Dict[str, List[onnx.NodeProto]]:
    """{activation tensor: the MatMuls that multiply it by a constant 2-D float weight of their own}."""
    weights = {init.name: init for init in model.graph.initializer}
    uses: Dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        for name in node.input:
            uses[name] += 1
    groups: Dict[str, List[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[0] in weights:
            continue
        weight = weights.get(node.input[1])
        # A weight shared with another node would be scaled for both: leave such MatMuls alone.
        if weight is not None and len(weight.dims) == 2 and weight.data_type == onnx.TensorProto.FLOAT and uses[weight.name] == 1:
            groups[node.input[0]].append(node)
    return dict(groups)


def channel_maxima(model_path: Path, tensors: List[str], batches: Iterable[dict], workdir: Path,
                   on_batch: Optional[Callable[[int], None]] = None) -> Dict[str, np.ndarray]:
    """max |x| per last-axis channel of each tensor in ``tensors`` over ``batches`` (ONNX Runtime, CPU)."""
    import onnxruntime as ort

    probe = onnx.load(str(model_path))
    probe.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in tensors)
    probe_path = workdir / "smoothing_probe.onnx"
    onnx.save(probe, str(probe_path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(probe_path), options, providers=["CPUExecutionProvider"])
    maxima: Dict[str, np.ndarray] = {}
    for feeds in batches:
        for name, value in zip(tensors, session.run(tensors, feeds)):
            batch_max = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            maxima[name] = np.maximum(maxima[name], batch_max) if name in maxima else batch_max
        if on_batch:
            on_batch(len(next(iter(feeds.values()))))
    if not maxima:
        raise PipelineError("SmoothQuant needs calibration samples; none were given")
    return maxima


def smooth_matmuls(src: Path, dst: Path, alpha: float, batches: Iterable[dict], workdir: Path,
                   on_batch: Optional[Callable[[int], None]] = None, min_channel_ratio: float = 0.0) -> dict:
    """Write ``src`` with SmoothQuant applied to the MatMuls with a constant weight whose activation's
    largest channel maximum is at least ``min_channel_ratio`` times the median: one Mul per activation
    tensor (shared by the MatMuls that read it) and the weights scaled to match.
    Returns {"alpha", "smoothed_matmuls", "max_channel_ratio"} for the build's report."""
    if not 0.0 < alpha < 1.0:
        raise PipelineError(f"smoothquant alpha = {alpha}: must lie strictly between 0 and 1 (0.5-0.8 is usual)")
    model = onnx.load(str(src))
    groups = smoothable_inputs(model)
    if not groups:
        raise PipelineError(f"smoothquant.alpha is set but {src} has no MatMul with a constant 2-D weight to smooth; set it to null")
    maxima = channel_maxima(src, sorted(groups), batches, workdir, on_batch)
    weights = {init.name: init for init in model.graph.initializer}
    position = {node.output[0]: index for index, node in enumerate(model.graph.node)}
    inserts, ratios, smoothed = [], [], 0
    for tensor, matmuls in sorted(groups.items()):
        arrays = [numpy_helper.to_array(weights[node.input[1]]) for node in matmuls]
        # Rounded up like calibration ranges: the same scales (and weight bytes) on CPUs whose float
        # kernels differ in the last bits.
        activation = round_to_bits(np.maximum(maxima[tensor], 1e-5), up=True)
        weight_rows = np.maximum(np.max([np.abs(w).max(axis=1) for w in arrays], axis=0), 1e-5).astype(np.float64)
        if activation.shape != weight_rows.shape:
            continue  # a MatMul broadcasting over another axis: not a per-channel product
        ratio = float(activation.max() / np.median(activation))
        ratios.append(ratio)
        if ratio < min_channel_ratio:
            continue  # no outlier channels to speak of: the Mul would cost time for little accuracy
        scale = activation**alpha / weight_rows ** (1.0 - alpha)
        smoothed += len(matmuls)
        for node, weight in zip(matmuls, arrays):
            scaled = (weight.astype(np.float64) * scale[:, None]).astype(np.float32)
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(scaled, node.input[1]))
        name = f"{matmuls[0].name}/smooth"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{name}/inverse_scale"))
        mul = helper.make_node("Mul", [tensor, f"{name}/inverse_scale"], [f"{name}/output"], name=name)
        for node in matmuls:
            node.input[0] = mul.output[0]
        inserts.append((min(position[node.output[0]] for node in matmuls), mul))
    for index, mul in sorted(inserts, key=lambda item: item[0], reverse=True):  # keep the graph topologically sorted
        model.graph.node.insert(index, mul)
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return {"alpha": alpha, "smoothed_matmuls": smoothed,
            "max_channel_ratio": round(max(ratios), 2) if ratios else None}
