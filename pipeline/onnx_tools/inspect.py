"""Loading ONNX with clear errors, and reading what a graph holds."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Dict, List

import numpy as np
import onnx

from ..errors import PipelineError
from ..files import require_file


# Metadata a bring-your-own import leaves in its output: the node count of the user's own file.
SOURCE_NODES_KEY = "trt_pipeline.nodes_in_source_file"


def load_model(path: str | Path, what: str = "ONNX model", shown: str = "") -> onnx.ModelProto:
    """Load and check an ONNX file; a missing, truncated or invalid file raises a PipelineError
    naming it as ``shown`` (default: its path; e.g. the user's file for the project's copy of it)."""
    require_file(path, what)
    shown = shown or str(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, onnx raises its own types
        raise PipelineError(f"malformed ONNX file {shown}: {exc}") from exc
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise PipelineError(f"invalid ONNX model {shown}: {first}") from exc
    if not model.graph.node:
        raise PipelineError(f"invalid ONNX model {shown}: the graph has no nodes")
    return model


def external_data_files(path: str | Path) -> List[str]:
    """The files (relative to the model's folder) holding its external tensor data, sorted."""
    def tensors(graph: onnx.GraphProto):
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                yield from ([attribute.t] if attribute.HasField("t") else []) + list(attribute.tensors)
                for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    yield from tensors(subgraph)

    model = onnx.load(str(path), load_external_data=False)
    files = {entry.value for tensor in tensors(model.graph) if tensor.data_location == onnx.TensorProto.EXTERNAL
             for entry in tensor.external_data if entry.key == "location"}
    return sorted(files)


def op_counts(model: onnx.ModelProto) -> Dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def numpy_dtype(elem_type: int) -> np.dtype:
    """ONNX element type -> numpy dtype (e.g. TensorProto.INT64 -> int64)."""
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def onnx_elem_type(dtype_name: str) -> int:
    """numpy dtype name -> ONNX element type (e.g. 'float32' -> TensorProto.FLOAT)."""
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype_name))


def real_inputs(model: onnx.ModelProto) -> List[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (old exporters list weights as inputs too)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]

