"""Per-layer quantization sensitivity: which quantized nodes add the most error against FP32.

One pass over a few calibration samples with every relevant intermediate tensor exposed, in the
FP32 model and in the Q/DQ model (ONNX Runtime keeps the float tensor names of quantized nodes).
A node's sensitivity is the relative error of its output minus the largest relative error of the
float tensors feeding it: the error it *adds*, not the error it inherits from upstream.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from ..backends.onnxruntime_backend import create_session
from ..similarity import row_cosine

_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _float_source(name: str, producers: Dict[str, onnx.NodeProto]) -> str:
    """Walk back through DequantizeLinear/QuantizeLinear to the float tensor that was quantized."""
    while name in producers and producers[name].op_type in _QDQ:
        name = producers[name].input[0]
    return name


def quantized_nodes(qdq_model: onnx.ModelProto) -> Dict[str, dict]:
    """{node name: {op, output, inputs (float tensors)}} for compute nodes that consume Q/DQ."""
    producers = {out: node for node in qdq_model.graph.node for out in node.output}
    initializers = {i.name for i in qdq_model.graph.initializer}
    nodes = {}
    for node in qdq_model.graph.node:
        if node.op_type in _QDQ or not node.output:
            continue
        fed_by_dq = [i for i in node.input if i in producers and producers[i].op_type == "DequantizeLinear"]
        if not fed_by_dq:
            continue
        sources = [_float_source(i, producers) for i in node.input if i]
        nodes[node.name] = {
            "op": node.op_type,
            "has_weight": any(_float_source(i, producers).endswith("_quantized") for i in fed_by_dq),
            "output": node.output[0],
            "inputs": [s for s in sources if s not in initializers and not (s in producers and producers[s].op_type == "Constant")],
        }
    return nodes


def with_outputs(model_path: Path, names: Iterable[str], out_path: Path) -> List[str]:
    model = onnx.load(str(model_path))
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    existing = {o.name for o in model.graph.output}
    available = {out for node in model.graph.node for out in node.output} | {i.name for i in model.graph.input}
    for name in sorted(set(names)):
        if name in available and name not in existing:
            model.graph.output.append(infos.get(name) or onnx.helper.make_empty_tensor_value_info(name))  # ONNX Runtime types it
    onnx.save(model, str(out_path))
    return sorted((set(names) & available))


def layer_sensitivity(fp32_path: Path, qdq_path: Path, feeds_list: List[Dict[str, np.ndarray]], workdir: Optional[Path] = None) -> List[dict]:
    """Nodes of the Q/DQ model, most sensitive first, with their output and added relative errors."""
    nodes = quantized_nodes(onnx.load(str(qdq_path)))
    wanted = {n["output"] for n in nodes.values()} | {i for n in nodes.values() for i in n["inputs"]}
    with tempfile.TemporaryDirectory(prefix="sensitivity.", dir=workdir) as tmp:
        names = with_outputs(fp32_path, wanted, Path(tmp) / "fp32.onnx")
        with_outputs(qdq_path, names, Path(tmp) / "qdq.onnx")
        fp32 = create_session(Path(tmp) / "fp32.onnx", level="disabled")
        qdq = create_session(Path(tmp) / "qdq.onnx", level="disabled")
        squared_error = dict.fromkeys(names, 0.0)
        squared_norm = dict.fromkeys(names, 0.0)
        for feeds in feeds_list:
            reference = dict(zip(names, fp32.run(names, feeds)))
            candidate = dict(zip(names, qdq.run(names, feeds)))
            for name in names:
                want = reference[name].astype(np.float64)
                squared_error[name] += float(((candidate[name].astype(np.float64) - want) ** 2).sum())
                squared_norm[name] += float((want ** 2).sum())
    error = {name: (squared_error[name] / max(squared_norm[name], 1e-30)) ** 0.5 for name in names}
    ranked = []
    for node_name, node in nodes.items():
        if node["output"] not in error:
            continue
        inherited = max((error.get(i, 0.0) for i in node["inputs"]), default=0.0)
        ranked.append({"node": node_name, "op": node["op"], "output_error": error[node["output"]], "added_error": error[node["output"]] - inherited})
    return sorted(ranked, key=lambda r: (-r["added_error"], r["node"]))


def _without_quantization_of(qdq: onnx.ModelProto, fp32_weights: Dict[str, onnx.TensorProto], node_name: str) -> onnx.ModelProto:
    """A copy of ``qdq`` whose node ``node_name`` reads float inputs: its Q/DQ pairs bypassed and its
    quantized weights replaced by the FP32 originals (ONNX Runtime names them ``<weight>_quantized``)."""
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    producers = {out: node for node in model.graph.node for out in node.output}
    present = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.name != node_name:
            continue
        for index, name in enumerate(node.input):
            if name not in producers or producers[name].op_type != "DequantizeLinear":
                continue
            source = _float_source(name, producers)
            weight = source[: -len("_quantized")] if source.endswith("_quantized") else None
            if weight and weight in fp32_weights:
                # ONNX Runtime may name the DequantizeLinear output after the weight: use a fresh name.
                float_name = f"{weight}_float"
                if float_name not in present:
                    copy = onnx.TensorProto()
                    copy.CopyFrom(fp32_weights[weight])
                    copy.name = float_name
                    model.graph.initializer.append(copy)
                    present.add(float_name)
                node.input[index] = float_name
            elif not source.endswith("_quantized"):
                node.input[index] = source
    return model


def leave_one_out(fp32_path: Path, qdq_path: Path, feeds_list: List[Dict[str, np.ndarray]], output: str, op_types: Iterable[str] = (),
                  workdir: Optional[Path] = None) -> List[dict]:
    """For each quantized node: the final output's mean cosine to FP32 when only that node is left
    in float. Highest gain first: those are the layers worth keeping in float."""
    fp32 = create_session(fp32_path, level="basic")
    reference = [fp32.run([output], feeds)[0] for feeds in feeds_list]
    qdq = onnx.load(str(qdq_path))
    fp32_weights = {i.name: i for i in onnx.load(str(fp32_path)).graph.initializer}

    def mean_cosine(model: onnx.ModelProto) -> float:
        with tempfile.TemporaryDirectory(prefix="loo.", dir=workdir) as tmp:
            onnx.save(model, str(Path(tmp) / "m.onnx"))
            session = create_session(Path(tmp) / "m.onnx", level="basic")
            values = [row_cosine(session.run([output], feeds)[0], want) for feeds, want in zip(feeds_list, reference)]
            # A non-finite output agrees with nothing: rank it as the worst, never as NaN.
            return float(np.nan_to_num(np.concatenate(values), nan=-1.0).mean())

    baseline = mean_cosine(qdq)
    ranked = []
    op_types = set(op_types)
    for name, node in sorted(quantized_nodes(qdq).items()):
        if (op_types and node["op"] not in op_types) or (not op_types and not node["has_weight"]):
            continue  # e.g. an Add or MaxPool that only reads a quantized tensor
        cosine = mean_cosine(_without_quantization_of(qdq, fp32_weights, name))
        ranked.append({"node": name, "op": node["op"], "cosine_if_float": cosine, "gain": cosine - baseline})
    return sorted(ranked, key=lambda r: (-r["gain"], r["node"]))


def leave_one_out_requantized(fp32_path: Path, candidates: List[Tuple[str, str]], feeds_list: List[Dict[str, np.ndarray]], output: str,
                              quantize: Callable[[List[str], Path], None], excluded: Sequence[str] = (),
                              workdir: Optional[Path] = None) -> List[dict]:
    """``leave_one_out`` for graphs without Q/DQ pairs to bypass (dynamic quantization's integer ops):
    each candidate (node, op) is left in float by quantizing the model again without it."""
    fp32 = create_session(fp32_path, level="basic")
    reference = [fp32.run([output], feeds)[0] for feeds in feeds_list]
    with tempfile.TemporaryDirectory(prefix="loo.", dir=workdir) as tmp:
        path = Path(tmp) / "m.onnx"

        def mean_cosine(kept_float: List[str]) -> float:
            quantize(kept_float, path)
            session = create_session(path, level="all")
            values = [row_cosine(session.run([output], feeds)[0], want) for feeds, want in zip(feeds_list, reference)]
            return float(np.nan_to_num(np.concatenate(values), nan=-1.0).mean())

        baseline = mean_cosine(list(excluded))
        ranked = []
        for name, op in candidates:
            cosine = mean_cosine(list(excluded) + [name])
            ranked.append({"node": name, "op": op, "cosine_if_float": cosine, "gain": cosine - baseline})
    return sorted(ranked, key=lambda r: (-r["gain"], r["node"]))


def rank_by_cost(ranking: List[dict], layer_speed: List[dict], worthwhile: float = 0.1) -> List[dict]:
    """Candidates in the order the search keeps them in float, cheapest accuracy first.

    A layer's cost is the time its INT8 form saves (float ms - int8 ms, timed alone on this host).
    Among the layers that buy at least ``worthwhile`` of the best single gain, the most accuracy per
    millisecond comes first; the rest follow by gain. Without timings the order is by gain alone."""
    cost = {row["node"]: max(row["float_ms"] - row["int8_ms"], 0.0) for row in layer_speed}
    if not cost or not ranking:
        return ranking
    best = max(r["gain"] for r in ranking)
    rows = [{**r, "cost_ms": cost.get(r["node"])} for r in ranking]
    for row in rows:
        row["gain_per_ms"] = row["gain"] / max(row["cost_ms"], 1e-3) if row["cost_ms"] is not None else None
    chosen = [r for r in rows if best > 0 and r["gain"] >= worthwhile * best and r["gain_per_ms"] is not None]
    chosen.sort(key=lambda r: (-r["gain_per_ms"], r["node"]))
    return chosen + [r for r in rows if r not in chosen]
