"""Calibrated Q/DQ quantization with ONNX Runtime's calibrators, in each target's flavour.

Statistics are streamed: the calibration samples go through the model one chunk at a time and the
calibrator merges each chunk's min/max or histograms, so peak memory is bounded by the chunk, not
by the number of samples (unchunked histogram calibration of resnet18 reached 8.4 GB).
"""
from __future__ import annotations

import logging
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import onnx

from ..config.schema import CalibrationConfig, CalibrationMethod, QuantFormat
from ..errors import PipelineError
from ..files import atomic_path
from ..scoped import logger_levels


@dataclass(frozen=True)
class QdqFlavour:
    """How Q/DQ nodes must look for one family of runtimes."""

    activation_type: str  # ORT QuantType name
    weight_type: str
    activation_symmetric: bool
    quantize_bias: bool  # False: bias stays float (TensorRT's parser rejects int32 bias)


FLAVOURS = {
    QuantFormat.ort_u8s8: QdqFlavour("QUInt8", "QInt8", activation_symmetric=False, quantize_bias=True),
    QuantFormat.trt_s8s8: QdqFlavour("QInt8", "QInt8", activation_symmetric=True, quantize_bias=False),
}

# TensorRT's native calibration-cache header names per method.
_TRT_CACHE_ALGORITHM = {
    CalibrationMethod.entropy: "EntropyCalibration2",
    CalibrationMethod.minmax: "MinMaxCalibration",
    CalibrationMethod.percentile: "LegacyCalibration",
}


class _ChunkReader:
    """ORT CalibrationDataReader over one in-memory chunk."""

    def __init__(self, feeds: Dict[str, np.ndarray]):
        self._feeds: Optional[Dict[str, np.ndarray]] = feeds

    def get_next(self):
        feeds, self._feeds = self._feeds, None
        return feeds


