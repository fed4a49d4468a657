"""Accuracy-aware precision: keep in float the layers that buy the most accuracy (per millisecond they
cost, when layers were timed) until the model's gates pass.

Candidates are judged with ONNX Runtime on the CPU (for TensorRT targets the same Q/DQ graph simulates the
engine's quantization) against the model's validate gates on the search split, which neither calibration
nor validate uses: validate's metrics stay an independent check.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np

from ..backends.onnxruntime_backend import load_onnx_runner
from ..config.schema import ModelConfig, SearchConfig, as_plain
from ..console import console
from ..errors import PipelineError
from ..onnx_tools.inspect import load_model
from ..onnx_tools.quantize import dynamic_op_types
from .layer_speed import weighted_layers
from .sensitivity import layer_sensitivity, leave_one_out, leave_one_out_requantized, rank_by_cost
from .validate import CachedRunner, check_gates, evaluate, with_headroom


@dataclass
class SearchInputs:
    """What the search compares: the FP32 reference, the float model the quantizer reads, and the quantized one."""

    reference: Path
    source: Path
    quantized: Path  # rewritten in place with each step's exclusions
    quantize: Callable[[List[str], Path], None]  # (layers kept float, destination)
    dynamic: bool  # dynamic activation ranges: no Q/DQ pairs to bypass, candidates are quantized again without each layer
    level: str  # ONNX Runtime's optimization level for judging (basic for graphs that simulate TensorRT)


def search_float_layers(label: str, inputs: SearchInputs, model: ModelConfig, search: SearchConfig, dataset, search_samples: Sequence[int],
                        sensitivity_feeds: List[Dict[str, np.ndarray]], excluded: List[str], layer_speed: List[dict], workdir: Path) -> tuple:
    """(the layers kept float, the search report, the gates still missed): plain INT8 judged first, then layers
    added to ``excluded`` by rank until the gates (with ``search.headroom``) pass or ``search.max_excluded``
    layers were added. The caller writes the report, then raises ``search_failure`` if gates are still missed."""
    excluded = list(excluded)
    reference = CachedRunner(load_onnx_runner(inputs.reference))
    target_gates = with_headroom(model.gates, search.headroom)

    def judge() -> tuple:
        metrics = evaluate(load_onnx_runner(inputs.quantized, level=inputs.level), reference, dataset, search_samples, model,
                           batch_size=model.batch_size(64))
        summary = {k: metrics[k] for k in ("accuracy_drop", "top1_agreement", "cosine_mean", "retrieval_agreement", "topk_agreement") if k in metrics}
        return summary, check_gates(metrics, target_gates)

    metrics, failures = judge()
    steps = [{"excluded": list(excluded), "metrics": metrics, "gate_failures": failures}]
    console.print(f"  search {label}: plain int8 {metrics} {'passes' if not failures else 'misses: ' + '; '.join(failures)}")
    ranking: list = []
    layer_errors: list = []
    if failures:
        output = model.outputs[0]
        if inputs.dynamic:
            candidates = [(n.name, n.op_type) for n in weighted_layers(load_model(inputs.source), dynamic_op_types(model.quantize_op_types))
                          if n.name not in excluded]
            ranking = leave_one_out_requantized(inputs.source, candidates, sensitivity_feeds, output, inputs.quantize, excluded, workdir=workdir)
        else:
            layer_errors = layer_sensitivity(inputs.source, inputs.quantized, sensitivity_feeds, workdir=workdir)  # for the report
            ranking = leave_one_out(inputs.source, inputs.quantized, sensitivity_feeds, output, model.quantize_op_types, workdir=workdir)
        ranking = rank_by_cost(ranking, layer_speed)
        for layer in [r for r in ranking if r["node"] not in excluded][: search.max_excluded]:
            excluded.append(layer["node"])
            inputs.quantize(excluded, inputs.quantized)
            metrics, failures = judge()
            steps.append({"excluded": list(excluded), "added": layer, "metrics": metrics, "gate_failures": failures})
            console.print(f"  search {label}: + keep {layer['node']} ({layer['op']}) in float -> {metrics}")
            if not failures:
                break
    report = {"gates": as_plain(model.gates), "searched_for": as_plain(target_gates), "num_samples": len(search_samples),
              "budget": search.max_excluded, "steps": steps, "ranking": ranking[:50], "layer_errors": layer_errors[:50]}
    return excluded, report, failures


def search_failure(label: str, search: SearchConfig, num_samples: int, report: dict, failures: List[str]) -> PipelineError:
    """The error of a search that spent its budget: every step's float layers and metrics."""
    return PipelineError(
        f"accuracy search for {label} spent its budget of {search.max_excluded} float layers and still misses "
        f"(gates with headroom {search.headroom}, on {num_samples} search samples): "
        + "; ".join(failures) + "; steps: " + " | ".join(f"{len(s['excluded'])} in float: {s['metrics']}" for s in report["steps"])
        + ". Raise calibration.search.max_excluded or relax the gate"
    )
