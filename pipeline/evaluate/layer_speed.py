"""Per-layer INT8 speed on this host, in two steps.

Screen: each layer with weights (Conv, MatMul, Gemm, a fused Attention) alone, float against INT8,
side by side. Its float form is that node alone, fed the activations it sees in the FP32 model on
real samples; its INT8 form is the same one-node model through the build's own quantizer, so what is
timed is what the build would run (QLinearConv, DynamicQuantizeMatMul, QAttention, ...).

Confirm: alone, a layer pays for quantizing its input and for layout changes that a chain of INT8
layers shares (measured: resnet18's stem is 0.82x alone, yet 1.5x faster in the model), so a layer
the screen flags stays float only if the whole model, timed side by side, is not slower with it float.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import onnx

from ..backends.onnxruntime_backend import load_onnx_runner
from ..console import console, progress_bar
from ..onnx_tools.inspect import load_model
from .benchmark import side_by_side
from .host import host_cpu
from .sensitivity import with_outputs


def weighted_layers(model: onnx.ModelProto, op_types: Sequence[str]) -> List[onnx.NodeProto]:
    """Nodes of ``op_types`` that read at least one initializer (a weight), in graph order."""
    initializers = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type in op_types and any(i in initializers for i in n.input)]


def single_node_model(model: onnx.ModelProto, node: onnx.NodeProto, activations: Dict[str, np.ndarray]) -> onnx.ModelProto:
    """``node`` alone: its weights as initializers, its other inputs as graph inputs typed from the
    captured ``activations``, its outputs as graph outputs."""
    initializers = {i.name: i for i in model.graph.initializer}
    inputs = [onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(activations[name].dtype), activations[name].shape)
              for name in dict.fromkeys(node.input) if name and name not in initializers]
    outputs = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in node.output if name]
    weights = [initializers[name] for name in dict.fromkeys(node.input) if name in initializers]
    graph = onnx.helper.make_graph([node], f"layer_{node.name}", inputs, outputs, initializer=weights)
    return onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def layer_speedups(
    fp32_path: Path,
    op_types: Sequence[str],
    feeds: Dict[str, np.ndarray],
    quantize: Callable[[Path, Path], None],
    workdir: Optional[Path] = None,
    rounds: int = 3,
    block_seconds: float = 0.05,
    on_layer: Callable[[], None] = lambda: None,
) -> List[dict]:
    """For each weighted layer of ``op_types``: float and INT8 median ms on ``feeds`` and their ratio."""
    model = onnx.load(str(fp32_path))
    layers = weighted_layers(model, op_types)
    initializers = {i.name for i in model.graph.initializer}
    wanted = {name for node in layers for name in node.input if name and name not in initializers}
    rows = []
    with tempfile.TemporaryDirectory(prefix="layer_speed.", dir=workdir) as tmp:
        tmp = Path(tmp)
        names = with_outputs(fp32_path, wanted, tmp / "exposed.onnx")
        runner = load_onnx_runner(tmp / "exposed.onnx", level="disabled")
        activations = dict(zip(names, runner.session.run(names, feeds)))
        for node in layers:
            float_path, int8_path = tmp / "float.onnx", tmp / "int8.onnx"
            onnx.save(single_node_model(model, node, activations), str(float_path))
            quantize(float_path, int8_path)
            layer_feeds = {name: activations[name] for name in dict.fromkeys(node.input) if name in activations}
            timed = side_by_side({"float": load_onnx_runner(float_path), "int8": load_onnx_runner(int8_path)}, layer_feeds,
                                 rounds=rounds, block=2, block_seconds=block_seconds)
            rows.append({"node": node.name, "op": node.op_type, "float_ms": round(timed["float"], 4), "int8_ms": round(timed["int8"], 4),
                         "speedup": round(timed["float"] / timed["int8"], 3)})
            on_layer()
    return rows


def confirm_in_model(
    fp32_path: Path,
    suspects: Sequence[str],
    feeds: Dict[str, np.ndarray],
    quantize: Callable[[List[str], Path, Path], None],
    workdir: Optional[Path] = None,
    disabled_optimizers: Sequence[str] = (),
    rounds: int = 5,
) -> List[dict]:
    """For each suspect: the whole model all-INT8 vs with that layer float, side by side (median ms)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="layer_confirm.", dir=workdir) as tmp:
        all_int8 = Path(tmp) / "all_int8.onnx"
        quantize([], fp32_path, all_int8)
        for node in suspects:
            one_float = Path(tmp) / "one_float.onnx"
            quantize([node], fp32_path, one_float)
            runners = {"all_int8": load_onnx_runner(all_int8, disabled_optimizers=disabled_optimizers),
                       "layer_float": load_onnx_runner(one_float, disabled_optimizers=disabled_optimizers)}
            timed = side_by_side(runners, feeds, rounds=rounds)
            rows.append({"node": node, "model_all_int8_ms": round(timed["all_int8"], 4), "model_layer_float_ms": round(timed["layer_float"], 4),
                         "stays_float": timed["layer_float"] <= timed["all_int8"]})
    return rows


def speed_guard(label: str, source: Path, op_types: Sequence[str], feeds: Dict[str, np.ndarray], quantize_to: Callable,
                min_speedup: float, isa: Optional[str], disabled_optimizers: Sequence[str] = (), workdir: Optional[Path] = None) -> tuple:
    """(timings for the metrics, the layers that stay float): layers not ``min_speedup`` faster in INT8 alone,
    and not slower for the model in float, stay float. ``quantize_to(kept_float, src, dst)`` is the build's
    quantizer.

    Timings on a host without the target's ``isa`` would decide for the wrong CPU: the guard then keeps
    every layer quantized and says so (the benchmark's INT8-vs-FP32 gate still applies)."""
    host = host_cpu()
    if not host.supports(isa):
        console.print(f"[yellow]  speed guard {label}: this host ({host.describe()}) lacks the target's ISA '{isa}'; "
                      "no layer timed, every layer stays quantized[/yellow]")
        return {"host": host.describe(), "skipped": f"host lacks {isa}"}, []
    layers = len(weighted_layers(load_model(source), op_types))
    with progress_bar() as progress:
        task = progress.add_task(f"time layers {label} (float vs int8)", total=layers)
        rows = layer_speedups(source, op_types, feeds, lambda src, dst: quantize_to([], src, dst), workdir=workdir,
                              on_layer=lambda: progress.advance(task))
    suspects = [row["node"] for row in rows if row["speedup"] < min_speedup]
    confirmed = confirm_in_model(source, suspects, feeds, quantize_to, workdir=workdir, disabled_optimizers=disabled_optimizers) if suspects else []
    for row in confirmed:
        verdict = "stays float" if row["stays_float"] else "stays int8 (faster in the model)"
        console.print(f"  speed guard {label}: {row['node']} below {min_speedup}x alone; model {row['model_layer_float_ms']:.1f} ms "
                      f"with it float vs {row['model_all_int8_ms']:.1f} ms all int8: {verdict}")
    slow = [row["node"] for row in confirmed if row["stays_float"]]
    return {"host": host.describe(), "min_layer_speedup": min_speedup, "layers": rows, "in_model": confirmed}, slow