def quantizable_op_types() -> List[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def folded_activation_inputs(model: onnx.ModelProto, op_types: Sequence[str]) -> Dict[str, str]:
    """{pre-activation tensor: activation output} for every Relu/Clip whose input ORT folds away.

    With asymmetric activations ORT's Q/DQ quantizer removes a quantized Relu/Clip that is its
    producer's only consumer and quantizes the producer's output with the activation's range, so
    the pre-activation range is never read. Not calibrating those tensors keeps Conv+Relu fusable
    in the calibration graph (figures: docs/benchmarks.md, "Calibration time").
    """
    consumers: Dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    boundary = {v.name for v in model.graph.output} | {v.name for v in model.graph.input}
    return {
        name: nodes[0].output[0]
        for name, nodes in consumers.items()
        if len(nodes) == 1 and nodes[0].op_type in ("Relu", "Clip") and nodes[0].op_type in op_types and name not in boundary
    }


def _calibrator(method: CalibrationMethod, cfg: CalibrationConfig, symmetric: bool, skip: frozenset, **common):
    """ORT's calibrator for ``method``, calibrating every candidate tensor except ``skip``."""
    from onnxruntime.quantization import calibrate

    base, options = {
        CalibrationMethod.minmax: (calibrate.MinMaxCalibrater, {}),
        CalibrationMethod.entropy: (calibrate.EntropyCalibrater, {"num_bins": cfg.num_bins, "num_quantized_bins": 128}),
        CalibrationMethod.percentile: (calibrate.PercentileCalibrater, {"num_bins": cfg.num_bins, "percentile": cfg.percentile}),
    }[method]

    class Calibrator(base):
        def select_tensors_to_calibrate(self, model):
            tensors, value_infos = super().select_tensors_to_calibrate(model)
            return tensors - skip, value_infos

    calibrator = Calibrator(symmetric=symmetric, **options, **common)
    calibrator.augment_graph()
    return calibrator


RANGE_BITS = 8


def round_to_bits(values, up: bool, bits: int = RANGE_BITS) -> np.ndarray:
    """``values`` rounded up (or down) to ``bits`` significant bits; zeros and non-finite values unchanged."""
    values = np.asarray(values, dtype=np.float64)
    step = np.ldexp(1.0, np.frexp(values)[1] - bits)
    return (np.ceil(values / step) if up else np.floor(values / step)) * step


def portable_range(low: float, high: float, bits: int = RANGE_BITS) -> tuple:
    """(low, high) rounded outward to ``bits`` significant bits (at most 2**(1-bits) wider, 0.8% for 8).

    Float kernels differ per instruction set (AVX2, AVX-512, AMX), so the same model and samples give
    ranges that differ in their last bits from one CPU kind to the next; rounded, they give the same
    scales, and the same quantized model bytes, unless a range sits within that noise of a step."""
    return float(round_to_bits(low, up=False, bits=bits)), float(round_to_bits(high, up=True, bits=bits))


def collect_ranges(
    model_path: Path,
    chunks: Iterable[Dict[str, np.ndarray]],
    cfg: CalibrationConfig,
    symmetric: bool,
    op_types: Sequence[str] = (),
    on_chunk: Callable[[int], None] = lambda _: None,  # called with each chunk's sample count
    skip_folded: bool = True,
    workdir: Optional[Path] = None,  # where the augmented calibration graph goes (default: system temp)
) -> Dict[str, tuple]:
    """Run every chunk through ``model_path`` and return {tensor name: (low, high)}.

    ``symmetric`` is the activation flavour. Asymmetric (ORT) flavours skip, when ``skip_folded``,
    the pre-activation tensors the quantizer folds away and report them with their activation's range.
    """
    import onnxruntime

    op_types = list(op_types) or quantizable_op_types()
    folded = {}
    if skip_folded and not symmetric:
        folded = folded_activation_inputs(onnx.load(str(model_path), load_external_data=False), op_types)
    with tempfile.TemporaryDirectory(prefix="calib.", dir=workdir) as workdir:
        calibrator = _calibrator(
            cfg.method, cfg, symmetric, frozenset(folded), model_path=Path(model_path),
            op_types_to_calibrate=op_types, augmented_model_path=str(Path(workdir) / "augmented.onnx"),
        )
        # ORT runs the augmented graph unoptimized; the calibrated tensors are graph outputs there,
        # so an optimized session keeps every one of them (same ranges) and runs ~25% faster.
        calibrator.infer_session = onnxruntime.InferenceSession(calibrator.augmented_model_path, providers=["CPUExecutionProvider"])
        for feeds in chunks:
            calibrator.collect_data(_ChunkReader(feeds))
            on_chunk(len(next(iter(feeds.values()))))
        tensors = calibrator.compute_data()
    ranges = {name: portable_range(*(float(v) for v in np.asarray(data.range_value).reshape(-1)[:2])) for name, data in tensors.data.items()}
    broken = sorted(name for name, (low, high) in ranges.items() if not (np.isfinite(low) and np.isfinite(high)))
    if broken:
        raise PipelineError(
            f"calibration of {model_path} saw NaN/Inf in {len(broken)} tensors (first: {broken[:3]}): the FP32 model "
            "itself produces non-finite values on the calibration data (check its weights); nothing can be quantized from that"
        )
    for name, activation_output in folded.items():
        if activation_output in ranges:
            ranges[name] = ranges[activation_output]  # a stand-in: the quantizer never reads it
    return ranges


FP8_E4M3_MAX = 448.0


def _fp8_tensors(ranges: Dict[str, tuple]):
    """Ranges as ORT float8 statistics that give TensorRT's FP8 scale, amax / 448.

    ORT derives a float8 activation scale as std / std(all E4M3 values); feeding
    std = amax * std_e4m3 / 448 makes that scale amax / 448 (saturation only above amax).
    """
    from ml_dtypes import float8_e4m3fn
    from onnxruntime.quantization.calibrate import TensorData

    values = np.arange(256, dtype=np.uint8).view(float8_e4m3fn).astype(np.float32)
    std_e4m3 = float(np.std(values[np.isfinite(values)]))
    tensors = {}
    for name, (low, high) in ranges.items():
        amax = max(abs(low), abs(high), 1e-12)
        tensors[name] = TensorData(avg=np.float32(0.0), std=np.float32(amax * std_e4m3 / FP8_E4M3_MAX),
                                   lowest=np.float32(-amax), highest=np.float32(amax))
    return tensors


def quantize_qdq(
    src: Path,
    dst: Path,
    ranges: Dict[str, tuple],
    quant_format: QuantFormat,
    per_channel: bool,
    method: CalibrationMethod,
    nodes_to_exclude: Sequence[str] = (),
    op_types: Sequence[str] = (),
    reduce_range: bool = False,
    quantize_outputs: bool = True,
    element: str = "int8",
    workdir: Optional[Path] = None,
) -> None:
    """Write ``src`` with Q/DQ nodes placed from ``ranges`` in the flavour ``quant_format`` needs.

    ``element`` int8, or float8e4m3fn (FP8 E4M3: symmetric, zero point 0, per-tensor scales)."""
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat as OrtFormat
    from onnxruntime.quantization import QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    flavour = FLAVOURS[quant_format]
    op_types = list(op_types) or quantizable_op_types()
    ort_method = {CalibrationMethod.minmax: OrtMethod.MinMax, CalibrationMethod.entropy: OrtMethod.Entropy,
                  CalibrationMethod.percentile: OrtMethod.Percentile}[method]
    activation_type, weight_type = getattr(QuantType, flavour.activation_type), getattr(QuantType, flavour.weight_type)
    if element == "float8e4m3fn":
        ort_method, per_channel, reduce_range = OrtMethod.Distribution, False, False
        activation_type = weight_type = QuantType.QFLOAT8E4M3FN
        tensors = TensorsData(ort_method, _fp8_tensors(ranges))
    elif element == "int8":
        tensors = TensorsData(ort_method, {name: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for name, (lo, hi) in ranges.items()})
    else:
        raise PipelineError(f"Q/DQ element type '{element}' is not supported; supported: int8, float8e4m3fn")
    # ORT logs "consider pre-processing" on the root logger: simplify already did; quiet for this call only.
    with tempfile.TemporaryDirectory(prefix="qdq.", dir=workdir) as workdir, atomic_path(dst) as tmp, logger_levels(logging.ERROR, ""):
        cache = Path(workdir) / "ranges.json"
        save_tensors_data(tensors, cache)
        try:
            quantize_static(
                str(src), str(tmp), calibration_data_reader=None, calibration_cache_path=str(cache),
                quant_format=OrtFormat.QDQ, calibrate_method=ort_method, per_channel=per_channel, reduce_range=reduce_range,
                activation_type=activation_type, weight_type=weight_type,
                nodes_to_exclude=list(nodes_to_exclude), op_types_to_quantize=op_types,
                extra_options={
                    "ActivationSymmetric": flavour.activation_symmetric,
                    "WeightSymmetric": True,
                    "QuantizeBias": flavour.quantize_bias,
                    "OpTypesToExcludeOutputQuantization": [] if quantize_outputs else op_types,
                    # Float consumers (e.g. a residual Add) then read the float tensor, not a shared DQ.
                    "DedicatedQDQPair": not quantize_outputs,
                },
            )
        except (ValueError, RuntimeError) as exc:
            raise PipelineError(f"quantization of {src} failed: {exc}") from exc
        # Deterministic bytes: ORT stamps nothing time-based, but normalise the producer fields.
        model = onnx.load(str(tmp))
        model.producer_name, model.producer_version = "trt-pipeline", ""
        onnx.save(model, str(tmp))


def dynamic_op_types(op_types: Sequence[str]) -> List[str]:
    """The ops dynamic quantization covers for a model that quantizes ``op_types``: a fused Attention
    holds the Q/K/V MatMuls, so it is quantized when MatMul is (as one QAttention)."""
    op_types = list(op_types) or ["MatMul", "Gemm", "Conv"]
    return sorted(set(op_types) | ({"Attention"} if "MatMul" in op_types else set()))


def quantize_dynamic_int8(
    src: Path,
    dst: Path,
    op_types: Sequence[str] = (),
    per_channel: bool = True,
    reduce_range: bool = False,
    nodes_to_exclude: Sequence[str] = (),
) -> None:
    """Write ``src`` with INT8 weights and activations quantized per batch at run time (ONNX Runtime's
    integer ops: DynamicQuantizeMatMul, QAttention). Only MatMuls with constant weights are quantized:
    attention scores (activation x activation) stay float."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(dst) as tmp, logger_levels(logging.ERROR, ""):
        try:
            quantize_dynamic(str(src), str(tmp), per_channel=per_channel, reduce_range=reduce_range, weight_type=QuantType.QInt8,
                             op_types_to_quantize=dynamic_op_types(op_types), nodes_to_exclude=list(nodes_to_exclude),
                             extra_options={"MatMulConstBOnly": True})
        except (ValueError, RuntimeError) as exc:
            raise PipelineError(f"dynamic quantization of {src} failed: {exc}") from exc
        model = onnx.load(str(tmp))
        model.producer_name, model.producer_version = "trt-pipeline", ""
        onnx.save(model, str(tmp))


def trt_version_number(version: str) -> int:
    """TensorRT's integer version, as in its calibration-cache header: "10.3.0" -> 100300."""
    major, minor, patch = (list(map(int, version.split(".")[:3])) + [0, 0])[:3]
    return major * 10000 + minor * 100 + patch


def trt_calibration_cache(ranges: Dict[str, tuple], method: CalibrationMethod, trt_version: str) -> str:
    """TensorRT's native calibration cache: header line, then ``tensor: <scale as big-endian float32 hex>``.

    Scale is amax / 127 for symmetric INT8. The header carries the integer version of the TensorRT
    release that will read it (TensorRT compares it on load, so it must be the target's own).
    """
    lines = [f"TRT-{trt_version_number(trt_version)}-{_TRT_CACHE_ALGORITHM[method]}"]
    for name in sorted(ranges):
        low, high = ranges[name]
        scale = max(abs(low), abs(high), 1e-12) / 127.0
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"


_INTEGER_OPS = ("MatMulInteger", "ConvInteger", "QAttention", "DynamicQuantizeMatMul", "QLinearMatMul", "QLinearConv")


def qdq_summary(model: onnx.ModelProto) -> dict:
    """Counts of Q/DQ nodes, integer ops and quantized element types, to prove the graph is quantized."""
    quantized = sum(1 for n in model.graph.node if n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear"))
    dequantized = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear")
    integer_ops = sum(1 for n in model.graph.node if n.op_type in _INTEGER_OPS)
    zero_point_types = sorted({onnx.TensorProto.DataType.Name(i.data_type) for i in model.graph.initializer if i.name.endswith("_zero_point")})
    return {"quantize_linear": quantized, "dequantize_linear": dequantized, "integer_ops": integer_ops, "zero_point_types": zero_point_types}
