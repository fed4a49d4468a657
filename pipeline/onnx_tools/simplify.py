"""Graph clean-up with onnx-graphsurgeon: fold constants, drop dead nodes, toposort, infer shapes."""
from __future__ import annotations

from pathlib import Path

import onnx

from ..errors import PipelineError
from ..files import atomic_path
from .inspect import SOURCE_NODES_KEY, load_model, op_counts


def simplify_model(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx_graphsurgeon as gs

    try:
        import onnxruntime  # noqa: F401  (fold_constants silently folds nothing without it)
    except ImportError as exc:
        raise PipelineError("simplify needs onnxruntime for constant folding: pip install onnxruntime") from exc

    graph = gs.import_onnx(model)
    # Old exporters also list initializers as graph inputs; they are weights, not inputs.
    graph.inputs = [tensor for tensor in graph.inputs if not isinstance(tensor, gs.Constant)]
    graph.fold_constants().cleanup(remove_unused_graph_inputs=False).toposort()
    simplified = gs.export_onnx(graph, do_type_check=True)
    simplified.producer_name, simplified.producer_version = model.producer_name, model.producer_version
    simplified.ir_version = model.ir_version
    try:
        simplified = onnx.shape_inference.infer_shapes(simplified, check_type=True, strict_mode=True, data_prop=True)
        onnx.checker.check_model(simplified)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise PipelineError(f"simplified graph is invalid: {exc}") from exc
    return simplified


def simplify_file(src: Path, dst: Path) -> dict:
    """Simplify ``src`` into ``dst``; return node counts before and after (for DVC metrics)."""
    original = load_model(src, "exported ONNX")
    simplified = simplify_model(original)
    with atomic_path(dst) as tmp:
        onnx.save(simplified, str(tmp))
    # A bring-your-own file's own count (the import upgraded its opset, which can add nodes).
    source = {p.key: p.value for p in original.metadata_props}.get(SOURCE_NODES_KEY)
    return {
        **({"nodes_in_source_file": int(source)} if source else {}),
        "nodes_before": len(original.graph.node),
        "nodes_after": len(simplified.graph.node),
        "ops_before": op_counts(original),
        "ops_after": op_counts(simplified),
    }
