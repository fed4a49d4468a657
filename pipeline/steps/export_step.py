"""export: PyTorch -> ONNX (or a bring-your-own ONNX made to fit)."""
from __future__ import annotations

from ..console import console
from ..config.load import ModelContext
from ..config.schema import ModelSource, PipelineConfig
from ..files import require_file
from ..paths import model_paths
from ..scoped import deterministic_torch


def export(cfg: PipelineConfig, ctx: ModelContext) -> None:
    paths = model_paths(cfg, ctx.name)
    if ctx.model.source == ModelSource.onnx:
        from ..onnx_tools.byo import import_onnx

        changes = import_onnx(require_file(paths.source_onnx, "prepared ONNX"), ctx.model, ctx.name, paths.exported,
                              shown=ctx.model.weights_path)
        console.print(f"  imported {ctx.model.weights_path}: {changes or 'no changes needed'}")
        return
    from ..models import build_torch_model, load_checkpoint
    from ..onnx_tools.export import export_onnx

    with deterministic_torch():  # byte-identical exports
        model = build_torch_model(ctx.model)
        model.load_state_dict(load_checkpoint(paths.checkpoint))
        export_onnx(model, ctx.model, paths.exported)
